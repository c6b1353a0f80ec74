"""The report page and the command with a control group: the same numbers everywhere."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import time_machine
from django.core.management import call_command
from django.test import Client
from django.utils import translation

from funnels.models import ControlPeriod, ExperimentGroup
from reports.tests.test_lift import LONG_AFTER, people, period  # noqa: F401 - fixture

URL = "/admin/reports/"
FILTERS = {"from_date": "2026-11-01", "to_date": "2026-11-30", "group_by": "funnel",
           "window": "7"}
ARGS = ["--from-date", "2026-11-01", "--to-date", "2026-11-30", "--window", "7"]

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_en(admin_user):
    """Signed in at the pinned time (a session from today would have expired there)."""
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    with time_machine.travel(LONG_AFTER, tick=False):
        client.force_login(admin_user)
    return client


@pytest.fixture
def experiment(period):  # noqa: F811
    people("t", 70, group=ExperimentGroup.TREATMENT, bought=56)
    people("c", 80, group=ExperimentGroup.CONTROL, bought=48)


def command(*args: str) -> str:
    out = io.StringIO()
    with translation.override("en"), time_machine.travel(LONG_AFTER, tick=False):
        call_command("report_conversions", *args, stdout=out)
    return out.getvalue()


def page(client, **extra) -> str:
    with time_machine.travel(LONG_AFTER, tick=False):
        response = client.get(URL, {**FILTERS, **extra})
    assert response.status_code == 200
    return response.content.decode()


def _cells(html: str, field: str) -> list[str]:
    return re.findall(rf'data-field="{field}"(?: data-value="([^"]*)")?>([^<]*)<', html)


def test_the_page_shows_the_lift_and_its_curve_as_the_command_s_json(admin_client_en,
                                                                       experiment):
    html = page(admin_client_en)
    document = json.loads(command(*ARGS, "--format", "json"))
    [lift] = document["lift"]
    assert (lift["treatment"]["converted"], lift["control"]["converted"]) == (56, 48)
    assert lift["lift_points"] == 20.0
    assert lift["lift_interval_points"] == [5.24, 33.39]
    assert lift["incremental_purchases"] == 14.0
    section = html[html.index('id="report-lift"'):]
    assert re.search(r"<h3>[^<]*: control period 1 since 2026-10-01, 50% held out</h3>", section), \
        re.findall(r"<h3>.*?</h3>", section, re.S)
    assert "Lift +20.0 points (95% CI +5.2 to +33.4)" in section
    assert "The emails sell" in section
    curve = section[section.index('class="lift-curve"'):]
    days = [int(text) for _value, text in _cells(curve, "day")]
    assert days == [p["day"] for p in lift["curve"]] == list(range(7))
    for field in ("treatment_converted", "control_converted"):
        assert [int(t) for _v, t in _cells(curve, field)] == [p[field] for p in lift["curve"]]
    for field in ("treatment_rate", "control_rate"):
        assert [float(v) for v, _t in _cells(curve, field)] == [p[field] for p in lift["curve"]]
    chart = json.loads(re.search(
        r'<script id="report-chart-data" type="application/json">(.*?)</script>', html, re.S
    ).group(1))
    [drawn] = chart["lift"]
    assert drawn["id"] == "lift-chart-language-1" and 'id="lift-chart-language-1"' in html
    assert drawn["datasets"][0]["data"] == [
        round(p["treatment_rate"] * 100, 2) for p in lift["curve"]
    ]


def test_the_command_table_and_the_lift_csv(experiment):
    table = command(*ARGS)
    assert "Lift of language, control period 1 (50% held out, since 2026-10-01):" in table
    assert "Lift +20.0 points (95% CI +5.2 to +33.4)" in table
    assert "Bought before the funnel started: language 0, non_language 0." in table
    rows = list(csv.DictReader(io.StringIO(command(*ARGS, "--format", "csv_lift")
                                           .lstrip("\ufeff"))))
    assert len(rows) == 7 and rows[-1]["treatment_converted"] == "56"
    assert rows[0]["lift_low_points"] == "5.24" and rows[0]["not_enough"] == ""


def test_the_page_s_lift_csv_is_the_command_s(admin_client_en, experiment):
    with time_machine.travel(LONG_AFTER, tick=False):
        response = admin_client_en.get(URL, {**FILTERS, "format": "csv_lift"})
    assert response["Content-Disposition"] == (
        'attachment; filename="lift_2026-11-01_2026-11-30.csv"'
    )
    assert response.content.decode() == command(*ARGS, "--format", "csv_lift")


def test_not_enough_data_and_a_broken_split_are_said_on_the_page(admin_client_en, period):  # noqa: F811
    ControlPeriod.objects.filter(pk=period.pk).update(share=20)
    people("t", 60, group=ExperimentGroup.TREATMENT, bought=10)
    people("c", 40, group=ExperimentGroup.CONTROL, bought=5)
    html = page(admin_client_en)
    assert "the assignment is broken and this lift must not be trusted" in html
    ControlPeriod.objects.filter(pk=period.pk).update(share=40)
    html = page(admin_client_en)
    assert "Not enough data yet: the interval still includes zero." in html
    assert "more days at the current volume" in html


def test_the_page_counts_from_the_funnel_s_start_on_request(admin_client_en, period):  # noqa: F811
    from datetime import timedelta
    people("early", 10, group=ExperimentGroup.TREATMENT, bought=10,
           bought_after=timedelta(minutes=5))
    people("c", 10, group=ExperimentGroup.CONTROL, bought=1)
    html = page(admin_client_en, origin="start")
    assert re.search(r'data-field="bought_before_start">10<', html)
    assert "counted from the funnel&#x27;s start" in html


def test_page_query_count_with_control_groups_is_fixed(admin_client_en, experiment,
                                                      django_assert_num_queries):
    # As without control groups (test_views): the periods and the lift's counts are one
    # query each, whatever the number of funnels, periods and people.
    with django_assert_num_queries(12):
        page(admin_client_en)
    people("more", 30, group=ExperimentGroup.CONTROL, bought=3)
    with django_assert_num_queries(12):
        page(admin_client_en)
