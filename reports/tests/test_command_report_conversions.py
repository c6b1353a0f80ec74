"""report_conversions: formats, defaults, and one-line errors with exit status 2."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import translation

from reports.formatters import report_csv
from reports.management.commands.report_conversions import Command
from reports.selectors import conversion_report
from reports.tests.helpers import entry, utc

D = dt.date


def run(*args: str) -> str:
    out = io.StringIO()
    with translation.override("en"):
        call_command("report_conversions", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def data(funnels):
    entry("a@example.com", utc(2026, 11, 10, 9), purchased_at=utc(2026, 11, 11, 9))
    entry("b@example.com", utc(2026, 11, 10, 20, 30))  # 23:30 in Moscow, still 11-10
    entry("c@example.com", utc(2026, 11, 11, 9), funnel="non_language", test_id=21,
          purchased_at=utc(2026, 11, 11, 11))
    entry("d@example.com", utc(2026, 11, 3, 9))  # the previous period


def test_table_by_default(data):
    text = run("--from-date", "2026-11-10", "--to-date", "2026-11-11")

    lines = text.splitlines()
    assert lines[0].startswith("Conversions from 2026-11-10 to 2026-11-11 (2 days")
    assert next(x for x in lines if x.startswith("language")).split() == [
        "language", "—", "2", "1", "50.0%", "24", "24"]
    assert next(x for x in lines if x.startswith("non_language")).split() == [
        "non_language", "—", "1", "1", "100.0%", "2", "2"]
    assert next(x for x in lines if x.startswith("Total")).split() == [
        "Total", "3", "2", "66.7%", "2", "24"]
    assert "Previous period 2026-11-08 to 2026-11-09: entered 0" in text


def test_json_rows_by_day(data):
    text = run("--from-date", "2026-11-10", "--to-date", "2026-11-11", "--group-by", "day",
               "--funnel", "language", "--format", "json")

    document = json.loads(text)
    assert document["filters"] == {"funnel": "language", "test": None, "window_days": 30,
                                   "group_by": "day"}
    assert document["rows"] == [
        {"funnel": "language", "group": "2026-11-10", "entered": 2, "converted": 1,
         "rate": 0.5, "median_hours": 24, "p90_hours": 24},
        {"funnel": "language", "group": "2026-11-11", "entered": 0, "converted": 0,
         "rate": None, "median_hours": None, "p90_hours": None},
    ]
    assert document["totals"]["entered"] == 2


def test_window_and_test_filters(data):
    document = json.loads(run("--from-date", "2026-11-10", "--to-date", "2026-11-11",
                              "--window", "1", "--test", "21", "--format", "json"))

    assert document["filters"]["test"] == 21
    assert len(document["histogram"]) == 1
    assert [(r["funnel"], r["entered"], r["converted"]) for r in document["rows"]] == [
        ("language", 0, 0), ("non_language", 1, 1)]


def test_csv_is_the_formatters_csv_for_the_same_filters(data):
    text = run("--from-date", "2026-11-09", "--to-date", "2026-11-12", "--group-by", "test",
               "--format", "csv")

    expected = report_csv(conversion_report(
        date_from=D(2026, 11, 9), date_to=D(2026, 11, 12), group_by="test"))
    assert text == expected
    assert text.startswith("\ufefffunnel,group,")


def test_to_date_defaults_to_today_in_the_site_time_zone(funnels, now):
    # 2026-11-28 15:30 UTC is already the 28th in Moscow.
    with time_machine.travel(now, tick=False):
        document = json.loads(run("--from-date", "2026-11-20", "--format", "json"))

    assert document["period"]["to"] == "2026-11-28"
    assert document["window_open_from"] == "2026-11-20"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from-date", "2026-11-12", "--to-date", "2026-11-10"], "after the end date"),
        (["--from-date", "2026-13-01"], "not a date in the form YYYY-MM-DD"),
        (["--from-date", "20261101"], "not a date in the form YYYY-MM-DD"),
        (["--from-date", "2026-11-01", "--funnel", "nope"], "Unknown funnel nope"),
        (["--from-date", "2026-11-01", "--window", "0"], "between 1 and"),
    ],
)
def test_bad_input_is_a_command_error_with_status_2(funnels, args, message):
    with pytest.raises(CommandError, match=message) as error:
        run(*args)
    assert error.value.returncode == 2


def test_help_documents_definitions_and_json():
    with translation.override("en"):
        parser = Command().create_parser("manage.py", "report_conversions")
        text = parser.format_help()

    assert "Definitions:" in text
    assert "converted / entered" in text
    assert '"rows": [{"funnel", "group", "entered", "converted", "rate",' in text
    assert "--group-by {funnel,test,day,week,month}" in text


@pytest.mark.parametrize(
    "args",
    [
        ["--from-date", "2026-11-12", "--to-date", "2026-11-10"],
        ["--from-date", "2026-11-01", "--group-by", "year"],
    ],
)
def test_from_the_shell_bad_input_is_one_line_and_status_2(args):
    # No database is needed to refuse these: nothing is read before validation.
    result = subprocess.run(
        [sys.executable, "manage.py", "report_conversions", *args],
        cwd=Path(settings.BASE_DIR), capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        ("CommandError: ", "manage.py report_conversions: error: "))
    if "--group-by" not in args:
        assert len(result.stderr.strip().splitlines()) == 1
