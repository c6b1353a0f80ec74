"""The opt-outs beside the conversions: selector, command and page."""

from __future__ import annotations

import datetime as dt
import io
import json
import re

import pytest
from django.core.management import call_command
from django.utils import translation

from funnels.models import BrevoState, FunnelEntry
from reports.selectors import conversion_report, opt_out_counts
from reports.tests.helpers import entry, utc

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(funnels):
    states = {
        "a@example.com": BrevoState.IN_LIST,
        "b@example.com": BrevoState.UNSUBSCRIBED,
        "c@example.com": BrevoState.BLACKLISTED,
        "d@example.com": "",
    }
    for email, state in states.items():
        entry(email, utc(2026, 11, 10, 9))
        FunnelEntry.objects.filter(email=email).update(brevo_state=state)
    # A second entry of the unsubscribed person counts once; one outside the period not.
    entry("b@example.com", utc(2026, 11, 12, 9), test_id=101)
    FunnelEntry.objects.filter(email="b@example.com").update(brevo_state=BrevoState.UNSUBSCRIBED)
    entry("e@example.com", utc(2026, 12, 10, 9))
    FunnelEntry.objects.filter(email="e@example.com").update(brevo_state=BrevoState.BLACKLISTED)
    entry("f@example.com", utc(2026, 11, 11, 9), funnel="non_language", test_id=21)


def test_counts_per_funnel(people, django_assert_num_queries):
    report = conversion_report(date_from=dt.date(2026, 11, 1), date_to=dt.date(2026, 11, 30),
                               group_by="day")
    with django_assert_num_queries(1):
        rows = opt_out_counts(report=report)
    language, other = rows
    assert (language.entered, language.unsubscribed, language.blacklisted) == (4, 1, 1)
    assert language.rate == 0.5
    assert (other.entered, other.unsubscribed, other.blacklisted, other.rate) == (1, 0, 0, 0)


def test_the_command_prints_them_under_the_table(people):
    out = io.StringIO()
    with translation.override("en"):
        call_command("report_conversions", "--from-date", "2026-11-01",
                     "--to-date", "2026-11-30", stdout=out)
    text = out.getvalue()
    assert "Opt-outs as the last Brevo audit read them" in text
    assert re.search(r"language\s+4\s+1\s+1\s+50\.0\s*%", text), text


def test_the_page_shows_them(admin_client, people):
    admin_client.defaults["HTTP_ACCEPT_LANGUAGE"] = "en"
    response = admin_client.get("/admin/reports/", {"from_date": "2026-11-01",
                                                    "to_date": "2026-11-30"})
    body = response.content.decode()
    block = body[body.index('id="report-opt-outs"'):]
    assert re.search(r'data-field="unsubscribed">1<', block)
    assert re.search(r'data-field="blacklisted">1<', block)


def test_the_json_holds_them(people):
    out = io.StringIO()
    call_command("report_conversions", "--from-date", "2026-11-01", "--to-date", "2026-11-30",
                 "--format", "json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["opt_outs"] == [
        {"funnel": "language", "entered": 4, "unsubscribed": 1, "blacklisted": 1,
         "opt_out_rate": 0.5},
        {"funnel": "non_language", "entered": 1, "unsubscribed": 0, "blacklisted": 0,
         "opt_out_rate": 0.0},
    ]


def test_the_csv_of_the_command_and_of_the_page_agree(admin_client, people):
    out = io.StringIO()
    call_command("report_conversions", "--from-date", "2026-11-01", "--to-date", "2026-11-30",
                 "--format", "csv_opt_outs", stdout=out)
    command_csv = out.getvalue()
    lines = command_csv.lstrip("\ufeff").splitlines()
    assert lines == [
        "funnel,entered,unsubscribed,blacklisted,opt_out_rate",
        "language,4,1,1,0.5",
        "non_language,1,0,0,0.0",
    ]
    response = admin_client.get("/admin/reports/", {
        "from_date": "2026-11-01", "to_date": "2026-11-30", "format": "csv_opt_outs",
    })
    assert response["Content-Disposition"] == (
        'attachment; filename="opt_outs_2026-11-01_2026-11-30.csv"'
    )
    assert response.content.decode() == command_csv


def test_the_page_links_its_csv(admin_client, people):
    response = admin_client.get("/admin/reports/", {"from_date": "2026-11-01",
                                                    "to_date": "2026-11-30"})
    body = response.content.decode()
    link = re.search(r'id="report-csv-opt-outs" href="\?([^"]+)"', body)
    assert link and "format=csv_opt_outs" in link.group(1)
    assert "from_date=2026-11-01" in link.group(1).replace("&amp;", "&")
