"""The conversion report read from the runs' rollup (funnels/services/report_rollup.py).

The rollup counts entries by funnel, local day of entry (D), local day of the person's
previous entry (P), control period and group, whole hours h from entry to a purchase at or
after it within 365 days (NULL otherwise), whether that purchase came a whole number of
days after entry, and phase. Each condition of the report's queries on entries is a
condition on those columns, exactly:

- entered_at in [midnight of date_from, midnight after date_to) <=> date_from <= D <= date_to,
  and previous_entered_at < midnight of date_from <=> P < date_from, as long as the local
  date never goes back and every day starts at its midnight (`days_follow_midnights`: true
  for every zone whose clock changes do not cross midnight; otherwise the entries are read);
- elapsed <= window * 86400 s <=> h < 24 * window, or h = 24 * window and a whole number of
  days (elapsed = 3600 h + r with 0 <= r < 3600);
- the lift's day after entry = elapsed // 86400 = h // 24;
- "bought before the funnel started" and "not started" are the phase.

It serves the common report only: counted from the test's completion, no test filter or
grouping (a test is not a rollup column), in the site's time zone. A day marked dirty (an
entry of it changed since the last refresh) is counted from the entries, with the same SQL
as without a rollup, so the report is exact at any moment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connections, router

from funnels.local_days import (
    DAY_SECONDS,
    Dialect,
    Sql,
    day_number,
    day_ranges,
    local_midnight,
    offset_segments,
)
from funnels.models import ReportRollup, ReportRollupDirty, ReportRollupState


@dataclass(frozen=True)
class RollupView:
    """A built rollup in the report's zone, and its dirty days (numbered from 1970-01-01)."""

    dirty: frozenset[int]

    def dirty_ranges(
        self, *, date_from: dt.date, date_to: dt.date, zone: dt.tzinfo
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """The period's dirty days as ranges of entered_at (consecutive days merged)."""
        return day_ranges(days=self.dirty_in(date_from=date_from, date_to=date_to), zone=zone)

    def dirty_in(self, *, date_from: dt.date, date_to: dt.date) -> list[int]:
        first, last = day_number(day=date_from), day_number(day=date_to)
        return sorted(d for d in self.dirty if first <= d <= last)


def rollup_view(*, zone: dt.tzinfo) -> RollupView | None:
    """One query: the rollup's zone and dirty days. None when there is no rollup, or it
    counts days of another zone than the report's."""
    if str(zone) != settings.TIME_ZONE:
        return None
    connection = connections[router.db_for_read(ReportRollupState)]
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT s.{q('time_zone')}, d.{q('day')} "
            f"FROM {q(ReportRollupState._meta.db_table)} s "
            f"LEFT JOIN {q(ReportRollupDirty._meta.db_table)} d ON 1 = 1"
        )
        rows = cursor.fetchall()
    if not rows or rows[0][0] != settings.TIME_ZONE:
        return None
    return RollupView(dirty=frozenset(int(day) for _zone, day in rows if day is not None))


def days_follow_midnights(*, date_from: dt.date, date_to: dt.date, zone: dt.tzinfo) -> bool:
    """Whether, from two days before the period to its end, every clock change keeps the
    local date moving forward and each day starting at its local_midnight: then an instant
    is at or after the midnight of day X exactly when its local date is X or later."""
    start = int(local_midnight(day=date_from - dt.timedelta(days=2), zone=zone).timestamp())
    end = int(local_midnight(day=date_to + dt.timedelta(days=1), zone=zone).timestamp())
    segments = offset_segments(start=start, end=end, zone=zone)
    for (_, before), (at, after) in zip(segments, segments[1:]):
        day_before = (at - 1 + before) // DAY_SECONDS
        day_after = (at + after) // DAY_SECONDS
        if day_before == day_after:
            continue
        # A jump forward that starts exactly at midnight: that day starts at the jump,
        # which is what local_midnight returns for the missing midnight.
        if after > before and day_after == day_before + 1 and (at + before) % DAY_SECONDS == 0:
            continue
        return False
    return True


def _group_sql(*, dialect: Dialect, group_by: str, date_from: dt.date, date_to: dt.date) -> Sql:
    """The report's group key (reports.selectors._cohort_sql) from the day number."""
    if group_by == "funnel":
        return Sql("0")
    if group_by == "day":
        return Sql("day")
    if group_by == "week":
        # Day 0 (1970-01-01) was a Thursday: +3 makes weeks start on Monday.
        return Sql(dialect.div("day + 3", 7))
    if group_by == "month":
        # YYYYMM: one WHEN per month of the period (at most 121).
        whens, params = [], []
        year, month = date_from.year, date_from.month
        while (year, month) <= (date_to.year, date_to.month):
            following = (year + 1, 1) if month == 12 else (year, month + 1)
            whens.append("WHEN day < %s THEN %s")
            params += [day_number(day=dt.date(*following, 1)), year * 100 + month]
            year, month = following
        return Sql("CASE " + " ".join(whens) + " END", params)
    raise ValueError(f"the rollup has no grouping by {group_by}")


def _within_window(window_days: int) -> Sql:
    """A purchase within the window: elapsed <= window ⇔ whole hours below the window's,
    or equal to them with no part of an hour over (whole_day)."""
    return Sql(
        "hours < %s OR (hours = %s AND whole_day = 1)", [window_days * 24, window_days * 24]
    )


def _window_hours(window_days: int) -> Sql:
    """Whole hours to a purchase within the window, else NULL."""
    return "CASE WHEN " + _within_window(window_days) + " THEN hours END"


def _where(*, date_from: dt.date, date_to: dt.date, dirty: Sequence[int]) -> Sql:
    """The period's clean days, each person at their first entry in it (P < date_from)."""
    where = Sql(
        " AND day >= %s AND day <= %s AND (previous_day IS NULL OR previous_day < %s)",
        [day_number(day=date_from), day_number(day=date_to), day_number(day=date_from)],
    )
    if dirty:
        where += Sql(" AND day NOT IN (" + ", ".join(["%s"] * len(dirty)) + ")", list(dirty))
    return where


def cohort_rollup_rows(
    *, date_from: dt.date, date_to: dt.date, funnels: Sequence[str], window_days: int,
    group_by: str, dirty: Sequence[int],
) -> list[tuple]:
    """(funnel index, group key, whole hours or None, people, bought before the start,
    not started) for the period's clean days: the rows the report's cohort query gives."""
    connection = connections[router.db_for_read(ReportRollup)]
    dialect = Dialect(connection.vendor)
    funnel_index = Sql(
        "CASE funnel_type " + " ".join(["WHEN %s THEN %s"] * len(funnels)) + " END",
        [value for i, slug in enumerate(funnels) for value in (slug, i)],
    )
    sql = (
        "SELECT " + funnel_index + " AS funnel_index, "
        + _group_sql(dialect=dialect, group_by=group_by, date_from=date_from, date_to=date_to)
        + " AS group_key, " + _window_hours(window_days) + " AS window_hours, SUM(entries), "
        "SUM(CASE WHEN phase = 1 THEN entries ELSE 0 END), "
        "SUM(CASE WHEN phase = 2 THEN entries ELSE 0 END) "
        f"FROM {connection.ops.quote_name(ReportRollup._meta.db_table)} WHERE "
        + Sql("funnel_type IN (" + ", ".join(["%s"] * len(funnels)) + ")", list(funnels))
        + _where(date_from=date_from, date_to=date_to, dirty=dirty)
        + " GROUP BY funnel_index, group_key, window_hours"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql.text, sql.params)
        return cursor.fetchall()


def lift_rollup_rows(
    *, periods: Sequence[tuple[str, int]], date_from: dt.date, date_to: dt.date,
    window_days: int, dirty: Sequence[int],
) -> list[tuple]:
    """(funnel, period, group, day after entry or None, phase, people) for the period's
    clean days: the rows of reports.lift's query counted from the test's completion."""
    connection = connections[router.db_for_read(ReportRollup)]
    dialect = Dialect(connection.vendor)
    # The day after entry: h // 24 of a purchase within the window.
    day = "CASE WHEN " + _within_window(window_days) + f" THEN {dialect.div('hours', 24)} END"
    sql = (
        "SELECT funnel_type, control_period, experiment_group, " + day + " AS day_after, "
        "phase, SUM(entries) "
        f"FROM {connection.ops.quote_name(ReportRollup._meta.db_table)} WHERE "
        + Sql(
            "(" + " OR ".join(["(funnel_type = %s AND control_period = %s)"] * len(periods))
            + ")",
            [value for pair in periods for value in pair],
        )
        + _where(date_from=date_from, date_to=date_to, dirty=dirty)
        + " GROUP BY funnel_type, control_period, experiment_group, day_after, phase"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql.text, sql.params)
        return cursor.fetchall()
