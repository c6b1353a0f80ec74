"""End to end in a real browser: the demo's MODX data, a live run against the fake Brevo,
then an operator in Chromium logs in, browses and filters the entries, opens the run and
its outcomes, reads the report (charts drawn, table equal to `report_conversions --format
json`), downloads the CSV (equal to the command's) and switches the dry run off and on.

Screenshots go to test-artifacts/ (git-ignored). Browser launch: test_browser_admin's.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from collections import Counter

import pytest
from django.core.management import call_command
from django.utils import timezone

from conftest import CURRENT_TIME
from funnels.demo import demo_generate, demo_load
from funnels.admin import email_display
from funnels.labels import reason_label
from funnels.models import FunnelEntry, SyncRun, SyncRunItem
from funnels.services.runs import run_funnels
from funnels.services.runtime import runtime_settings_get
from funnels.tests.proof_support import assert_invariant
from funnels.tests.sync_support import (
    default_rows_restore,
    funnels_configure,
)
from funnels.tests.browser_support import ARTIFACTS, drawn_pixels
from funnels.tests.test_browser_admin import browser_page  # noqa: F401 - fixture
from funnels.tests.test_demo import empty_modx_database  # noqa: F401 - fixture

# Playwright's sync API runs an event loop in this thread; the ORM calls made here between
# browser steps are plain synchronous calls.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, databases=["default", "modx"]),
]

SEED, SIZE = 11, 160
PASSWORD = "e2e-operator-password-1"


@pytest.fixture
def after_a_live_run(empty_modx_database, live_settings, client_factory, fake_brevo,
                     django_user_model):
    """The demo data in MODX, one live run against the fake Brevo, an operator account."""
    live_settings.LANGUAGE_CODE = "en"
    default_rows_restore()
    funnels_configure()
    demo_load(data=demo_generate(seed=SEED, size=SIZE, now=CURRENT_TIME))
    since = timezone.localdate(CURRENT_TIME) - dt.timedelta(weeks=9)
    run = run_funnels(now=CURRENT_TIME, dry_run=False, since=since, chunk_size=50,
                      brevo_client_factory=client_factory)
    assert run.status == SyncRun.Status.SUCCESS, run.error
    assert_invariant(fake_brevo, after_id=0, as_of=CURRENT_TIME)
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    return run


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"e2e-{name}.png"), full_page=True)


def _column(page, field: str) -> list[str]:
    return [c.strip() for c in page.locator(f"#result_list .field-{field}").all_inner_texts()]


def _command(*args: str) -> str:
    out = io.StringIO()
    call_command("report_conversions", *args, stdout=out)
    return out.getvalue()


def test_operator_end_to_end_after_a_live_run(live_server, browser_page, after_a_live_run):
    page, run = browser_page, after_a_live_run
    base = live_server.url

    # Log in.
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#funnels-dashboard")
    assert page.inner_text("#funnels-mode").strip() == "DRY RUN"
    _shot(page, "1-dashboard")

    # Entries: the list, a funnel filter, a purchase filter, a search typed carelessly.
    language = FunnelEntry.objects.filter(funnel_type="language")
    assert 0 < language.count() <= 100  # one page of the list
    page.goto(f"{base}/admin/funnels/funnelentry/")
    page.click("#changelist-filter a:text-is('Language tests')")
    page.wait_for_url("**funnel=language**")
    # Shown as people write them: internationalised domains in Unicode.
    assert sorted(_column(page, "email_shown")) == sorted(
        email_display(e) for e in language.values_list("email", flat=True))
    assert {c.splitlines()[0] for c in _column(page, "funnel_test")} == {"Language tests"}
    page.click("#changelist-filter a:text-is('Purchased')")
    page.wait_for_url("**purchased=yes**")
    buyers = language.filter(certificate_purchased=True)
    assert buyers.exists()
    assert sorted(_column(page, "email_shown")) == sorted(
        email_display(e) for e in buyers.values_list("email", flat=True))
    _shot(page, "2-entries-language-purchased")
    someone = buyers.order_by("id").first().email
    page.goto(f"{base}/admin/funnels/funnelentry/")
    page.fill("#searchbar", f"  {someone.upper()} ")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=**")
    assert email_display(someone) in _column(page, "email_shown")

    # The run and its outcomes, per action, as recorded.
    page.goto(f"{base}/admin/funnels/syncrun/")
    page.click(f"#result_list a:has-text('#{run.pk}')")
    page.wait_for_selector("#funnels-run-items")
    counts = Counter(SyncRunItem.objects.filter(run=run).values_list("action", flat=True))
    actions = page.inner_text("#funnels-run-items .funnels-item-actions")
    assert f"all ({sum(counts.values())})" in actions
    for action, label in SyncRunItem.Action.choices:
        if counts[action]:
            assert f"{label} ({counts[action]})" in actions, (label, actions)
    assert counts[SyncRunItem.Action.ADDED] == run.entries_added > 0
    _shot(page, "3-run")
    page.click("#funnels-run-items .funnels-item-actions a:has-text('Skipped')")
    page.wait_for_url("**action=skipped**")
    # Each reason in words (the first line of the cell; the detail follows).
    reasons = {
        r.strip().splitlines()[0]
        for r in page.locator("#funnels-run-items tr.funnels-item td.funnels-reason")
        .all_inner_texts()
    }
    assert reasons and "" not in reasons
    assert reasons <= {reason_label(code) for code in SyncRunItem.objects.filter(
        run=run, action="skipped").values_list("reason", flat=True)}
    _shot(page, "4-run-skipped")

    # The report: charts drawn from the data, the table equal to the command's JSON.
    period = ["--from-date", "2026-10-01", "--to-date", "2026-11-28", "--group-by", "week",
              "--window", "30"]
    query = "from_date=2026-10-01&to_date=2026-11-28&group_by=week&window=30"
    page.goto(f"{base}/admin/reports/?{query}")
    page.wait_for_function(
        """() => window.Chart
            && Chart.getChart(document.getElementById("trend-chart"))
            && Chart.getChart(document.getElementById("histogram-chart"))"""
    )
    assert page.inner_text("#funnels-mode").strip() == "DRY RUN"
    assert drawn_pixels(page, "trend-chart") > 500
    assert drawn_pixels(page, "histogram-chart") > 500
    _shot(page, "5-report")
    document = json.loads(_command(*period, "--format", "json"))
    rows = page.eval_on_selector_all(
        "#report-rows tbody tr",
        """(trs) => trs.map((tr) => [
            tr.dataset.funnel, tr.dataset.group,
            Number(tr.querySelector("[data-field=entered]").textContent),
            Number(tr.querySelector("[data-field=converted]").textContent),
            tr.querySelector("[data-field=rate]").dataset.value,
        ])""",
    )
    assert [[f, g, e, c, None if r == "" else float(r)] for f, g, e, c, r in rows] == [
        [r["funnel"], r["group"], r["entered"], r["converted"], r["rate"]]
        for r in document["rows"]
    ]
    assert document["totals"]["entered"] > 0 and document["totals"]["converted"] > 0
    assert page.inner_text("#report-totals [data-field=entered]") == str(
        document["totals"]["entered"])
    assert page.inner_text("#report-totals [data-field=converted]") == str(
        document["totals"]["converted"])
    histogram = page.evaluate(
        "Chart.getChart(document.getElementById('histogram-chart')).data.datasets[0].data")
    assert histogram == [b["converted"] for b in document["histogram"]]

    # The CSV download is the command's CSV, byte for byte.
    with page.expect_download() as download:
        page.click("#report-csv")
    saved = ARTIFACTS / "e2e-report.csv"
    download.value.save_as(str(saved))
    assert saved.read_bytes().decode("utf-8") == _command(*period, "--format", "csv")

    # The dry-run switch: to live (with the confirmation tick) and back.
    page.goto(f"{base}/admin/")
    page.check("#funnels-confirm-live")
    page.click("#funnels-toggle-button")
    page.wait_for_selector("#funnels-mode[data-mode='live']")
    assert runtime_settings_get().dry_run is False
    _shot(page, "6-live")
    page.click("#funnels-toggle-button")
    page.wait_for_selector("#funnels-mode[data-mode='dry']")
    assert runtime_settings_get().dry_run is True
    assert "Last changed by operator" in page.inner_text("#funnels-last-change")
    _shot(page, "7-dry-again")
