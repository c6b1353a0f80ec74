"""The Russian catalogue: complete, compiled, covering every wrapped string, and used.

CI has no gettext tools, so nothing here runs xgettext or msgfmt: the .po is read by a
small parser, the committed .mo through the standard library, and the strings the code
wraps are found the way makemessages finds them (Python's ast for .py files, Django's own
templatize for templates).
"""

from __future__ import annotations

import ast
import datetime as dt
import gettext as stdlib_gettext
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.urls import reverse
from django.utils.translation.template import templatize

from funnels.models import Funnel, SyncRun, SyncRunItem, SyncStatus
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory, SyncRunItemFactory

BASE_DIR = Path(settings.BASE_DIR)
PO_PATH = BASE_DIR / "locale" / "ru" / "LC_MESSAGES" / "django.po"
MO_PATH = PO_PATH.with_suffix(".mo")
RUSSIAN_PLURALS = (
    "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && "
    "(n%100<10 || n%100>=20) ? 1 : 2);"
)
# What `makemessages -l ru --ignore=...` is run with (see the project README): the
# benchmark, build output and tests are not part of the translated product.
IGNORED_DIRS = {".venv", "bench", "staticfiles", "test-artifacts", "tests", "node_modules",
                "__pycache__", "locale"}


# --- A small .po reader ---------------------------------------------------------------------


@dataclass
class PoEntry:
    msgid: str
    msgctxt: str | None = None
    msgid_plural: str | None = None
    msgstr: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    line: int = 0


def _po_string(text: str) -> str:
    # A .po string is a C string; Python's literal rules agree on every escape gettext
    # writes (\\, \", \n, \t).
    return ast.literal_eval(text)


def po_read(path: Path) -> list[PoEntry]:
    entries: list[PoEntry] = []
    current: dict = {}
    key = None

    def finish() -> None:
        if "msgid" in current:
            forms = sorted(k for k in current if k.startswith("msgstr"))
            entries.append(PoEntry(
                msgid=current["msgid"],
                msgctxt=current.get("msgctxt"),
                msgid_plural=current.get("msgid_plural"),
                msgstr=[current[k] for k in forms],
                flags=current.get("flags", set()),
                line=current["line"],
            ))
        current.clear()

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            finish()
            key = None
        elif line.startswith("#~"):
            continue  # obsolete: gettext keeps them for reference, they are never used
        elif line.startswith("#,"):
            current.setdefault("flags", set()).update(
                flag.strip() for flag in line[2:].split(",")
            )
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            current[key] += _po_string(line)
        else:
            key, _sep, value = line.partition(" ")
            if key == "msgctxt" or (key == "msgid" and "msgid" in current):
                finish()
            current.setdefault("line", number)
            current[key] = _po_string(value)
    finish()
    return entries


@pytest.fixture(scope="module")
def po_entries() -> list[PoEntry]:
    return po_read(PO_PATH)


def messages(entries: list[PoEntry]) -> list[PoEntry]:
    return [e for e in entries if e.msgid != ""]


def test_po_reader_reads_plurals_contexts_flags_and_continuations(tmp_path):
    sample = tmp_path / "sample.po"
    sample.write_text(
        'msgid ""\nmsgstr ""\n"Language: ru\\n"\n\n'
        '#, python-format\nmsgid "%(n)s item"\nmsgid_plural "%(n)s items"\n'
        'msgstr[0] "%(n)s a"\nmsgstr[1] "%(n)s b"\nmsgstr[2] "%(n)s c"\n\n'
        'msgctxt "menu"\nmsgid ""\n"Open "\n"\\"it\\""\nmsgstr "x"\n\n'
        '#~ msgid "gone"\n#~ msgstr "old"\n',
        encoding="utf-8",
    )
    header, plural, context = po_read(sample)

    assert header.msgstr == ["Language: ru\n"]
    assert plural.flags == {"python-format"}
    assert plural.msgid_plural == "%(n)s items"
    assert plural.msgstr == ["%(n)s a", "%(n)s b", "%(n)s c"]
    assert (context.msgctxt, context.msgid, context.msgstr) == ("menu", 'Open "it"', ["x"])


# --- The catalogue itself -------------------------------------------------------------------


def test_header_is_russian_with_three_plural_forms(po_entries):
    header = po_entries[0]
    assert header.msgid == ""
    assert "fuzzy" not in header.flags
    fields = dict(
        line.split(": ", 1) for line in header.msgstr[0].splitlines() if ": " in line
    )
    assert fields["Language"] == "ru"
    assert fields["Content-Type"] == "text/plain; charset=UTF-8"
    assert fields["Plural-Forms"] == RUSSIAN_PLURALS


def test_every_message_is_translated_and_none_is_fuzzy(po_entries):
    entries = messages(po_entries)
    assert len(entries) > 300  # the whole admin, reports and commands, not a sample

    fuzzy = [e.msgid for e in entries if "fuzzy" in e.flags]
    empty = [e.msgid for e in entries if not e.msgstr or not all(s.strip() for s in e.msgstr)]
    wrong_forms = [e.msgid for e in entries if e.msgid_plural is not None and len(e.msgstr) != 3]
    assert fuzzy == []
    assert empty == []
    assert wrong_forms == []


PLACEHOLDER = re.compile(r"%\([^)]+\)[#0 +-]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]|%%|\{[a-z_]\w*\}")
HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def test_translations_keep_placeholders_and_markup(po_entries):
    broken = []
    for e in messages(po_entries):
        sources = [e.msgid] if e.msgid_plural is None else [e.msgid, e.msgid_plural]
        wanted = sorted(PLACEHOLDER.findall(sources[-1])) if "python-format" in e.flags else []
        for text in e.msgstr:
            if "python-format" in e.flags and sorted(PLACEHOLDER.findall(text)) != wanted:
                broken.append((e.msgid, text))
            if sorted(HTML_TAG.findall(text)) != sorted(HTML_TAG.findall(e.msgid)):
                broken.append((e.msgid, text))
    assert broken == []


def test_russian_text_is_actually_russian(po_entries):
    # A msgstr copied from its msgid is "translated" by the count above; only names and
    # codes may stay as they are.
    untouched = {e.msgid for e in messages(po_entries) if e.msgstr == [e.msgid]}
    assert untouched <= {"Brevo", "email"}


def test_compiled_catalogue_matches_the_po(po_entries):
    with MO_PATH.open("rb") as handle:
        compiled = stdlib_gettext.GNUTranslations(handle)

    stale = []
    for e in messages(po_entries):
        if e.msgid_plural is None:
            got = (compiled.pgettext(e.msgctxt, e.msgid) if e.msgctxt
                   else compiled.gettext(e.msgid))
            if got != e.msgstr[0]:
                stale.append(e.msgid)
        else:
            # 1 → form 0, 3 → form 1, 5 → form 2: the .mo's plural rule must be the
            # header's, and each form must be the .po's.
            got = [compiled.ngettext(e.msgid, e.msgid_plural, n) for n in (1, 3, 5)]
            if got != e.msgstr:
                stale.append(e.msgid)
    assert stale == [], "run: manage.py compilemessages -l ru --ignore=.venv"
    # The .mo carries the header's rule: 21 minute, 22 minutes (few), 11/12/25 (many).
    assert [compiled.plural(n) for n in (1, 21, 2, 22, 104, 5, 11, 12, 14, 25, 111, 0)] == [
        0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2
    ]


# --- Everything the code wraps is in the catalogue ------------------------------------------

# makemessages' xgettext keywords: name -> (index of msgctxt or None, index of msgid).
PY_KEYWORDS = {
    "_": (None, 0), "gettext": (None, 0), "gettext_lazy": (None, 0),
    "gettext_noop": (None, 0), "ngettext": (None, 0), "ngettext_lazy": (None, 0),
    "pgettext": (0, 1), "pgettext_lazy": (0, 1), "npgettext": (0, 1),
    "npgettext_lazy": (0, 1),
}
TEMPLATE_CALL = re.compile(
    r"\b(_|gettext|ngettext|pgettext|npgettext)\(\s*"
    r"((?:u?(?:'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\")\s*,?\s*)+)"
)
STRING_LITERAL = re.compile(r"u?(?:'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\")")


def source_files(suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for path in sorted(BASE_DIR.rglob("*")):
        parts = path.relative_to(BASE_DIR).parts
        if any(part in IGNORED_DIRS or part.startswith(".") for part in parts):
            continue
        if path.suffix in suffixes and path.is_file():
            found.append(path)
    return found


def python_messages(path: Path) -> set[tuple[str | None, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name not in PY_KEYWORDS:
            continue
        context_at, msgid_at = PY_KEYWORDS[name]
        args = node.args
        if len(args) <= msgid_at or not isinstance(args[msgid_at], ast.Constant):
            continue
        msgid = args[msgid_at].value
        context = args[context_at].value if context_at is not None else None
        if isinstance(msgid, str) and msgid:
            found.add((context, msgid))
    return found


def template_messages(path: Path) -> set[tuple[str | None, str]]:
    found = set()
    rendered = templatize(path.read_text(encoding="utf-8"), origin=str(path))
    for match in TEMPLATE_CALL.finditer(rendered):
        strings = [ast.literal_eval(s) for s in STRING_LITERAL.findall(match.group(2))]
        if match.group(1).startswith("p") or match.group(1).startswith("np"):
            found.add((strings[0], strings[1]))
        else:
            found.add((None, strings[0]))
    return found


def test_the_extractor_finds_what_makemessages_finds(tmp_path):
    template = tmp_path / "t.html"
    template.write_text(
        "{% load i18n %}{% translate \"One\" %}{{ x|default:_('Two') }}"
        "{% blocktranslate with n=a %}Three {{ n }}{% endblocktranslate %}"
        "{% blocktranslate count c=k %}{{ c }} four{% plural %}{{ c }} fours"
        "{% endblocktranslate %}"
        "{% translate \"Five\" context \"verb\" %}",
        encoding="utf-8",
    )
    module = tmp_path / "m.py"
    module.write_text(
        "from django.utils import translation\n"
        "from django.utils.translation import gettext_lazy as _, ngettext, pgettext\n"
        "A = _('Six' ' seven')\nB = ngettext('%(n)d eight', '%(n)d eights', 2)\n"
        "C = pgettext('noun', 'Nine')\nD = translation.gettext('Ten')\nE = _(name)\n",
        encoding="utf-8",
    )

    assert template_messages(template) == {
        (None, "One"), (None, "Two"), (None, "Three %(n)s"), (None, "%(c)s four"),
        ("verb", "Five"),
    }
    assert python_messages(module) == {
        (None, "Six seven"), (None, "%(n)d eight"), ("noun", "Nine"), (None, "Ten"),
    }


def test_every_wrapped_string_in_the_code_is_in_the_catalogue(po_entries):
    in_code: dict[tuple[str | None, str], Path] = {}
    for path in source_files((".py",)):
        for message in python_messages(path):
            in_code.setdefault(message, path)
    for path in source_files((".html", ".txt")):
        for message in template_messages(path):
            in_code.setdefault(message, path)
    in_catalogue = {(e.msgctxt, e.msgid) for e in messages(po_entries)}

    missing = sorted(
        f"{in_code[m].relative_to(BASE_DIR)}: {m[1]!r}" for m in in_code if m not in in_catalogue
    )
    assert len(in_code) > 300
    assert missing == [], (
        "run makemessages -l ru (see the README), translate, then compilemessages"
    )


# --- Pages render in Russian ----------------------------------------------------------------


@pytest.fixture
def russian(settings):
    settings.LANGUAGE_CODE = "ru"


@pytest.fixture
def ru_client(admin_client, russian):
    admin_client.defaults["HTTP_ACCEPT_LANGUAGE"] = "ru"
    return admin_client


def assert_russian(html: str, *, present: list[str], absent: list[str]) -> None:
    assert '<html lang="ru"' in html
    assert [text for text in present if text not in html] == []
    assert [text for text in absent if text in html] == []


@pytest.mark.django_db(databases=["default", "modx"])
def test_admin_index_with_the_mode_switch_is_in_russian(
    ru_client, settings, django_assert_max_num_queries
):
    settings.BREVO_API_KEY = ""
    # 19: the Brevo block's last audit and last proof, the health banner's last proof.
    with django_assert_max_num_queries(19):
        html = ru_client.get(reverse("admin:index")).content.decode()

    assert_russian(
        html,
        present=["Воронки Testizer", "Сводка", ">ПРОБНЫЙ ЗАПУСК<", "Включить БОЕВОЙ РЕЖИМ",
                 "не задан ключ API Brevo (BREVO_API_KEY)", "Входы в воронки",
                 "Последние 24 часа: никто не потерян?"],
        absent=["Testizer Funnels", ">DRY RUN<", "Switch to LIVE", "Numbers",
                "The Brevo API key", "Funnel entries", "Last 24 hours"],
    )


@pytest.mark.django_db(databases=["default", "modx"])
def test_refused_switch_to_live_is_explained_in_russian(ru_client, settings):
    settings.BREVO_API_KEY = "xkeysib-test-key-0123456789"

    response = ru_client.post(reverse("admin:funnels_dry_run"), {"mode": "live"}, follow=True)

    html = response.content.decode()
    assert "Боевой режим не включён: сначала отметьте подтверждение." in html
    assert "Not switched to live" not in html


@pytest.mark.django_db(databases=["default", "modx"])
def test_entries_list_is_in_russian(ru_client, django_assert_max_num_queries):
    FunnelEntryFactory(email="anna@example.com", sync_status=SyncStatus.PENDING)
    FunnelEntryFactory(email="boris@example.com", sync_status=SyncStatus.FAILED,
                       sync_last_error="HTTP 400")

    with django_assert_max_num_queries(10):
        html = ru_client.get(reverse("admin:funnels_funnelentry_changelist")).content.decode()

    assert "anna@example.com" in html and "boris@example.com" in html
    assert_russian(
        html,
        present=["Входы в воронки", "Отправка в Brevo",
                 "Ожидает отправки", "Ошибка", "сертификат куплен", "страница 1",
                 "по 100 на странице",
                 "Повторить отправку в Brevo выбранных записей с ошибкой"],
        absent=["Brevo sync", "Pending", "per page", "certificate purchased",
                "Retry Brevo sync"],
    )


@pytest.mark.django_db(databases=["default", "modx"])
def test_run_page_is_in_russian(ru_client, django_assert_max_num_queries):
    run = SyncRunFactory(dry_run=False, status=SyncRun.Status.PARTIAL,
                         skipped_by_reason={"invalid_email": 1})
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.ADDED, email="added@example.com")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, email="not-an-email",
                       reason="invalid_email")

    with django_assert_max_num_queries(12):
        html = ru_client.get(
            reverse("admin:funnels_syncrun_change", args=[run.pk])
        ).content.decode()

    assert "added@example.com" in html and "not-an-email" in html
    assert_russian(
        html,
        present=["Результат по каждому кандидату", "Добавлен", "Пропущен", "Счётчики",
                 "Завершён с ошибками", "Боевой режим", "страница 1 из 1",
                 "Пропущенные результаты тестов по причинам", "некорректный адрес почты"],
        absent=["Outcome per candidate", "Counts", "Finished with failures",
                "skipped by reason", "page 1 of 1", "invalid_email"],
    )


@pytest.mark.django_db(databases=["default", "modx"])
def test_report_page_is_in_russian(ru_client, now, django_assert_max_num_queries):
    # Migration 0002 makes the two funnels, but a transactional test may have flushed them.
    Funnel.objects.get_or_create(slug="language", defaults={
        "name": "language", "test_kind": "language", "certificate_type": 1})
    entered = now - dt.timedelta(days=1)
    FunnelEntryFactory(funnel_type="language", entered_at=entered,
                       certificate_purchased=True, certificate_purchased_at=now)

    # Session, user, funnels, the report rollup's state, the period and the previous one
    # (a size probe and a grouping each), the header's mode and health (two): the language
    # changes none of it.
    with time_machine.travel(now, tick=False), django_assert_max_num_queries(11):
        response = ru_client.get(reverse("reports:conversions"), {
            "from_date": entered.date().isoformat(), "to_date": now.date().isoformat()})
    html = response.content.decode()

    assert_russian(
        html,
        present=["Отчёт о конверсии", "Вошли", "Купили", "Конверсия", "Скачать CSV",
                 "Как считаются эти цифры", "Группировка", "Время до покупки", "Итого"],
        absent=["Conversion report", "Download CSV", "How these numbers are counted",
                "Time to purchase", "Group by"],
    )
    chart = json.loads(
        re.search(r'<script id="report-chart-data" type="application/json">(.*?)</script>',
                  html, re.S).group(1)
    )
    assert chart["trend"]["people_axis"] == "Люди"
    assert chart["histogram"]["axis"] == "Дней после входа"


@pytest.mark.django_db(databases=["default", "modx"])
def test_generic_titles_and_counts_agree_with_their_numbers_in_russian(ru_client):
    from funnels.tests.factories import SyncRunFactory

    for _ in range(3):
        SyncRunFactory()
    funnels = ru_client.get(reverse("admin:funnels_funnel_changelist")).content.decode()
    add = ru_client.get(reverse("admin:funnels_funnel_add")).content.decode()
    runs = ru_client.get(reverse("admin:funnels_syncrun_changelist")).content.decode()
    marks = ru_client.get(reverse("admin:funnels_syncstate_changelist")).content.decode()
    assert "Добавить воронку" in add and "Добавить воронка" not in add
    assert "Выберите воронка" not in funnels and "Языковые тесты" in funnels
    assert "3 строки" in runs and "3 запуски" not in runs
    assert "Докуда задание прочитало MODX" in marks and "Отметки" not in marks
