"""The conversion report's rollup: entries counted per local day, kept by the runs.

The report over a year of a million entries read every entry of the year twice (the
period and the lift) and a third of them again (the previous period): over its 1 s target.
`report_rollup` holds the same entries counted by every column the common report reads
(funnel, local day of entry, local day of the person's previous entry, control period and
group, whole hours to purchase, whether that was a whole number of days, funnel phase), so
the report reads a few hundred thousand small rows instead (reports/rollup.py).

It stays exact because every writer of a column it counts (entered_at,
previous_entered_at, certificate_purchased_at, funnel_started_at, control_period,
experiment_group, funnel_type; creation) marks the entry's local day dirty in the same
transaction (`report_days_dirty_mark`), and the report counts dirty days from the entries
themselves. Each live run refreshes the dirty days at its end (`report_rollup_refresh`), so
between runs the report reads the rollup only. Entries are never deleted or moved in time.

Nothing here knows the report's definitions beyond those columns: the report derives its
window, histogram day and groups from them (docs/reports.md, "How it stays fast").
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import Max, Min
from django.utils import timezone

from funnels.local_days import (
    DAY_SECONDS,
    HOUR_SECONDS,
    Dialect,
    Sql,
    day_number,
    day_ranges,
    local_day_sql,
    offset_segments,
    ranges_sql,
)
from funnels.models import FunnelEntry, ReportRollup, ReportRollupDirty, ReportRollupState

# The longest conversion window a report can ask for (reports.selectors.MAX_WINDOW_DAYS):
# a purchase later than that never counts, so its hours are not kept.
MAX_WINDOW_DAYS = 365
# Beyond this many dirty days one pass over the whole table is cheaper than one range per
# day (the backfill's first confirmations touch every day of the year).
FULL_REBUILD_DAYS = 60
# The recount's in-memory grouping on MariaDB (see _recount).
_GROUPING_MEMORY = 64 * 1024 * 1024
# Rollup phases (reports/lift.py's).
PHASE_AFTER_OR_NONE = 0
PHASE_BEFORE_START = 1
PHASE_NOT_STARTED = 2


@dataclass(frozen=True)
class RefreshResult:
    full: bool = False
    days: int = 0  # local days recounted (0 on a full rebuild)
    rows: int = 0  # rollup rows after a full rebuild (0 after a refresh of some days)


def site_zone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def local_day_number(*, at: dt.datetime, zone: dt.tzinfo) -> int:
    """The local day of an instant, numbered as the rollup's (the same day the SQL gives:
    the offset at the instant, whole seconds)."""
    return day_number(day=at.astimezone(zone).date())


def report_days_dirty_mark(*, times: Iterable[dt.datetime | None]) -> None:
    """Mark the local days of these entry times (entered_at of the entries a writer
    changed) dirty: one INSERT of a few rows, ignoring days already marked. Call in the
    writer's transaction, so the change and the mark commit together."""
    zone = site_zone()
    days = sorted({local_day_number(at=t, zone=zone) for t in times if t is not None})
    if days:
        ReportRollupDirty.objects.bulk_create(
            [ReportRollupDirty(day=d) for d in days], ignore_conflicts=True
        )


def report_rollup_refresh(*, rebuild: bool = False) -> RefreshResult:
    """Recount the dirty days (or, with `rebuild`, everything). A rollup never built is
    built whole: a new install's first live run builds it on a table still small (the
    migration builds it where entries already exist); without that the report would count
    from the entries forever. A rollup built in another time zone than the site's is
    rebuilt."""
    zone_name = settings.TIME_ZONE
    with transaction.atomic():
        # Serialises refreshes. Only the marks read here are cleared: a writer marking a
        # day already marked waits on that row's lock and marks it again after our
        # delete; a day marked after our read keeps its mark (under READ COMMITTED our
        # recount may not have seen that change).
        state = ReportRollupState.objects.select_for_update().filter(pk=1).first()
        dirty = list(
            ReportRollupDirty.objects.select_for_update().values_list("day", flat=True)
        )
        full = rebuild or state is None or state.time_zone != zone_name \
            or len(dirty) > FULL_REBUILD_DAYS
        if not full and not dirty:
            return RefreshResult()
        zone = zoneinfo.ZoneInfo(zone_name)
        if full:
            ReportRollup.objects.all().delete()
            _recount(zone=zone, days=None)
            # Marks pile up while no rollup is built (a day each): in chunks, for SQLite's
            # limit on parameters.
            for start in range(0, len(dirty), 500):
                ReportRollupDirty.objects.filter(day__in=dirty[start:start + 500]).delete()
            ReportRollupState.objects.update_or_create(
                pk=1, defaults={"time_zone": zone_name, "built_at": timezone.now()}
            )
        else:
            ReportRollup.objects.filter(day__in=dirty).delete()
            _recount(zone=zone, days=dirty)
            ReportRollupDirty.objects.filter(day__in=dirty).delete()
        return RefreshResult(
            full=full, days=0 if full else len(dirty),
            # Counted after a rebuild only: a run's refresh need not read the table.
            rows=ReportRollup.objects.count() if full else 0,
        )


def _recount(*, zone: dt.tzinfo, days: list[int] | None) -> None:
    """INSERT ... SELECT the counts of `days` (None: every entry) from funnel_entries."""
    span = FunnelEntry.objects.aggregate(low=Min("entered_at"), high=Max("entered_at"))
    if span["low"] is None:
        return
    connection = connections[router.db_for_write(ReportRollup)]
    dialect = Dialect(connection.vendor)
    adapt = connection.ops.adapt_datetimefield_value
    q = connection.ops.quote_name
    # previous_entered_at is another entry's entered_at: the table's span covers it.
    segments = offset_segments(
        start=int(span["low"].timestamp()), end=int(span["high"].timestamp()) + 1, zone=zone
    )

    def local_day(column: str) -> Sql:
        return local_day_sql(dialect=dialect, column=column, segments=segments)

    bought = "certificate_purchased_at >= entered_at"
    elapsed = f"({dialect.epoch('certificate_purchased_at')} - {dialect.epoch('entered_at')})"
    in_reach = f"{bought} AND {elapsed} <= %s"
    where = Sql("1 = 1")
    if days is not None:
        where = ranges_sql(column="entered_at", ranges=[
            (adapt(start), adapt(end)) for start, end in day_ranges(days=days, zone=zone)
        ])
    inner = (
        "SELECT funnel_type AS r_funnel, " + local_day("entered_at") + " AS r_day, "
        "CASE WHEN previous_entered_at IS NULL THEN NULL ELSE "
        + local_day("previous_entered_at") + " END AS r_previous, "
        "control_period AS r_period, experiment_group AS r_group, "
        + Sql(f"CASE WHEN {in_reach} THEN {dialect.div(elapsed, HOUR_SECONDS)} END AS r_hours, ",
               [MAX_WINDOW_DAYS * DAY_SECONDS])
        + Sql(f"CASE WHEN {in_reach} AND {elapsed} %% {DAY_SECONDS} = 0 THEN 1 ELSE 0 END"
               " AS r_whole, ", [MAX_WINDOW_DAYS * DAY_SECONDS])
        + Sql("CASE WHEN funnel_started_at IS NULL THEN %s "
               f"WHEN {bought} AND certificate_purchased_at < funnel_started_at THEN %s "
               "ELSE %s END AS r_phase",
               [PHASE_NOT_STARTED, PHASE_BEFORE_START, PHASE_AFTER_OR_NONE])
        + f" FROM {q(FunnelEntry._meta.db_table)} WHERE " + where
    )
    columns = ", ".join(q(ReportRollup._meta.get_field(name).column) for name in (
        "funnel_type", "day", "previous_day", "control_period", "experiment_group", "hours",
        "whole_day", "phase", "entries",
    ))
    keys = "r_funnel, r_day, r_previous, r_period, r_group, r_hours, r_whole, r_phase"
    sql = (
        f"INSERT INTO {q(ReportRollup._meta.db_table)} ({columns}) "
        f"SELECT {keys}, COUNT(*) FROM (" + inner + f") counted GROUP BY {keys}"
    )
    with connection.cursor() as cursor:
        if connection.vendor != "mysql":
            cursor.execute(sql.text, sql.params)
            return
        # MariaDB groups in an in-memory temporary table up to 16 MiB by default, then
        # copies it to disk: a year of a million entries (75,000 groups) took 6 s that
        # way and 2 s with the table in memory. Raised for this statement only.
        cursor.execute("SELECT @@SESSION.tmp_table_size, @@SESSION.max_heap_table_size")
        before = cursor.fetchone()
        cursor.execute(
            "SET SESSION tmp_table_size = GREATEST(@@SESSION.tmp_table_size, %s), "
            "max_heap_table_size = GREATEST(@@SESSION.max_heap_table_size, %s)",
            [_GROUPING_MEMORY, _GROUPING_MEMORY],
        )
        try:
            cursor.execute(sql.text, sql.params)
        finally:
            cursor.execute(
                "SET SESSION tmp_table_size = %s, max_heap_table_size = %s", list(before)
            )
