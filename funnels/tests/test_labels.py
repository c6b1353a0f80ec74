"""Every stored code has words, in both languages; stored error lines read as sentences."""

from __future__ import annotations

import pytest
from django.utils import translation

from funnels import labels
from funnels.codes import SkipReason, WaitReason
from funnels.admin import PAYMENT_REASONS_COUNTED_ONLY
from funnels.labels import audit_label, error_label, reason_label
from funnels.services import purchases


def _codes(cls) -> set[str]:
    return {v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}


STORED_CODES = (
    _codes(SkipReason) | _codes(WaitReason)
    | {"brevotransienterror", "brevopermanenterror", "brevoautherror", "brevoerror",
       "brevo_stopped", "brevo_not_confirmed", "brevo_opted_out"}
)


@pytest.mark.parametrize("code", sorted(STORED_CODES))
def test_every_stored_reason_code_has_words_in_both_languages(code):
    with translation.override("en"):
        english = reason_label(code)
    with translation.override("ru"):
        russian = reason_label(code)
        payment = reason_label(f"payment:{code}")
    assert code in labels.REASONS
    assert english != code and russian != code
    assert russian != english
    assert any("а" <= ch <= "я" for ch in russian.lower()), russian
    assert payment.startswith("платёж: ") and payment.endswith(russian)


def test_an_unknown_code_shows_as_itself_and_http_statuses_have_words():
    assert reason_label("something_new") == "something_new"
    with translation.override("ru"):
        assert reason_label("http_503") == "Brevo ответил HTTP 503"


def test_payment_reasons_counted_only_match_the_purchase_sync():
    assert PAYMENT_REASONS_COUNTED_ONLY == {f"payment:{c}" for c in purchases._COUNT_ONLY}


@pytest.mark.parametrize(
    ("stored", "russian"),
    [
        ("stopped after 3 consecutive Brevo failures",
         "Отправка остановлена после 3 ошибок Brevo подряд; неотправленные контакты ждут "
         "следующего запуска."),
        ("live mode needs: BREVO_API_KEY is not set; funnel 'language' has no Brevo list id",
         "Боевой режим не готов: не задан ключ API Brevo (BREVO_API_KEY); у воронки "
         "«language» нет id списка Brevo."),
        ("Brevo error: boom", "Ошибка Brevo: boom"),
        ("found dead at the next start (2026-11-28T18:30:00+00:00): no heartbeat since "
         "2026-11-28T18:00:00+00:00 (host web1, pid 42)",
         "Процесс остановился, не закончив работу (нет признаков жизни с "
         "2026-11-28T18:00:00+00:00, хост web1, pid 42); замечено следующим запуском в "
         "2026-11-28T18:30:00+00:00."),
        ("permanent: 400 invalid_parameter", "отклонено окончательно: 400 invalid_parameter"),
    ],
)
def test_stored_error_lines_read_as_russian_sentences(stored, russian):
    with translation.override("ru"):
        assert error_label(stored) == russian


def test_two_joined_errors_are_both_translated_and_unknown_text_stays():
    with translation.override("ru"):
        text = error_label("stopped after 3 consecutive Brevo failures; Brevo error: x")
        assert "Отправка остановлена" in text and "Ошибка Brevo: x" in text
        assert error_label("something nobody wrote a pattern for") == (
            "something nobody wrote a pattern for"
        )


def test_the_mode_audit_line_is_translated():
    with translation.override("ru"):
        assert audit_label("mode: LIVE -> DRY RUN") == "режим: БОЕВОЙ РЕЖИМ → ПРОБНЫЙ ЗАПУСК"
        assert audit_label("schedule: paused") == "расписание приостановлено"
