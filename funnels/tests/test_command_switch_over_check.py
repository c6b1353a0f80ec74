"""switch_over_check: one line per check, the exit code, and each trap flagged.

The end-to-end switch-over (adoption, the earlier cron, a BOM .env in a child process) is
in test_switch_over_e2e.py; here each check is driven through the test databases.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command

from funnels.models import SyncRun
from funnels.selectors import switch_over
from funnels.tests.factories import SyncRunFactory
from funnels.tests.sync_support import (
    LANG_TEST,
    LANGUAGE_LIST,
    OTHER_LIST,
    funnels_configure,
    modx_catalogue,
    modx_result,
)
from funnels.tests.test_foreign_rows import foreign_row
from testizer_funnels.config import DotenvRead

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

NAMES = ["configuration", "databases", "sql mode", "our tables", "earlier table",
         "look-back", "dry run", "Brevo"]


@pytest.fixture
def ready(live_settings, fake_brevo, settings):
    settings.LANGUAGE_CODE = "en"
    settings.FUNNELS_INITIAL_LOOKBACK_DAYS = 30
    modx_catalogue()
    funnels_configure()
    return settings


@pytest.fixture
def strict_lists(fake_brevo):
    """Brevo with exactly the two funnel lists (an unknown list is a 404)."""
    from fake_brevo.server import FakeBrevo
    from funnels.tests.sync_support import API_KEY

    with FakeBrevo(api_key=API_KEY, requests_per_second=1_000,
                   lists=[LANGUAGE_LIST, OTHER_LIST]) as server:
        yield server


def _check(now, settings, brevo=None):
    if brevo is not None:
        settings.BREVO_BASE_URL = brevo.base_url
    out = io.StringIO()
    code = 0
    try:
        call_command("switch_over_check", stdout=out)
    except SystemExit as exc:
        code = exc.code
    lines = out.getvalue().splitlines()
    return code, {line.split(":", 1)[0][5:]: line for line in lines}, lines


def test_a_ready_installation_is_all_ok_and_exits_0(ready, strict_lists, now):
    modx_result("anna@example.com", LANG_TEST)
    SyncRunFactory(dry_run=True, status=SyncRun.Status.SUCCESS)
    code, by_name, lines = _check(now, ready, strict_lists)
    assert list(by_name) == NAMES
    assert all(line.startswith("OK   ") for line in lines), lines
    assert code == 0
    assert "FUNNELS_INITIAL_LOOKBACK_DAYS=30" in by_name["look-back"]
    assert "adds 1 entries and sends 1 contacts" in by_name["look-back"]
    assert f'language -> {LANGUAGE_LIST} "List {LANGUAGE_LIST}"' in by_name["Brevo"]


def test_each_trap_is_a_line_of_its_own(ready, strict_lists, now, monkeypatch):
    ready.FUNNELS_INITIAL_LOOKBACK_DAYS = 7  # the earlier default
    ready.DOTENV = DotenvRead(path=Path("/srv/funnels/.env"), found=True, bom_stripped=True)
    ready.BREVO_NON_LANGUAGE_LIST_ID = None
    from funnels.models import Funnel
    Funnel.objects.filter(slug="non_language").update(brevo_list_id=99)  # not in Brevo
    foreign_row("someone@example.com")  # the earlier cron writing into our table
    monkeypatch.setattr(switch_over, "sql_mode_global", lambda alias: "NO_ENGINE_SUBSTITUTION")

    code, by_name, _ = _check(now, ready, strict_lists)

    assert code == 2
    assert by_name["configuration"].startswith("WARN") and "byte-order mark" in by_name[
        "configuration"]
    assert by_name["sql mode"].startswith("FAIL") and "not strict" in by_name["sql mode"]
    assert by_name["our tables"].startswith("FAIL")
    assert "1 rows in funnel_entries were not written by this job" in by_name["our tables"]
    assert by_name["look-back"].startswith("FAIL")
    assert "shorter than the earlier tool's 30 days" in by_name["look-back"]
    assert by_name["dry run"].startswith("WARN")
    assert by_name["Brevo"].startswith("FAIL")
    assert "list 99 (funnel non_language) does not exist" in by_name["Brevo"]


def test_a_wrong_brevo_key_is_said_without_the_key(ready, strict_lists, now):
    ready.BREVO_API_KEY = "xkeysib-wrong-key-0123456789abcdef"
    code, by_name, lines = _check(now, ready, strict_lists)
    assert code == 2
    assert by_name["Brevo"] == "FAIL Brevo: Brevo rejected the API key (401)"
    assert not any("xkeysib" in line for line in lines)


def test_our_tables_in_the_modx_database_are_refused(ready, monkeypatch):
    monkeypatch.setattr(switch_over, "_same_database", lambda a, b: True)
    check = switch_over.check_our_tables()
    assert check.level == "FAIL" and "our tables are in the MODX database" in check.message
