"""Table, CSV and JSON views of a report: same numbers, safe cells, no division by zero."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from django.utils import translation

from reports.formatters import (
    CSV_BOM,
    CSV_COLUMNS,
    csv_cell,
    rate_display,
    report_chart_data,
    report_csv,
    report_data,
    report_json,
    report_table,
)
from reports.selectors import (
    ConversionReport,
    HistogramBin,
    ReportRow,
    conversion_report,
)
from reports.tests.helpers import entry, utc

D = dt.date


def make_report(*, rows, group_by="funnel", funnels=("language",), histogram=None,
                previous=None, window_open_from=None) -> ConversionReport:
    """A report built by hand, so formatting is tested apart from the database."""
    totals = ReportRow(
        funnel=None, group=None,
        entered=sum(r.entered for r in rows),
        converted=sum(r.converted for r in rows),
        median_hours=rows[0].median_hours if rows else None,
        p90_hours=rows[0].p90_hours if rows else None,
    )
    previous = previous or ReportRow(None, None, 0, 0, None, None)
    return ConversionReport(
        date_from=D(2026, 11, 1), date_to=D(2026, 11, 3), funnel=None, test_id=None,
        window_days=3, group_by=group_by, time_zone="Europe/Moscow", funnels=list(funnels),
        rows=rows, totals=totals,
        histogram=histogram or [HistogramBin(0, 0), HistogramBin(1, 0), HistogramBin(2, 0)],
        previous_from=D(2026, 10, 29), previous_to=D(2026, 10, 31),
        previous_rows=[ReportRow("language", None, previous.entered, previous.converted,
                                 previous.median_hours, previous.p90_hours)],
        previous_totals=previous, window_open_from=window_open_from,
    )


ROW = ReportRow("language", None, entered=3, converted=1, median_hours=5, p90_hours=7)
EMPTY = ReportRow("language", None, entered=0, converted=0, median_hours=None, p90_hours=None)


# --- CSV -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["=1+2", "+SUM(A1)", "-3", "@cmd", "\tx", "\rx"])
def test_csv_cells_that_a_spreadsheet_would_run_are_prefixed(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("value, expected", [("language", "language"), (12, 12), (None, ""),
                                             (0.25, 0.25), ("2026-11-01", "2026-11-01")])
def test_csv_cells_otherwise_unchanged(value, expected):
    assert csv_cell(value) == expected


def test_csv_has_bom_header_rows_and_escapes_text():
    dangerous = ReportRow("=cmd|' /C calc'!A0", "-1", 2, 1, 0, 0)
    text = report_csv(make_report(rows=[ROW, dangerous], funnels=("language", "x")))

    assert text.startswith(CSV_BOM)
    lines = list(csv.reader(io.StringIO(text[len(CSV_BOM):])))
    assert lines[0] == list(CSV_COLUMNS)
    assert lines[1] == ["language", "", "3", "1", "0.3333", "5", "7"]
    assert lines[2] == ["'=cmd|' /C calc'!A0", "'-1", "2", "1", "0.5", "0", "0"]
    assert text.endswith("\r\n")
    assert len(lines) == 3


def test_csv_of_an_empty_report_has_empty_rate():
    text = report_csv(make_report(rows=[EMPTY]))

    lines = list(csv.reader(io.StringIO(text[len(CSV_BOM):])))
    assert lines[1] == ["language", "", "0", "0", "", "", ""]


# --- JSON ----------------------------------------------------------------------------


def test_json_shape():
    report = make_report(
        rows=[ROW], histogram=[HistogramBin(0, 1), HistogramBin(1, 0), HistogramBin(2, 0)],
        previous=ReportRow(None, None, 4, 1, 2, 2), window_open_from=D(2026, 11, 2),
    )

    data = json.loads(report_json(report))

    assert set(data) == {"period", "filters", "rows", "totals", "histogram", "previous",
                         "window_open_from"}
    assert data["period"] == {"from": "2026-11-01", "to": "2026-11-03", "days": 3,
                              "time_zone": "Europe/Moscow"}
    assert data["filters"] == {"funnel": None, "test": None, "window_days": 3,
                               "group_by": "funnel"}
    assert data["rows"] == [{"funnel": "language", "group": None, "entered": 3,
                             "converted": 1, "rate": 0.3333, "median_hours": 5,
                             "p90_hours": 7}]
    assert data["totals"]["funnel"] is None
    assert data["histogram"][0] == {"day": 0, "converted": 1}
    assert data["previous"]["from"] == "2026-10-29"
    assert data["previous"]["totals"]["rate"] == 0.25
    # 33.33 % now against 25 % before.
    assert data["previous"]["rate_change_points"] == 8.3
    assert data["window_open_from"] == "2026-11-02"


def test_json_of_an_empty_report_has_null_rates():
    data = report_data(make_report(rows=[EMPTY]))

    assert data["rows"][0]["rate"] is None
    assert data["totals"]["rate"] is None
    assert data["previous"]["rate_change_points"] is None


# --- Table ---------------------------------------------------------------------------


def test_rate_display():
    with translation.override("en"):
        assert rate_display(1 / 3) == "33.3%"
        assert rate_display(0.0) == "0.0%"
        assert rate_display(2 / 3) == "66.7%"  # rounded, not cut off
    assert rate_display(None) == "—"


def test_table_shows_rows_totals_previous_and_histogram():
    report = make_report(
        rows=[ROW], histogram=[HistogramBin(0, 1), HistogramBin(1, 0), HistogramBin(2, 0)],
        previous=ReportRow(None, None, 4, 1, 2, 2),
    )
    with translation.override("en"):
        text = report_table(report)

    lines = text.splitlines()
    assert lines[0].startswith("Conversions from 2026-11-01 to 2026-11-03 (3 days")
    data_line = next(line for line in lines if line.startswith("language"))
    assert data_line.split() == ["language", "—", "3", "1", "33.3%", "5", "7"]
    total_line = next(line for line in lines if line.startswith("Total"))
    assert total_line.split() == ["Total", "3", "1", "33.3%", "5", "7"]
    assert "entered 4, converted 1, rate 25.0% (change +8.3 points)" in text
    assert "0: 1, 1: 0, 2: 0" in text


def test_table_of_an_empty_report_shows_dashes():
    with translation.override("en"):
        text = report_table(make_report(rows=[EMPTY]))

    total_line = next(line for line in text.splitlines() if line.startswith("Total"))
    assert total_line.split() == ["Total", "0", "0", "—", "—", "—"]
    assert "change — points" in text


# --- Chart data ----------------------------------------------------------------------


def test_chart_data_for_a_trend_has_one_bar_and_one_line_per_funnel():
    rows = [
        ReportRow("language", "2026-11-01", 2, 1, 1, 1),
        ReportRow("language", "2026-11-02", 0, 0, None, None),
        ReportRow("non_language", "2026-11-01", 4, 1, 3, 3),
        ReportRow("non_language", "2026-11-02", 1, 0, None, None),
    ]
    report = make_report(rows=rows, group_by="day", funnels=("language", "non_language"),
                         histogram=[HistogramBin(0, 1), HistogramBin(1, 1), HistogramBin(2, 0)])

    data = report_chart_data(report)

    assert data["trend"]["labels"] == ["2026-11-01", "2026-11-02"]
    assert [(d["type"], d["data"]) for d in data["trend"]["datasets"]] == [
        ("bar", [2, 0]), ("line", [50.0, None]), ("bar", [4, 1]), ("line", [25.0, 0.0]),
    ]
    assert data["histogram"]["labels"] == ["0", "1", "2"]
    assert data["histogram"]["data"] == [1, 1, 0]


def test_chart_data_by_funnel_has_entered_converted_and_rate():
    data = report_chart_data(make_report(rows=[ROW]))

    assert data["trend"]["labels"] == ["language"]
    assert [d["data"] for d in data["trend"]["datasets"]] == [[3], [1], [33.33]]


# --- The formatters agree with the selector ------------------------------------------


def test_formats_carry_the_selectors_numbers(funnels):
    entry("a@example.com", utc(2026, 11, 10, 9), purchased_at=utc(2026, 11, 10, 12))
    entry("b@example.com", utc(2026, 11, 10, 10))
    report = conversion_report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10),
                               funnel="language", tz="Europe/Moscow")

    data = json.loads(report_json(report))
    csv_lines = list(csv.reader(io.StringIO(report_csv(report)[len(CSV_BOM):])))

    assert data["rows"] == [{"funnel": "language", "group": None, "entered": 2,
                             "converted": 1, "rate": 0.5, "median_hours": 3,
                             "p90_hours": 3}]
    assert csv_lines[1] == ["language", "", "2", "1", "0.5", "3", "3"]
