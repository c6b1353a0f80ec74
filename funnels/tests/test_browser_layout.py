"""What a person sees, at 1366x900 and 390x844, in Russian and in English.

Fails when a key column is outside the viewport on a laptop, when a page scrolls sideways
on a phone, when a dashboard block (any .module, blocks added later included) is wider
than the page, or when a raw reason code or a stored English error shows on a Russian
page. Screenshots go to test-artifacts/layout-*.png.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from funnels.models import (
    BrevoAudit,
    BrevoState,
    Funnel,
    FunnelEntry,
    ProofCheck,
    ProofDifference,
    SyncRun,
    SyncRunItem,
    SyncStatus,
)
from funnels.services.runtime import runtime_settings_get
from funnels.tests.browser_support import ARTIFACTS, chromium_launched
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory, SyncRunItemFactory
from funnels.tests.test_labels import STORED_CODES

PASSWORD = "layout-test-password-1"
VIEWPORTS = {"laptop": (1366, 900), "phone": (390, 844)}
# Stored English that must never reach a Russian page as is.
ENGLISH_ERRORS = ["consecutive Brevo failures", "is not set", "found dead", "has no Brevo list",
                  "not tried", "will retry", "permanent:", "Left for a later run", "Skipped"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, databases=["default", "modx"]),
]


@pytest.fixture
def operator_data(settings, django_user_model):
    settings.BREVO_API_KEY = "xkeysib-layout-test-0123456789"
    settings.BREVO_LANGUAGE_LIST_ID, settings.BREVO_NON_LANGUAGE_LIST_ID = 1, 2
    for slug, name, kind, cert in (("language", "Language tests", "language", 1),
                                   ("non_language", "Non-language tests", "non_language", 2)):
        Funnel.objects.get_or_create(
            slug=slug, defaults={"name": name, "test_kind": kind, "certificate_type": cert}
        )
    runtime_settings_get()
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    entry = FunnelEntryFactory(email="ivan.ivanovich.petrov-vodkin@xn--e1afmkfd.xn--p1ai",
                               funnel_type="language", certificate_purchased=True,
                               payment_id=987654, sync_status=SyncStatus.FAILED,
                               sync_last_error="permanent: 400 invalid_parameter")
    for n in range(30):
        FunnelEntryFactory(email=f"person{n}.with.a.long.name@example-domain.com")
    SyncRunFactory(status=SyncRun.Status.SUCCESS, dry_run=True, results_read=2000,
                   entries_added=1325, skipped=675)
    run = SyncRunFactory(
        status=SyncRun.Status.PARTIAL, dry_run=False, results_read=2000, entries_added=1325,
        skipped=675, contacts_sent=957, contacts_failed=12, purchases_found=326,
        error="stopped after 3 consecutive Brevo failures",
        skipped_by_reason={code: 1 for code in STORED_CODES}
        | {f"payment:{code}": 2 for code in ("not_paid", "no_entry", "invalid_email")},
    )
    for code in sorted(STORED_CODES):
        SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, reason=code,
                           email="someone.long.address@example-domain.com",
                           detail="no completion time in MODX: entered at the run's time")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.FAILED, reason="brevotransienterror",
                       email=entry.email, entry=entry, detail="will retry: read timed out")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.DEFERRED, reason="brevo_stopped",
                       email=entry.email, entry=entry)
    # What the Brevo audit and the proof show: drift, strangers, one difference per class.
    when = run.started_at
    for n, state in enumerate(BrevoState.values):
        FunnelEntryFactory(email=f"brevo{n}.with.a.long.name@example-domain.com",
                           sync_status=SyncStatus.SYNCED, synced_revision=1, brevo_state=state,
                           brevo_seen_at=when, entered_at=when - dt.timedelta(days=1))
    run.audit = BrevoAudit.objects.create(
        started_at=when, finished_at=when, status="success", kind="incremental",
        contacts_read=100_000, pages=200, unsubscribed=1234, blacklisted=56, missing=7,
        strangers=2, strangers_sample=[
            {"funnel": "language", "email": "somebody.we.never.added@example-domain.com"},
            {"funnel": "non_language", "email": "another.stranger@example-domain.com"}],
        lists={"language": {"list_id": 1, "kind": "full", "contacts": 99_000, "error": ""},
               "non_language": {"list_id": 2, "kind": "incremental", "contacts": 1000,
                                "error": ""}},
    )
    proof = ProofCheck.objects.create(
        started_at=when, finished_at=when, status="success", window_from=when, window_to=when,
        results_read=31_000, entries_read=30_500,
        counts={kind: 1 for kind in ProofDifference.Kind.values},
    )
    for kind in ProofDifference.Kind.values:
        ProofDifference.objects.create(
            proof=proof, kind=kind, email="someone.long.address@example-domain.com",
            funnel_type="language", test_id=101, modx_id=1234567,
            explanation="не в воронке: тест другого вида (тест 21: не языковой)",
        )
    return run


def _pages(run) -> dict[str, tuple[str, list[str]]]:
    """name -> (path, key columns that must be fully inside a laptop's viewport)."""
    return {
        "dashboard": ("/admin/", []),
        "runs": ("/admin/funnels/syncrun/",
                 ["th.column-run_started", "th.column-status_shown",
                  "th.column-results_shown", "th.column-contacts_shown",
                  "th.column-purchases_shown"]),
        "run": (f"/admin/funnels/syncrun/{run.pk}/change/", []),
        "entries": ("/admin/funnels/funnelentry/",
                    ["th.column-email_shown", "th.column-sync_state", "th.column-purchase"]),
        "entry": ("/admin/funnels/funnelentry/%d/change/" % FunnelEntry.objects.get(
            email="ivan.ivanovich.petrov-vodkin@xn--e1afmkfd.xn--p1ai").pk, []),
        "funnels": ("/admin/funnels/funnel/", []),
        "funnel": (f"/admin/funnels/funnel/{Funnel.objects.get(slug='language').pk}/change/",
                   []),
        "report": ("/admin/reports/", []),
        "entries-brevo": ("/admin/funnels/funnelentry/?brevo=drift", []),
        "audit": (f"/admin/funnels/brevoaudit/{run.audit.pk}/change/", []),
        "differences": ("/admin/funnels/proofdifference/", []),
    }


def _offenders(page, width: int) -> list[str]:
    return page.evaluate(
        """(width) => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().width > 0
                         && e.getBoundingClientRect().right > width + 0.5
                         && !e.closest('[style*="overflow"], .report-block, .report-table'))
            .slice(0, 5).map(e => e.tagName + '.' + e.className)""",
        width,
    )


@pytest.mark.parametrize("language", ["ru", "en"])
@pytest.mark.parametrize("device", ["laptop", "phone"])
def test_every_page_fits_and_reads_in_the_language(live_server, operator_data, language,
                                                   device):
    width, height = VIEWPORTS[device]
    codes = sorted(STORED_CODES, key=len, reverse=True)
    with chromium_launched() as browser:
        # The browser asks for the other language: the page's language can only come
        # from the header's switch, which must be remembered from page to page.
        other = "en-US" if language == "ru" else "ru-RU"
        context = browser.new_context(locale=other, viewport={"width": width,
                                                               "height": height})
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/admin/login/")
        page.click(f"#funnels-language-{language}")
        page.fill("#id_username", "operator")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#funnels-dashboard")
        for name, (path, key_columns) in _pages(operator_data).items():
            page.goto(live_server.url + path)
            page.wait_for_load_state("load")
            page.screenshot(path=str(ARTIFACTS / f"layout-{language}-{width}-{name}.png"),
                            full_page=True)
            assert page.evaluate("document.documentElement.lang") == language, (name, path)
            scroll = page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, (name, scroll, _offenders(page, width))
            for selector in key_columns if device == "laptop" else []:
                # Inside the viewport, and not hidden in a box that scrolls sideways.
                left, right, visible_right = page.locator(selector).evaluate(
                    """e => {
                        const box = e.getBoundingClientRect();
                        let limit = window.innerWidth;
                        for (let p = e.parentElement; p; p = p.parentElement) {
                            const o = getComputedStyle(p).overflowX;
                            if (o === "auto" || o === "scroll" || o === "hidden") {
                                limit = Math.min(limit, p.getBoundingClientRect().right);
                            }
                        }
                        return [box.left, box.right, limit];
                    }"""
                )
                assert left >= 0 and right <= visible_right + 0.5, (
                    name, selector, left, right, visible_right
                )
            # Every dashboard block fits the page, whoever adds it.
            for box in page.locator("#funnels-dashboard .module").evaluate_all(
                "els => els.map(e => [e.id, e.getBoundingClientRect().right, "
                "e.scrollWidth - e.clientWidth])"
            ):
                assert box[1] <= width and box[2] <= 1, (name, box)
            if language == "ru":
                text = page.inner_text("body")
                raw = [c for c in codes if re.search(rf"(?<![\w@.-]){re.escape(c)}(?![\w@.-])",
                                                     text)]
                assert raw == [], (name, raw)
                english = [e for e in ENGLISH_ERRORS if e in text]
                assert english == [], (name, english)
        # The choice is remembered: a new page comes in the same language.
        page.goto(live_server.url + "/admin/funnels/funnel/")
        assert page.evaluate("document.documentElement.lang") == language
        context.close()
