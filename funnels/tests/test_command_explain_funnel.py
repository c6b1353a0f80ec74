import datetime as dt
import io

import pytest
from django.core.management import call_command

from funnels.models import Funnel, SyncState
from funnels.selectors.funnels import watermark_gaps_encode
from funnels.services.watermarks import watermark_advance
from funnels.tests.sync_support import (
    LANG_TEST,
    LANG_TEST_2,
    OTHER_TEST,
    modx_result,
    run_live,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])


@pytest.fixture(autouse=True)
def english(settings):
    # Assertions read the English source strings; the default language is Russian.
    settings.LANGUAGE_CODE = "en"


def _explain(email):
    out = io.StringIO()
    call_command("explain_funnel", email, stdout=out)
    return dict(
        line.split(": ", 1) for line in out.getvalue().splitlines()[1:]
    ), out.getvalue().splitlines()[0]


def test_member_since_and_why_not_the_other_kind(configured, live_settings, client_factory, now):
    result = modx_result("Anna@Example.com", LANG_TEST,
                         completed_at=dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone.utc))
    run_live(client_factory, now=now)
    lines, header = _explain("  ANNA@example.com")
    assert header == "anna@example.com: 1 test result(s) in MODX"
    assert lines["language"].startswith("in it since 2026-11-27 12:00 MSK")
    assert f"MODX result #{result.id}" in lines["language"]
    assert "in Brevo since" in lines["language"]
    assert lines["non_language"] == (
        f"not in it: only tests of the other kind (test {LANG_TEST}: language)"
    )


def test_an_adopted_entry_the_earlier_tool_sent_says_so(configured):
    from funnels.tests.factories import FunnelEntryFactory

    modx_result("lena@example.com", LANG_TEST)
    FunnelEntryFactory(email="lena@example.com", test_id=LANG_TEST, sync_status="synced",
                       synced_revision=1, synced_at=None, user_id=None)
    lines, _ = _explain("lena@example.com")
    assert "in Brevo (sent by the earlier tool, confirmed by its outbox)" in lines["language"]
    assert "since ?" not in lines["language"]


def test_no_test_result(configured):
    lines, _ = _explain("nobody@example.com")
    assert set(lines.values()) == {"not in it: no test result in MODX for this email"}


def test_invalid_email(configured):
    lines, _ = _explain("not-an-email")
    assert set(lines.values()) == {"not in it: invalid email (not a valid email address)"}


def test_funnel_inactive(configured):
    Funnel.objects.filter(slug="non_language").update(active=False)
    modx_result("boris@example.com", OTHER_TEST)
    lines, _ = _explain("boris@example.com")
    assert lines["non_language"] == "not in it: funnel inactive"


def test_not_among_the_funnels_tests(configured):
    Funnel.objects.filter(slug="language").update(test_ids=[LANG_TEST_2])
    modx_result("anna@example.com", LANG_TEST)
    lines, _ = _explain("anna@example.com")
    assert lines["language"] == (
        f"not in it: tests [{LANG_TEST}] are not among the funnel's tests [{LANG_TEST_2}]"
    )


def test_not_yet_read_beyond_the_watermark(configured):
    first = modx_result("someone@example.com")
    watermark_advance(key="test_results", last_id=first.id, run=None)
    later = modx_result("anna@example.com", LANG_TEST)
    lines, _ = _explain("anna@example.com")
    assert lines["language"] == (
        f"not in it yet: not yet read (results #{later.id} are beyond the watermark "
        f"#{first.id}); the next run will read them"
    )


def test_a_result_in_a_watermark_gap_is_not_yet_read(configured):
    late = modx_result("anna@example.com", LANG_TEST)
    after = modx_result("someone@example.com")
    # The watermark passed `late` while its insert was not yet committed: it is a gap.
    SyncState.objects.create(
        key="test_results", last_id=after.id,
        gaps=watermark_gaps_encode({late.id: dt.datetime(2026, 11, 28, 15, tzinfo=dt.UTC)}),
    )
    lines, _ = _explain("anna@example.com")
    assert lines["language"] == (
        f"not in it yet: not yet read (results #{late.id} are beyond the watermark "
        f"#{after.id}); the next run will read them"
    )


def test_no_live_run_yet(configured):
    result = modx_result("anna@example.com", LANG_TEST)
    lines, _ = _explain("anna@example.com")
    assert lines["language"] == (
        f"not in it yet: no live run has read MODX yet (results #{result.id})"
    )


def test_skipped_by_a_run_says_which_run_and_why(configured, live_settings, client_factory, now):
    Funnel.objects.filter(slug="language").update(active=False)
    result = modx_result("anna@example.com", LANG_TEST)
    run = run_live(client_factory, now=now)
    Funnel.objects.filter(slug="language").update(active=True)
    lines, _ = _explain("anna@example.com")
    assert lines["language"] == (
        f"not in it: result #{result.id} skipped in run #{run.pk}: the funnel is switched off"
    )


def test_before_the_first_runs_starting_point(configured, live_settings, client_factory, now):
    old = modx_result("anna@example.com", LANG_TEST,
                      completed_at=dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc))
    modx_result("recent@example.com", LANG_TEST)
    run_live(client_factory, now=now, since=dt.date(2026, 11, 1))
    lines, _ = _explain("anna@example.com")
    assert lines["language"].startswith(f"not in it: results #{old.id} were before the first run")


def test_a_result_waiting_for_a_recheck_says_why_and_until_when(
    configured, live_settings, client_factory, now, settings
):
    settings.TIME_ZONE = "UTC"
    row = modx_result("Wait@Example.com", OTHER_TEST, completed_at=None)
    run_live(client_factory, now=now)
    lines, _ = _explain("wait@example.com")
    assert lines["non_language"] == (
        f"not in it yet: result #{row.id} waits for a recheck since 2026-11-28 15:30 UTC: "
        "the test has no completion time yet; read again by every run until "
        "2026-12-28 15:30 UTC"
    )
    assert lines["waiting"].startswith(f"result #{row.id} waits for a recheck")


def test_a_payment_waiting_for_a_recheck_is_listed(
    configured, live_settings, client_factory, now
):
    from funnels.tests.factories import CertPaymentFactory

    modx_result("buyer@example.com", LANG_TEST)
    payment = CertPaymentFactory(result__user__email="buyer@example.com",
                                 result__test__type=9, paid_at=now)
    run_live(client_factory, now=now)
    lines, _ = _explain("buyer@example.com")
    assert lines["language"].startswith("in it since")
    assert lines["waiting"].startswith(f"payment #{payment.id} waits for a recheck")
    assert "no funnel sells this certificate type" in lines["waiting"]


def test_the_brevo_state_as_last_seen(configured):
    from funnels.models import FunnelEntry
    from funnels.tests.factories import FunnelEntryFactory

    modx_result("una@example.com", LANG_TEST)
    FunnelEntryFactory(email="una@example.com", test_id=LANG_TEST, sync_status="synced",
                       synced_revision=1, synced_at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC))
    lines, _ = _explain("una@example.com")
    assert lines["language"].endswith("; Brevo audit: not read yet")

    FunnelEntry.objects.update(brevo_state="unsubscribed_from_list",
                               brevo_seen_at=dt.datetime(2026, 11, 21, 0, 7, tzinfo=dt.UTC))
    lines, _ = _explain("una@example.com")
    assert lines["language"].endswith(
        "; Brevo audit: Unsubscribed from the list (read 2026-11-21 03:07 MSK)"
    )
