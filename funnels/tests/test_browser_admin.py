"""The admin in a real browser: log in, filter entries, open a run, switch the mode.

Debian's Chromium driven by Playwright against pytest-django's live server. Screenshots go
to test-artifacts/ (git-ignored) for a human to look at after a CI run.
"""

from __future__ import annotations

import datetime as dt

import pytest

from funnels.models import Funnel, SyncRun, SyncRunItem, SyncStatus
from funnels.services.runtime import runtime_settings_get
from funnels.tests.browser_support import ARTIFACTS, chromium_launched
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory, SyncRunItemFactory

PASSWORD = "browser-test-password-1"

pytestmark = [
    pytest.mark.browser,
    # The index reads MODX; no MODX rows are written here, because a transactional test's
    # flush does not reach the read-only MODX tables.
    pytest.mark.django_db(transaction=True, databases=["default", "modx"]),
]


@pytest.fixture
def browser_page():
    with chromium_launched() as browser:
        context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            context.close()


@pytest.fixture
def operator_data(settings, django_user_model):
    settings.LANGUAGE_CODE = "en"
    settings.BREVO_API_KEY = "xkeysib-browser-test-0123456789"
    settings.BREVO_LANGUAGE_LIST_ID, settings.BREVO_NON_LANGUAGE_LIST_ID = 1, 2
    # A transactional test starts from whatever the last flush left: make what we need.
    for slug, name, kind, cert in (("language", "Language tests", "language", 1),
                                   ("non_language", "Non-language tests", "non_language", 2)):
        Funnel.objects.get_or_create(
            slug=slug, defaults={"name": name, "test_kind": kind, "certificate_type": cert}
        )
    runtime_settings_get()
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    start = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", entered_at=start)
    FunnelEntryFactory(email="boris@example.com", funnel_type="non_language",
                       entered_at=start + dt.timedelta(hours=1), sync_status=SyncStatus.FAILED)
    FunnelEntryFactory(email="vera@example.com", funnel_type="language",
                       entered_at=start + dt.timedelta(hours=2))
    run = SyncRunFactory(status=SyncRun.Status.SUCCESS, dry_run=True, results_read=3)
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.WOULD_ADD, email="gleb@example.com")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, email="not-an-email",
                       reason="invalid_email")
    return run


def table_emails(page) -> set[str]:
    return {cell.strip() for cell in page.locator("#result_list th.field-email_shown").all_inner_texts()}


def test_operator_logs_in_filters_opens_a_run_and_switches_to_live(
    live_server, browser_page, operator_data
):
    page = browser_page
    run = operator_data

    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#funnels-dashboard")
    assert page.inner_text("#funnels-mode").strip() == "DRY RUN"
    page.screenshot(path=str(ARTIFACTS / "admin-index-dry.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/funnels/funnelentry/")
    assert table_emails(page) == {"anna@example.com", "boris@example.com", "vera@example.com"}
    page.click("#changelist-filter a:text-is('Language tests')")
    page.wait_for_url("**funnel=language**")
    assert table_emails(page) == {"anna@example.com", "vera@example.com"}
    page.fill("#searchbar", "  VERA@Example.com ")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=**")
    assert table_emails(page) == {"vera@example.com"}
    page.screenshot(path=str(ARTIFACTS / "admin-entries-filtered.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/funnels/syncrun/")
    page.click(f"#result_list a:has-text('#{run.pk}')")
    page.wait_for_selector("#funnels-run-items")
    items = page.inner_text("#funnels-run-items")
    assert "gleb@example.com" in items and "Would add" in items
    assert "not a valid email address" in items and "invalid_email" not in items
    page.screenshot(path=str(ARTIFACTS / "admin-run.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/")
    page.check("#funnels-confirm-live")
    page.click("#funnels-toggle-button")
    page.wait_for_selector("#funnels-mode[data-mode='live']")
    assert page.inner_text("#funnels-mode").strip() == "LIVE"
    assert "Last changed by operator" in page.inner_text("#funnels-last-change")
    page.screenshot(path=str(ARTIFACTS / "admin-index-live.png"), full_page=True)
    assert runtime_settings_get().dry_run is False

    # Every page's header follows the switch.
    page.goto(f"{live_server.url}/admin/funnels/funnel/")
    assert page.inner_text("#funnels-mode").strip() == "LIVE"
