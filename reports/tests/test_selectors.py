"""conversion_report against hand-computed fixtures (SQLite and MariaDB)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

import pytest

from funnels.local_days import offset_segments
from funnels.models import FunnelEntry
from reports.selectors import (
    HistogramBin,
    ReportError,
    ReportRow,
    conversion_report,
    nearest_rank,
)
from reports.tests.helpers import entry, utc

MOSCOW = "Europe/Moscow"
D = dt.date


def report(**kwargs):
    kwargs.setdefault("tz", MOSCOW)
    return conversion_report(**kwargs)


def row(report_, funnel, group=None):
    matches = [r for r in report_.rows if r.funnel == funnel and r.group == group]
    assert len(matches) == 1, report_.rows
    return matches[0]


def counts_by_group(report_, funnel="language"):
    return {r.group: r.entered for r in report_.rows if r.funnel == funnel}


# --- Conversion, the window and the guards ------------------------------------------


@pytest.fixture
def one_day(funnels):
    """Five people on 2026-11-10 (Moscow), hand-computed:
    a converts after 5 h, b after 31 days (outside the window), c never,
    d's purchase predates the entry (must not count), e exactly at the 30-day edge."""
    day = utc(2026, 11, 10, 9)
    entry("a@example.com", day, purchased_at=day + dt.timedelta(hours=5, minutes=59))
    entry("b@example.com", day + dt.timedelta(hours=1),
          purchased_at=day + dt.timedelta(days=31, hours=1))
    entry("c@example.com", day + dt.timedelta(hours=2))
    entry("d@example.com", day + dt.timedelta(hours=3),
          purchased_at=day - dt.timedelta(days=1))
    entry("e@example.com", day + dt.timedelta(hours=4),
          purchased_at=day + dt.timedelta(days=30, hours=4))


def test_one_day_counts_people_window_and_purchase_before_entry(one_day):
    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10))

    assert result.totals == ReportRow(
        funnel=None, group=None, entered=5, converted=2, median_hours=5, p90_hours=720
    )
    assert result.totals.rate == pytest.approx(0.4)
    assert row(result, "language") == ReportRow(
        funnel="language", group=None, entered=5, converted=2, median_hours=5, p90_hours=720
    )
    assert row(result, "non_language").entered == 0
    assert row(result, "non_language").rate is None
    # a in day 0; e's purchase at exactly 30 days sits in the last day of the window.
    assert result.histogram[0] == HistogramBin(day=0, converted=1)
    assert result.histogram[29] == HistogramBin(day=29, converted=1)
    assert sum(b.converted for b in result.histogram) == 2
    assert len(result.histogram) == 30


def test_window_is_configurable(one_day):
    # With 31 days b converts too (31 days + 0 h = 744 h); with 1 day only a.
    wide = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10), window_days=31)
    narrow = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10), window_days=1)

    assert (wide.totals.converted, wide.totals.p90_hours) == (3, 744)
    assert (narrow.totals.converted, narrow.totals.median_hours) == (1, 5)
    assert len(narrow.histogram) == 1


def test_one_second_past_the_window_is_not_a_conversion(funnels):
    start = utc(2026, 11, 10, 9)
    entry("edge@example.com", start, purchased_at=start + dt.timedelta(days=2))
    entry("late@example.com", start, purchased_at=start + dt.timedelta(days=2, seconds=1))

    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10), window_days=2)

    assert (result.totals.entered, result.totals.converted) == (2, 1)
    assert result.totals.median_hours == 48
    assert result.histogram == [HistogramBin(0, 0), HistogramBin(1, 1)]


# --- People, not rows ----------------------------------------------------------------


@pytest.fixture
def two_tests_two_purchases(funnels):
    """p took test 101 on 11-10 and test 102 on 11-12; bought on 11-11 (after the first
    entry only: row 2's purchase is the second one, on 11-13)."""
    first = utc(2026, 11, 10, 8)
    second = utc(2026, 11, 12, 8)
    entry("p@example.com", first, test_id=101, purchased_at=utc(2026, 11, 11, 8))
    entry("p@example.com", second, test_id=102, purchased_at=utc(2026, 11, 13, 20))
    # q is in both funnels: one person in each.
    entry("q@example.com", first, funnel="language", test_id=101)
    entry("q@example.com", first, funnel="non_language", test_id=201,
          purchased_at=first + dt.timedelta(hours=2))


def test_person_with_two_tests_counts_once_from_first_entry_and_earliest_purchase(
    two_tests_two_purchases,
):
    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12))

    assert row(result, "language") == ReportRow(
        funnel="language", group=None, entered=2, converted=1, median_hours=24, p90_hours=24
    )
    assert row(result, "non_language") == ReportRow(
        funnel="non_language", group=None, entered=1, converted=1,
        median_hours=2, p90_hours=2,
    )
    assert (result.totals.entered, result.totals.converted) == (3, 2)


def test_first_entry_in_the_period_is_the_one_that_counts(two_tests_two_purchases):
    # From 11-12 only p's second entry is in the period; its purchase is 36 h later.
    result = report(date_from=D(2026, 11, 12), date_to=D(2026, 11, 12), funnel="language")

    assert result.rows == [
        ReportRow(funnel="language", group=None, entered=1, converted=1,
                  median_hours=36, p90_hours=36)
    ]


def test_by_test_counts_each_person_under_the_test_of_their_first_entry(
    two_tests_two_purchases,
):
    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12), group_by="test")

    assert [(r.funnel, r.group, r.entered, r.converted) for r in result.rows] == [
        ("language", "101", 2, 1),
        ("non_language", "201", 1, 1),
    ]
    assert sum(r.entered for r in result.rows) == result.totals.entered


def test_by_test_lists_top_tests_first_and_filter_by_test(funnels):
    day = utc(2026, 11, 10, 9)
    for n in range(3):
        entry(f"five{n}@example.com", day, test_id=5)
    for n in range(2):
        entry(f"seven{n}@example.com", day, test_id=7,
              purchased_at=day + dt.timedelta(hours=n))
        entry(f"nine{n}@example.com", day, test_id=9, funnel="non_language")

    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10), group_by="test")
    only_seven = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10), test_id=7)

    assert [(r.funnel, r.group, r.entered) for r in result.rows] == [
        ("language", "5", 3), ("language", "7", 2), ("non_language", "9", 2),
    ]
    assert only_seven.test_id == 7
    assert (only_seven.totals.entered, only_seven.totals.converted) == (2, 2)
    assert (only_seven.totals.median_hours, only_seven.totals.p90_hours) == (0, 1)


# --- Time zones and periods ----------------------------------------------------------


@pytest.fixture
def moscow_edges(funnels):
    entry("before@example.com", utc(2026, 11, 9, 20, 59, 59))  # 23:59:59 on 11-09
    entry("early@example.com", utc(2026, 11, 9, 21))  # 00:00 on 11-10
    entry("late@example.com", utc(2026, 11, 10, 20, 30))  # 23:30 on 11-10
    entry("midnight@example.com", utc(2026, 11, 10, 21))  # 00:00 on 11-11


def test_a_day_is_a_local_day(moscow_edges):
    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 10))

    assert result.totals.entered == 2


def test_entry_at_2330_local_belongs_to_that_day(moscow_edges):
    result = report(date_from=D(2026, 11, 9), date_to=D(2026, 11, 11), group_by="day")

    assert counts_by_group(result) == {"2026-11-09": 1, "2026-11-10": 2, "2026-11-11": 1}
    # Every day of the period has a row, quiet days included.
    assert counts_by_group(result, "non_language") == {
        "2026-11-09": 0, "2026-11-10": 0, "2026-11-11": 0,
    }


def test_days_across_a_daylight_saving_change():
    berlin = ZoneInfo("Europe/Berlin")
    start = int(dt.datetime(2026, 10, 24, tzinfo=berlin).timestamp())
    end = int(dt.datetime(2026, 10, 27, tzinfo=berlin).timestamp())

    segments = offset_segments(start=start, end=end, zone=berlin)

    assert segments == [(start, 7200), (int(utc(2026, 10, 25, 1).timestamp()), 3600)]


def test_day_grouping_follows_the_offset_of_each_instant(funnels):
    # Berlin leaves summer time at 01:00 UTC on 2026-10-25.
    entry("a@example.com", utc(2026, 10, 24, 21, 30))  # 23:30 CEST, 10-24
    entry("b@example.com", utc(2026, 10, 24, 22, 30))  # 00:30 CEST, 10-25
    entry("c@example.com", utc(2026, 10, 25, 22, 30))  # 23:30 CET, 10-25
    entry("d@example.com", utc(2026, 10, 25, 23, 30))  # 00:30 CET, 10-26

    result = report(
        date_from=D(2026, 10, 24), date_to=D(2026, 10, 26), group_by="day",
        tz="Europe/Berlin",
    )

    assert counts_by_group(result) == {"2026-10-24": 1, "2026-10-25": 2, "2026-10-26": 1}
    assert result.time_zone == "Europe/Berlin"


def test_weeks_start_on_monday_in_local_time(funnels):
    entry("sun@example.com", utc(2026, 11, 1, 7))  # Sunday 10:00
    entry("mon@example.com", utc(2026, 11, 2, 7))  # Monday 10:00
    entry("sunlate@example.com", utc(2026, 11, 8, 20, 30))  # Sunday 23:30
    entry("monearly@example.com", utc(2026, 11, 8, 21, 30))  # Monday 00:30

    result = report(date_from=D(2026, 11, 1), date_to=D(2026, 11, 9), group_by="week")

    assert counts_by_group(result) == {"2026-10-26": 1, "2026-11-02": 2, "2026-11-09": 1}


def test_months_in_local_time(funnels):
    entry("oct@example.com", utc(2026, 10, 31, 20, 30))  # 23:30 on 10-31
    entry("nov@example.com", utc(2026, 10, 31, 21, 30))  # 00:30 on 11-01
    entry("dec@example.com", utc(2026, 12, 1, 6), purchased_at=utc(2026, 12, 1, 9))

    result = report(date_from=D(2026, 10, 1), date_to=D(2026, 12, 31), group_by="month")

    assert counts_by_group(result) == {"2026-10": 1, "2026-11": 1, "2026-12": 1}
    assert row(result, "language", "2026-12").median_hours == 3


def test_previous_period_has_the_same_length_just_before(funnels):
    entry("old1@example.com", utc(2026, 11, 7, 9), purchased_at=utc(2026, 11, 7, 19))
    entry("old2@example.com", utc(2026, 11, 9, 9))
    entry("both@example.com", utc(2026, 11, 8, 9), test_id=1)
    entry("both@example.com", utc(2026, 11, 11, 9), test_id=2)
    entry("now@example.com", utc(2026, 11, 12, 9))
    entry("too_old@example.com", utc(2026, 11, 6, 9))

    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12), group_by="day")

    assert (result.previous_from, result.previous_to) == (D(2026, 11, 7), D(2026, 11, 9))
    assert result.previous_totals == ReportRow(
        funnel=None, group=None, entered=3, converted=1, median_hours=10, p90_hours=10
    )
    assert [r.funnel for r in result.previous_rows] == ["language", "non_language"]
    assert result.previous_rows[0].entered == 3
    assert result.totals.entered == 2


def test_no_data_gives_zeros_and_no_rate(funnels):
    result = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12), group_by="week")

    assert result.totals.entered == 0
    assert result.totals.rate is None
    assert result.totals.median_hours is None
    assert result.previous_totals.rate is None
    assert all(r.entered == 0 for r in result.rows)
    assert [r.group for r in result.rows] == ["2026-11-09"] * 2
    assert sum(b.converted for b in result.histogram) == 0


def test_window_open_from_marks_days_still_within_the_window(funnels, now):
    # now is 2026-11-28 15:30 UTC; 30 days before is 10-29 18:30 Moscow.
    result = report(date_from=D(2026, 10, 1), date_to=D(2026, 11, 28), as_of=now)
    closed = report(date_from=D(2026, 9, 1), date_to=D(2026, 9, 30), as_of=now)

    assert result.window_open_from == D(2026, 10, 29)
    assert closed.window_open_from is None


# --- Validation, percentiles, queries ------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"date_from": D(2026, 11, 2), "date_to": D(2026, 11, 1)}, "after the end date"),
        ({"funnel": "nope"}, "Unknown funnel"),
        ({"window_days": 0}, "window"),
        ({"group_by": "year"}, "Unknown grouping"),
    ],
)
def test_bad_filters_raise_report_error(funnels, kwargs, message, settings):
    settings.LANGUAGE_CODE = "en"  # the messages are matched in English
    arguments = {"date_from": D(2026, 11, 1), "date_to": D(2026, 11, 1), **kwargs}
    with pytest.raises(ReportError, match=message):
        report(**arguments)


def test_nearest_rank_percentiles():
    hours = Counter({1: 1, 2: 1, 3: 1, 10: 1, 50: 1, None: 7})

    assert nearest_rank(hours=hours, percent=50) == 3
    assert nearest_rank(hours=hours, percent=90) == 50
    assert nearest_rank(hours=Counter({4: 2}), percent=50) == 4
    assert nearest_rank(hours=Counter({1: 1, 9: 1}), percent=50) == 1
    assert nearest_rank(hours=Counter({None: 3}), percent=50) is None


def test_a_report_is_three_queries(funnels, one_day, django_assert_num_queries):
    # The funnels, the rollup's state (reports/rollup.py), then the counts for the period
    # and for the previous one, and the control periods (reports/lift.py; the lift's own
    # counts only with a control group, test_lift); however many entries there are.
    with django_assert_num_queries(5):
        report(date_from=D(2026, 11, 1), date_to=D(2026, 11, 30), group_by="day")


def test_a_report_by_test_is_three_queries(funnels, one_day, django_assert_num_queries):
    with django_assert_num_queries(5):
        report(date_from=D(2026, 11, 1), date_to=D(2026, 11, 30), group_by="test")


# --- People with several entries: previous_entered_at -----------------------------------


@pytest.fixture
def reentries(funnels):
    """Per-test re-entry (several entries per person and funnel), made out of time order
    the way late results arrive. Period 2026-11-10..12 (Moscow), previous 11-07..09.
    Purchases as the sync sets them: each entry holds the earliest purchase at or after it.
    - a: 11-05 (before both periods), 11-10 08:00, 11-12 08:00; bought 11-11 08:00, which
      the first two entries hold: counts at 11-10 08:00, 24 h (its previous entry is
      before the period).
    - b: 11-11 03:00 and 05:00, bought 11-11 06:00: counts once at 03:00, 3 h, test 101.
    - c: 11-08 only: the previous period.
    - d: 11-12 12:00 and 11-20 (after the period), never bought.
    - e, non_language: 11-09 12:00 and 11-10 12:00: counts in both periods, in this one
      at 11-10 (its previous entry is before the period).
    """
    bought_a = utc(2026, 11, 11, 8)
    entry("a@example.com", utc(2026, 11, 12, 8), test_id=102)
    entry("a@example.com", utc(2026, 11, 10, 8), test_id=101, purchased_at=bought_a)
    entry("a@example.com", utc(2026, 11, 5, 8), test_id=100, purchased_at=bought_a)
    bought_b = utc(2026, 11, 11, 6)
    entry("b@example.com", utc(2026, 11, 11, 5), test_id=102, purchased_at=bought_b)
    entry("b@example.com", utc(2026, 11, 11, 3), test_id=101, purchased_at=bought_b)
    entry("c@example.com", utc(2026, 11, 8, 8), test_id=100)
    entry("d@example.com", utc(2026, 11, 20, 8), test_id=101)
    entry("d@example.com", utc(2026, 11, 12, 12), test_id=100)
    entry("e@example.com", utc(2026, 11, 10, 12), funnel="non_language", test_id=7)
    entry("e@example.com", utc(2026, 11, 9, 12), funnel="non_language", test_id=8)


def test_previous_entered_at_links_each_persons_entries(reentries):
    stored = {
        (e.email, e.entered_at): e.previous_entered_at
        for e in FunnelEntry.objects.filter(email__in=["a@example.com", "e@example.com"])
    }
    assert stored == {
        ("a@example.com", utc(2026, 11, 5, 8)): None,
        ("a@example.com", utc(2026, 11, 10, 8)): utc(2026, 11, 5, 8),
        ("a@example.com", utc(2026, 11, 12, 8)): utc(2026, 11, 10, 8),
        ("e@example.com", utc(2026, 11, 9, 12)): None,
        ("e@example.com", utc(2026, 11, 10, 12)): utc(2026, 11, 9, 12),
    }


def test_each_person_counts_once_at_their_first_entry_in_the_period(reentries):
    by_funnel = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12))
    assert row(by_funnel, "language") == ReportRow(
        funnel="language", group=None, entered=3, converted=2, median_hours=3, p90_hours=24
    )
    assert row(by_funnel, "non_language").entered == 1
    assert [(r.funnel, r.entered) for r in by_funnel.previous_rows] == [
        ("language", 1), ("non_language", 1)
    ]

    by_day = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12), group_by="day")
    assert counts_by_group(by_day) == {"2026-11-10": 1, "2026-11-11": 1, "2026-11-12": 1}
    assert counts_by_group(by_day, "non_language")["2026-11-10"] == 1

    by_test = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12), group_by="test")
    assert {(r.funnel, r.group): r.entered for r in by_test.rows} == {
        ("language", "101"): 2, ("language", "100"): 1, ("non_language", "7"): 1
    }
    assert by_test.totals == by_funnel.totals


def test_a_test_filter_counts_that_tests_entries(reentries):
    # One entry per person and test, so each is counted, wherever it is in its person's
    # sequence: a's 11-12 entry and b's 05:00 one (1 h to b's purchase).
    filtered = report(date_from=D(2026, 11, 10), date_to=D(2026, 11, 12), test_id=102)
    assert row(filtered, "language") == ReportRow(
        funnel="language", group=None, entered=2, converted=1, median_hours=1, p90_hours=1
    )
