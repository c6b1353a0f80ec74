"""The report page with a control group in a real browser: both curves drawn, the table
equal to the command's JSON, no sideways scrolling at 1366 and 390 px in both languages."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from funnels.models import ControlPeriod, ExperimentGroup, Funnel
from funnels.tests.browser_support import ARTIFACTS, chromium_launched, drawn_pixels
from reports.tests.test_lift import people
from reports.tests.helpers import utc

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

QUERY = "from_date=2026-11-01&to_date=2026-11-30&group_by=funnel&window=7"
CHART = "lift-chart-language-1"


@pytest.fixture(scope="module")
def browser():
    with chromium_launched() as browser:
        yield browser


@pytest.fixture
def experiment(funnels):
    funnel = Funnel.objects.get(slug="language")
    funnel.control_share, funnel.control_period = 50, 1
    funnel.save()
    ControlPeriod.objects.create(funnel=funnel, number=1, share=50,
                                 started_at=utc(2026, 10, 1))
    people("t", 70, group=ExperimentGroup.TREATMENT, bought=56)
    people("c", 80, group=ExperimentGroup.CONTROL, bought=48)


def _signed_in(browser, live_server, django_user_model, *, language: str, width: int):
    if not django_user_model.objects.filter(username="boss").exists():
        django_user_model.objects.create_superuser("boss", "boss@example.com", "correct horse")
    context = browser.new_context(locale="en-US", viewport={"width": width, "height": 900})
    context.add_cookies([{"name": "django_language", "value": language,
                          "url": live_server.url}])
    page = context.new_page()
    # Straight to the report: the admin index would read the MODX database.
    page.goto(f"{live_server.url}/admin/login/?next=/admin/reports/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/reports/")
    return context, page


def _open(page, live_server):
    page.goto(f"{live_server.url}/admin/reports/?{QUERY}")
    page.wait_for_function(
        f"() => window.Chart && Chart.getChart(document.getElementById('{CHART}'))"
    )


def test_both_curves_are_drawn_and_the_table_is_the_command_s_json(
    browser, live_server, django_user_model, experiment
):
    context, page = _signed_in(browser, live_server, django_user_model, language="en",
                               width=1366)
    try:
        _open(page, live_server)
        assert drawn_pixels(page, CHART) > 500
        drawn = page.evaluate(
            f"""() => {{
                const chart = Chart.getChart(document.getElementById('{CHART}'));
                return chart.data.datasets.map((set, i) => ({{
                    label: set.label,
                    points: chart.getDatasetMeta(i).data.length,
                    visible: chart.isDatasetVisible(i),
                    data: set.data,
                }}));
            }}"""
        )
        assert [d["label"] for d in drawn] == ["Treatment, %", "Control, %"]
        assert all(d["visible"] and d["points"] == 7 for d in drawn)

        rows = page.eval_on_selector_all(
            ".report-lift[data-funnel=language] table.lift-curve tbody tr",
            """(trs) => trs.map((tr) => {
                const cell = (f) => tr.querySelector(`[data-field=${f}]`);
                return {
                    day: Number(cell("day").textContent),
                    treatment_converted: Number(cell("treatment_converted").textContent),
                    treatment_rate: Number(cell("treatment_rate").dataset.value),
                    control_converted: Number(cell("control_converted").textContent),
                    control_rate: Number(cell("control_rate").dataset.value),
                };
            })""",
        )
        out = io.StringIO()
        call_command("report_conversions", "--from-date", "2026-11-01", "--to-date",
                     "2026-11-30", "--window", "7", "--format", "json", stdout=out)
        [lift] = json.loads(out.getvalue())["lift"]
        assert rows == lift["curve"]
        assert drawn[0]["data"] == [round(p["treatment_rate"] * 100, 2) for p in lift["curve"]]
        assert drawn[1]["data"] == [round(p["control_rate"] * 100, 2) for p in lift["curve"]]
        groups = page.eval_on_selector_all(
            ".report-lift[data-funnel=language] table.lift-groups tbody tr",
            """(trs) => trs.map((tr) => [tr.dataset.group,
                Number(tr.querySelector("[data-field=entered]").textContent),
                Number(tr.querySelector("[data-field=converted]").textContent)])""",
        )
        assert groups == [
            ["treatment", lift["treatment"]["entered"], lift["treatment"]["converted"]],
            ["control", lift["control"]["entered"], lift["control"]["converted"]],
        ]
    finally:
        context.close()


@pytest.mark.parametrize("language", ["en", "ru"])
@pytest.mark.parametrize("width", [1366, 390])
def test_the_lift_block_fits_the_screen(
    browser, live_server, django_user_model, experiment, language, width
):
    context, page = _signed_in(browser, live_server, django_user_model, language=language,
                               width=width)
    try:
        _open(page, live_server)
        page.locator("#report-lift").scroll_into_view_if_needed()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report_lift_{language}_{width}.png"),
                        full_page=True)
        assert page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        title = page.inner_text("#lift-title")
        assert title == ("Does the funnel sell? Treatment against control" if language == "en"
                         else "Продаёт ли воронка? Получавшие письма против контрольной группы")
    finally:
        context.close()
