"""The admin report page: staff only, same numbers as the command, few queries."""

from __future__ import annotations

import io
import json
import re

import pytest
import time_machine
from django.core.management import call_command
from django.urls import reverse
from django.utils import translation

from reports.tests.helpers import entry, utc

URL = "/admin/reports/"


@pytest.fixture
def data(funnels):
    entry("a@example.com", utc(2026, 11, 10, 9), purchased_at=utc(2026, 11, 10, 14))
    entry("b@example.com", utc(2026, 11, 10, 20, 30))
    entry("=evil@example.com", utc(2026, 11, 11, 9), funnel="non_language", test_id=21)


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(user)
    return client


@pytest.fixture
def admin_client_en(admin_client):
    admin_client.defaults["HTTP_ACCEPT_LANGUAGE"] = "en"
    return admin_client


def command_output(*args: str) -> str:
    out = io.StringIO()
    call_command("report_conversions", *args, stdout=out)
    return out.getvalue()


def test_url_is_under_the_admin():
    assert reverse("reports:conversions") == URL


def test_anonymous_is_sent_to_the_admin_login(client, funnels):
    response = client.get(URL, {"from_date": "2026-11-10", "to_date": "2026-11-11"})

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/admin/reports/")


def test_signed_in_non_staff_gets_the_admins_friendly_translated_page(
    client, django_user_model, funnels
):
    client.force_login(django_user_model.objects.create_user("visitor", password="x"))
    client.defaults["HTTP_ACCEPT_LANGUAGE"] = "ru"

    response = client.get(URL, follow=True)

    # The admin's own answer, in the visitor's language: signed in, but not allowed here.
    assert response.redirect_chain[0][0].startswith("/admin/login/?next=/admin/reports/")
    body = response.content.decode()
    assert "visitor" in body and "недостаточно прав" in body
    assert "403 Forbidden" not in body and "Sales" not in body


def test_staff_sees_the_report(staff_client, data):
    response = staff_client.get(URL, {"from_date": "2026-11-10", "to_date": "2026-11-11",
                                      "group_by": "funnel"})

    assert response.status_code == 200
    report = response.context["report"]
    assert (report.totals.entered, report.totals.converted) == (3, 1)
    body = response.content.decode()
    assert 'id="trend-chart"' in body and 'id="histogram-chart"' in body
    assert 'id="report-chart-data"' in body


def test_page_table_and_chart_data_match_the_commands_json(admin_client_en, data):
    filters = {"from_date": "2026-11-10", "to_date": "2026-11-11", "group_by": "day",
               "window": "10"}
    response = admin_client_en.get(URL, filters)
    document = json.loads(command_output(
        "--from-date", "2026-11-10", "--to-date", "2026-11-11", "--group-by", "day",
        "--window", "10", "--format", "json"))

    body = response.content.decode()
    table = body[body.index('id="report-rows"'):body.index("</table>", body.index('id="report-rows"'))]
    cells = re.findall(
        r'<tr data-funnel="([^"]*)" data-group="([^"]*)">\s*<td>[^<]*</td>\s*<td>[^<]*</td>\s*'
        r'<td data-field="entered">(\d+)</td>\s*<td data-field="converted">(\d+)</td>\s*'
        r'<td data-field="rate" data-value="([^"]*)">[^<]*</td>', table)
    assert cells == [
        (r["funnel"], r["group"], str(r["entered"]), str(r["converted"]),
         "" if r["rate"] is None else repr(r["rate"]))
        for r in document["rows"]
    ]
    assert len(cells) == 4
    chart = response.context["chart_data"]
    assert chart["histogram"]["data"] == [h["converted"] for h in document["histogram"]]
    assert "50.0%" in body


def test_csv_download_equals_the_commands_csv(admin_client, data):
    response = admin_client.get(URL, {"from_date": "2026-11-10", "to_date": "2026-11-11",
                                      "group_by": "test", "format": "csv"})
    expected = command_output("--from-date", "2026-11-10", "--to-date", "2026-11-11",
                              "--group-by", "test", "--format", "csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="conversions_2026-11-10_2026-11-11.csv"')
    assert response.content.decode("utf-8") == expected
    assert response.content.startswith(b"\xef\xbb\xbf")


def test_csv_link_keeps_the_filters(admin_client, data):
    response = admin_client.get(URL, {"from_date": "2026-11-10", "to_date": "2026-11-11",
                                      "funnel": "language"})

    query = response.context["csv_query"]
    assert "from_date=2026-11-10" in query and "funnel=language" in query
    assert query.endswith("format=csv")


def test_without_filters_the_last_30_days_are_shown(admin_client, funnels, now):
    with time_machine.travel(now, tick=False):
        response = admin_client.get(URL)

    report = response.context["report"]
    assert (str(report.date_from), str(report.date_to)) == ("2026-10-30", "2026-11-28")
    # A month by week: rates a manager reads at a glance, not daily jumps.
    assert report.group_by == "week"
    assert "format=csv" in response.context["csv_query"]


def test_an_empty_period_renders_dashes(admin_client_en, funnels):
    response = admin_client_en.get(URL, {"from_date": "2020-01-01", "to_date": "2020-01-01"})

    assert response.status_code == 200
    body = response.content.decode()
    assert '<dd data-field="rate" data-value="">—</dd>' in body


def test_bad_filters_show_the_form_errors(admin_client_en, funnels):
    response = admin_client_en.get(URL, {"from_date": "2026-11-12", "to_date": "2026-11-10",
                                         "funnel": "nope", "window": "0"})

    assert response.status_code == 200
    assert response.context["report"] is None
    form = response.context["form"]
    assert set(form.errors) == {"__all__", "funnel", "window"}
    assert "The start date is after the end date." in response.content.decode()


def test_page_extends_the_admin_and_uses_the_vendored_chart_js(admin_client, data):
    with translation.override("en"):
        response = admin_client.get(URL, {"from_date": "2026-11-10", "to_date": "2026-11-11"})

    body = response.content.decode()
    assert 'id="site-name"' in body  # the admin header from admin/base_site.html
    scripts = re.findall(r'<script src="([^"]+)"', body)
    assert "/static/reports/vendor/chart.umd.min.js" in scripts
    assert all(src.startswith("/static/") for src in scripts)
    # Chart data is JSON in the page, not script built from strings.
    assert '<script id="report-chart-data" type="application/json">' in body


def test_page_query_count_is_small_and_fixed(admin_client, data, django_assert_num_queries):
    # Session, user, funnels, the rollup's state, the period, the previous period, the
    # control periods, the opt-outs, and the admin header's mode and health (3, as on every
    # admin page): whatever the data. (With a control group, one more: test_views_lift.)
    with django_assert_num_queries(11):
        response = admin_client.get(URL, {"from_date": "2026-11-01", "to_date": "2026-11-30",
                                          "group_by": "test"})
    assert response.status_code == 200
    for n in range(20):
        entry(f"more{n}@example.com", utc(2026, 11, 12, 9), test_id=30 + n)
    with django_assert_num_queries(11):
        admin_client.get(URL, {"from_date": "2026-11-01", "to_date": "2026-11-30",
                               "group_by": "test"})


def test_an_empty_period_says_so_and_when_the_first_entry_is(admin_client_en, data):
    response = admin_client_en.get(URL, {"from_date": "1900-01-01", "to_date": "1900-12-31",
                                         "group_by": "week"})
    body = response.content.decode()
    assert 'id="report-empty"' in body
    assert "Nobody entered a funnel from 1900-01-01 to 1900-12-31." in body
    assert "The first entry is on 2026-11-10." in body
    assert 'id="report-rows"' not in body  # no 53 rows of zeros


def test_grouped_by_test_reads_test_n_with_funnel_names_and_no_line(admin_client_en, data):
    import json

    response = admin_client_en.get(URL, {"from_date": "2026-11-10", "to_date": "2026-11-11",
                                         "group_by": "test"})
    chart = response.context["chart_data"]
    assert all("· test " in label for label in chart["trend"]["labels"]), chart["trend"]
    assert not any("non_language ·" in label for label in chart["trend"]["labels"])
    rate = [d for d in chart["trend"]["datasets"] if d["axis"] == "rate"]
    assert rate and all(d["line"] is False for d in rate)
    json.dumps(chart)


def test_a_ten_year_range_is_grouped_by_month(admin_client_en, data):
    response = admin_client_en.get(URL, {"from_date": "2017-01-01", "to_date": "2026-11-30"})
    assert response.status_code == 200
    assert response.context["report"].group_by == "month"


def test_the_csv_for_people_opens_in_a_russian_excel(admin_client, data):
    admin_client.defaults["HTTP_ACCEPT_LANGUAGE"] = "ru"
    response = admin_client.get(URL, {"from_date": "2026-11-10", "to_date": "2026-11-11",
                                      "group_by": "funnel", "format": "csv_people"})
    assert response["Content-Disposition"] == (
        'attachment; filename="conversions_2026-11-10_2026-11-11_excel.csv"'
    )
    raw = response.content
    assert raw.startswith("\ufeff".encode())
    text = raw.decode("utf-8-sig")
    lines = text.split("\r\n")
    assert "2026-11-10" in lines[0] and "2026-11-11" in lines[0]
    assert lines[2].split(";")[:5] == ["Воронка", "Группа", "Вошли", "Купили", "Конверсия"]
    assert any(line.startswith("Итого;") for line in lines)
    rates = [line.split(";")[4] for line in lines[3:] if line]
    assert rates and all(r == "—" or ("," in r and r.endswith("%")) for r in rates), rates
