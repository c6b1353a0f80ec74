"""The report page in a real browser: charts drawn, table equal to the command's JSON."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from funnels.tests.browser_support import ARTIFACTS, chromium_launched, drawn_pixels
from reports.tests.helpers import entry, utc

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(scope="module")
def browser():
    with chromium_launched() as browser:
        yield browser


@pytest.fixture
def page(browser, live_server, django_user_model, funnels):
    django_user_model.objects.create_superuser("boss", "boss@example.com", "correct horse")
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    yield page
    context.close()


def test_page_draws_both_charts_and_its_table_matches_the_command(page, live_server):
    entry("a@example.com", utc(2026, 11, 10, 9), purchased_at=utc(2026, 11, 10, 14))
    entry("b@example.com", utc(2026, 11, 10, 20, 30), purchased_at=utc(2026, 11, 13, 9))
    entry("c@example.com", utc(2026, 11, 11, 9), funnel="non_language", test_id=21)
    entry("d@example.com", utc(2026, 11, 12, 9))

    page.goto(f"{live_server.url}/admin/reports/?from_date=2026-11-10&to_date=2026-11-12"
              "&group_by=day&window=7")
    page.wait_for_function(
        """() => window.Chart
            && Chart.getChart(document.getElementById("trend-chart"))
            && Chart.getChart(document.getElementById("histogram-chart"))"""
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_conversions.png"), full_page=True)

    assert drawn_pixels(page, "trend-chart") > 500
    assert drawn_pixels(page, "histogram-chart") > 500
    assert page.evaluate(
        "Chart.getChart(document.getElementById('histogram-chart')).data.datasets[0].data"
    ) == [1, 0, 1, 0, 0, 0, 0]

    rows = page.eval_on_selector_all(
        "#report-rows tbody tr",
        """(trs) => trs.map((tr) => ({
            funnel: tr.dataset.funnel,
            group: tr.dataset.group,
            entered: Number(tr.querySelector("[data-field=entered]").textContent),
            converted: Number(tr.querySelector("[data-field=converted]").textContent),
            rate: tr.querySelector("[data-field=rate]").dataset.value,
            rate_text: tr.querySelector("[data-field=rate]").textContent.trim(),
        }))""",
    )
    out = io.StringIO()
    call_command("report_conversions", "--from-date", "2026-11-10", "--to-date",
                 "2026-11-12", "--group-by", "day", "--window", "7", "--format", "json",
                 stdout=out)
    document = json.loads(out.getvalue())

    assert [(r["funnel"], r["group"], r["entered"], r["converted"],
             None if r["rate"] == "" else float(r["rate"])) for r in rows] == [
        (r["funnel"], r["group"], r["entered"], r["converted"], r["rate"])
        for r in document["rows"]
    ]
    assert len(rows) == 6
    assert rows[0]["rate_text"] == "100.0%"
    assert page.inner_text("#report-totals [data-field=entered]") == str(
        document["totals"]["entered"])
