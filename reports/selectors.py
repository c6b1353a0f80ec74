"""The conversion dataset: one selector that every view of the report formats.

Definitions (also on the page, in `report_conversions --help` and in docs/reports.md):

- Cohort: the people who entered a funnel between `date_from` and `date_to` inclusive,
  days being local days in the site time zone (settings.TIME_ZONE).
- People, not rows: a person is a normalised email within a funnel. A person with several
  entries in the period counts once, at their first entry in the period, with their
  earliest purchase at or after an entry (`certificate_purchased_at`, which the sync
  engine sets only for purchases at or after the entry; earlier ones are ignored here too).
- Converted: that purchase came at most `window_days` days after the first entry.
- Rate: converted / entered. Time to purchase in whole hours (rounded down); median and
  90th percentile by nearest rank, so they are exact to the hour.
- Histogram: converted people by day after entry (day 0 = the first 24 hours); the last
  day also holds a purchase at exactly the end of the window.
- Breakdown by test: each person counts under the test of their first entry, so the rows
  add up to the totals.
- Previous period: the same number of days just before `date_from`, by funnel.

How it stays fast: everything is aggregated in the database, one grouped query for the
period and one for the previous period. Each entry stores the entry time of the same
person's previous entry in the funnel (FunnelEntry.previous_entered_at, kept by every
writer), so a person's first entry in the period is the one entry of the period whose
previous entry is missing or before the period: the query counts those entries by
(funnel, group, whole hours to purchase) straight from idx_fe_cohort, without grouping
entries per person, and Python only sees a few thousand rows however many entries there
are. Local days are computed from UTC seconds plus the zone's offset, with the offset
changes (DST) of the period worked out in Python: MariaDB's time zone tables are often
empty, and CONVERT_TZ would then return NULL.

Faster still for the common report (from the test's completion, no test, the site's zone):
the runs keep those counts per local day (funnels/services/report_rollup.py), and the
period's clean days are read from there (reports/rollup.py); only the days changed since
the last run's refresh are counted from the entries, with the same query.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connections, router
from django.utils.translation import gettext as _

from funnels.local_days import (
    DAY_SECONDS,
    HOUR_SECONDS,
    Dialect,
    Sql,
    day_number,
    day_of_number,
    local_day_sql,
    local_midnight,
    local_seconds_sql,
    offset_segments,
    ranges_sql,
)
from funnels.models import Funnel, FunnelEntry
from reports.rollup import RollupView, cohort_rollup_rows, days_follow_midnights, rollup_view

GROUP_BY_FUNNEL = "funnel"
GROUP_BY_TEST = "test"
GROUP_BY_DAY = "day"
GROUP_BY_WEEK = "week"
GROUP_BY_MONTH = "month"
GROUP_BY_CHOICES = (GROUP_BY_FUNNEL, GROUP_BY_TEST, GROUP_BY_DAY, GROUP_BY_WEEK, GROUP_BY_MONTH)
PERIOD_GROUPINGS = (GROUP_BY_DAY, GROUP_BY_WEEK, GROUP_BY_MONTH)

DEFAULT_WINDOW_DAYS = 30
# Where the conversion window starts: the test's completion (entered_at) or the funnel's
# start (funnel_started_at: Brevo's first confirmation, or the run that held the person
# out in a control group). See reports/lift.py.
ORIGIN_COMPLETION = "completion"
ORIGIN_START = "start"
ORIGIN_CHOICES = (ORIGIN_COMPLETION, ORIGIN_START)
MAX_WINDOW_DAYS = 365
# Ten years by day is still a page a browser renders.
MAX_PERIOD_DAYS = 3660



class ReportError(ValueError):
    """The report was asked for with filters that make no sense."""


@dataclass(frozen=True)
class ReportRow:
    """Numbers for one funnel and group (group is None for a whole funnel or the totals;
    funnel is None for totals across funnels)."""

    funnel: str | None
    group: str | None
    entered: int
    converted: int
    median_hours: int | None
    p90_hours: int | None

    @property
    def rate(self) -> float | None:
        if not self.entered:
            return None
        return self.converted / self.entered


@dataclass(frozen=True)
class HistogramBin:
    day: int
    converted: int


@dataclass(frozen=True)
class ConversionReport:
    date_from: dt.date
    date_to: dt.date
    funnel: str | None
    test_id: int | None
    window_days: int
    group_by: str
    time_zone: str
    funnels: list[str]
    rows: list[ReportRow]
    totals: ReportRow
    histogram: list[HistogramBin]
    previous_from: dt.date
    previous_to: dt.date
    previous_rows: list[ReportRow]
    previous_totals: ReportRow
    # Entries on or after this local day have had less than the full window to convert
    # (None when the whole period is older than the window, or no `as_of` was given).
    window_open_from: dt.date | None = None
    # Counted from the test's completion or from the funnel's start, and the control
    # groups' comparison (reports/lift.py).
    origin: str = ORIGIN_COMPLETION
    lift: Any = None
    # People entered per funnel in the period (each counted once, whatever the grouping):
    # the denominator of the opt-out rates.
    entered_by_funnel: dict[str, int] = field(default_factory=dict)
    period_days: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "period_days", (self.date_to - self.date_from).days + 1)


# --- Public selectors --------------------------------------------------------------------


def funnel_names_list() -> list[tuple[str, str]]:
    """(slug, name shown to people) of every funnel, in display order: one small query."""
    from funnels.labels import funnel_name_display

    return [
        (slug, funnel_name_display(name))
        for slug, name in Funnel.objects.order_by("slug").values_list("slug", "name")
    ]


def first_entry_day(*, funnel: str | None = None) -> dt.date | None:
    """The local day of the first entry (of a funnel), for a period that has none: one
    index look-up (idx_fe_entered, or idx_fe_cohort with a funnel)."""
    entries = FunnelEntry.objects.all()
    if funnel:
        entries = entries.filter(funnel_type=funnel)
    first = entries.order_by("entered_at").values_list("entered_at", flat=True).first()
    if first is None:
        return None
    return first.astimezone(zoneinfo.ZoneInfo(settings.TIME_ZONE)).date()


def funnel_slugs_list() -> list[str]:
    """The funnels a report can be asked for, in display order."""
    return list(Funnel.objects.order_by("slug").values_list("slug", flat=True))


def conversion_report(
    *,
    date_from: dt.date,
    date_to: dt.date,
    funnel: str | None = None,
    test_id: int | None = None,
    window_days: int = DEFAULT_WINDOW_DAYS,
    group_by: str = GROUP_BY_FUNNEL,
    tz: dt.tzinfo | str | None = None,
    as_of: dt.datetime | None = None,
    funnel_slugs: Sequence[str] | None = None,
    origin: str = ORIGIN_COMPLETION,
) -> ConversionReport:
    """Build the conversion dataset for [date_from, date_to] (local days, inclusive).

    `funnel_slugs` is the list of known funnels when the caller already has it (it saves
    a query); `as_of` (aware) only marks the days whose window is still open.
    """
    zone = _zone(tz)
    _validate(
        date_from=date_from, date_to=date_to, window_days=window_days, group_by=group_by
    )
    if origin not in ORIGIN_CHOICES:
        raise ReportError(
            _("Unknown origin %(origin)s; use one of: %(choices)s.")
            % {"origin": origin, "choices": ", ".join(ORIGIN_CHOICES)}
        )
    known = list(funnel_slugs) if funnel_slugs is not None else funnel_slugs_list()
    if funnel and funnel not in known:
        raise ReportError(
            _("Unknown funnel %(funnel)s; known funnels: %(known)s.")
            % {"funnel": funnel, "known": ", ".join(known) or "-"}
        )
    funnels = [funnel] if funnel else known

    # The runs' rollup answers the common report (reports/rollup.py): one small query
    # for its state, only when it could serve.
    rollup = (
        rollup_view(zone=zone)
        if funnels and test_id is None and origin == ORIGIN_COMPLETION else None
    )
    started: dict[str, list[int]] = {}
    counts = _cohort_counts(
        date_from=date_from, date_to=date_to, funnels=funnels, test_id=test_id,
        window_days=window_days, group_by=group_by, zone=zone, origin=origin,
        started=started, rollup=rollup,
    )
    rows = _rows(
        counts=counts, funnels=funnels, group_by=group_by,
        date_from=date_from, date_to=date_to,
    )
    all_hours = _merge(counts.values())

    length = (date_to - date_from).days + 1
    previous_to = date_from - dt.timedelta(days=1)
    previous_from = date_from - dt.timedelta(days=length)
    previous_counts = _cohort_counts(
        date_from=previous_from, date_to=previous_to, funnels=funnels, test_id=test_id,
        window_days=window_days, group_by=GROUP_BY_FUNNEL, zone=zone, origin=origin,
        rollup=rollup,
    )
    previous_rows = _rows(
        counts=previous_counts, funnels=funnels, group_by=GROUP_BY_FUNNEL,
        date_from=previous_from, date_to=previous_to,
    )

    window_open_from = _window_open_from(
        as_of=as_of, zone=zone, window_days=window_days, date_from=date_from, date_to=date_to,
    )
    from reports.lift import lift_report  # it builds on this module's SQL helpers

    entered_by_funnel: Counter = Counter()
    for (slug, _group), hours in counts.items():
        entered_by_funnel[slug] += sum(hours.values())

    return ConversionReport(
        entered_by_funnel=dict(entered_by_funnel),
        date_from=date_from,
        date_to=date_to,
        funnel=funnel,
        test_id=test_id,
        window_days=window_days,
        group_by=group_by,
        time_zone=str(zone),
        funnels=funnels,
        rows=rows,
        totals=_row(funnel=None, group=None, hours=all_hours),
        histogram=_histogram(hours=all_hours, window_days=window_days),
        previous_from=previous_from,
        previous_to=previous_to,
        previous_rows=previous_rows,
        previous_totals=_row(
            funnel=None, group=None, hours=_merge(previous_counts.values())
        ),
        window_open_from=window_open_from,
        origin=origin,
        lift=lift_report(
            date_from=date_from, date_to=date_to, funnels=funnels, test_id=test_id,
            window_days=window_days, zone=zone, origin=origin, as_of=as_of,
            window_open=window_open_from is not None,
            rollup=rollup,
            bought_before_start={f: started.get(f, [0, 0])[0] for f in funnels},
            not_started={f: started.get(f, [0, 0])[1] for f in funnels},
        ),
    )


# --- Validation --------------------------------------------------------------------------


def _validate(*, date_from, date_to, window_days, group_by) -> None:
    if date_from > date_to:
        raise ReportError(
            _("The start date %(start)s is after the end date %(end)s.")
            % {"start": date_from.isoformat(), "end": date_to.isoformat()}
        )
    if (date_to - date_from).days + 1 > MAX_PERIOD_DAYS:
        raise ReportError(
            _("The period is longer than %(days)s days.") % {"days": MAX_PERIOD_DAYS}
        )
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise ReportError(
            _("The conversion window must be between 1 and %(max)s days.")
            % {"max": MAX_WINDOW_DAYS}
        )
    if group_by not in GROUP_BY_CHOICES:
        raise ReportError(
            _("Unknown grouping %(group_by)s; use one of: %(choices)s.")
            % {"group_by": group_by, "choices": ", ".join(GROUP_BY_CHOICES)}
        )


def _zone(tz: dt.tzinfo | str | None) -> dt.tzinfo:
    if tz is None:
        return zoneinfo.ZoneInfo(settings.TIME_ZONE)
    if isinstance(tz, str):
        return zoneinfo.ZoneInfo(tz)
    return tz


# --- The grouped query -------------------------------------------------------------------


def _cohort_sql(
    *, dialect: Dialect, table: str, funnels: Sequence[str], test_id: int | None,
    window_days: int, group_by: str, segments: list[tuple[int, int]],
    start_param, end_param, origin: str = ORIGIN_COMPLETION,
    ranges: Sequence[tuple] | None = None,
) -> Sql:
    """People counted by (funnel index, group key, whole hours to purchase or NULL).

    A person's first entry in the period is the entry of the period whose previous entry
    (previous_entered_at) is missing or before the period; everything else comes from that
    entry. Its certificate_purchased_at is already the person's earliest purchase at or
    after any of their entries in the period (the purchase sync gives each entry the
    earliest paid purchase at or after its own entry time, and later entries only see
    later purchases), and its test is the test of their first entry.

    `ranges` ([(from, to)] of entered_at within the period): count only those parts of it
    (the days the rollup cannot answer yet); people are still counted at their first entry
    of the whole period, [start_param, end_param).
    """
    # Counted from the funnel's start, a purchase before it (or with no start) is none;
    # the lift's query counts those as "bought before the funnel started".
    since = "entered_at" if origin == ORIGIN_COMPLETION else "funnel_started_at"
    purchased = dialect.epoch(
        f"CASE WHEN certificate_purchased_at >= entered_at "
        f"AND certificate_purchased_at >= {since} THEN certificate_purchased_at END"
    )
    started = dialect.epoch(since)

    funnel_index = Sql(
        "CASE funnel_type " + " ".join(["WHEN %s THEN %s"] * len(funnels)) + " END",
        [value for i, slug in enumerate(funnels) for value in (slug, i)],
    )

    if group_by == GROUP_BY_FUNNEL:
        group = Sql("0")
    elif group_by == GROUP_BY_TEST:
        group = Sql("COALESCE(test_id, 0)")
    else:
        day = local_day_sql(dialect=dialect, column="entered_at", segments=segments)
        if group_by == GROUP_BY_DAY:
            group = day
        elif group_by == GROUP_BY_WEEK:
            # Day 0 (1970-01-01) was a Thursday: +3 makes weeks start on Monday.
            group = Sql(dialect.div(day.text + " + 3", 7), day.params)
        else:
            local = local_seconds_sql(dialect=dialect, column="entered_at", segments=segments)
            group = Sql(dialect.year_month(local.text), local.params)

    # NULL without a purchase: NULL - x is NULL, and so is the CASE.
    elapsed = f"({purchased} - {started})"
    hours = Sql(
        f"CASE WHEN {elapsed} <= %s THEN {dialect.div(elapsed, HOUR_SECONDS)} END",
        [window_days * DAY_SECONDS],
    )

    where = Sql(
        "funnel_type IN (" + ", ".join(["%s"] * len(funnels)) + ")", list(funnels)
    ) + _entered_in(start_param=start_param, end_param=end_param, ranges=ranges)
    if test_id is None:
        where += Sql(
            " AND (previous_entered_at IS NULL OR previous_entered_at < %s)", [start_param]
        )
    else:
        # A person has at most one entry per test in a funnel (uk_funnel_entry_email_type_
        # test), so among one test's entries each is its person's first.
        where += Sql(" AND test_id = %s", [test_id])

    # Control groups (reports/lift.py): bought between the test and the funnel's start,
    # and no start at all; sums, so they add no rows, read from the same index.
    started = (
        "SUM(CASE WHEN funnel_started_at IS NOT NULL AND certificate_purchased_at >= "
        "entered_at AND certificate_purchased_at < funnel_started_at THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN funnel_started_at IS NULL THEN 1 ELSE 0 END)"
    )
    return (
        "SELECT " + funnel_index + " AS funnel_index, " + group + " AS group_key, "
        + hours + f" AS hours, COUNT(*), {started} FROM {table} WHERE " + where
        + " GROUP BY funnel_index, group_key, hours"
    )


def _entered_in(*, start_param, end_param, ranges: Sequence[tuple] | None) -> Sql:
    if ranges is None:
        return Sql(" AND entered_at >= %s AND entered_at < %s", [start_param, end_param])
    return " AND " + ranges_sql(column="entered_at", ranges=ranges)


Counts = dict[tuple[str, int], Counter]


def rollup_serves(
    *, rollup: RollupView | None, test_id: int | None, origin: str, group_by: str,
    date_from: dt.date, date_to: dt.date, zone: dt.tzinfo,
) -> bool:
    """Whether the rollup (reports/rollup.py) can answer this cohort exactly."""
    return (
        rollup is not None and test_id is None and origin == ORIGIN_COMPLETION
        and group_by != GROUP_BY_TEST
        and days_follow_midnights(date_from=date_from, date_to=date_to, zone=zone)
    )


def _cohort_counts(
    *, date_from, date_to, funnels, test_id, window_days, group_by, zone,
    origin=ORIGIN_COMPLETION, started: dict[str, list[int]] | None = None,
    rollup: RollupView | None = None,
) -> Counts:
    """{(funnel, group key): Counter({whole hours to purchase or None: people})}; with
    `started`, also {funnel: [bought before the funnel started, funnel not started]}.

    With a `rollup` that serves the request, its clean days come from the rollup (one
    query on a few rows per day) and only its dirty days from the entries."""
    if not funnels:
        return {}
    counts: Counts = defaultdict(Counter)
    ranges = None
    if rollup_serves(rollup=rollup, test_id=test_id, origin=origin, group_by=group_by,
                     date_from=date_from, date_to=date_to, zone=zone):
        rows = cohort_rollup_rows(
            date_from=date_from, date_to=date_to, funnels=funnels, window_days=window_days,
            group_by=group_by, dirty=rollup.dirty_in(date_from=date_from, date_to=date_to),
        )
        _counts_add(rows=rows, counts=counts, funnels=funnels, started=started)
        ranges = rollup.dirty_ranges(date_from=date_from, date_to=date_to, zone=zone)
        if not ranges:
            return counts
    start = local_midnight(day=date_from, zone=zone)
    end = local_midnight(day=date_to + dt.timedelta(days=1), zone=zone)
    start_seconds = int(start.timestamp())
    connection = connections[router.db_for_read(FunnelEntry)]
    adapt = connection.ops.adapt_datetimefield_value
    if ranges is not None:
        ranges = [(adapt(a), adapt(b)) for a, b in ranges]
    sql = _cohort_sql(
        dialect=Dialect(connection.vendor),
        table=connection.ops.quote_name(FunnelEntry._meta.db_table),
        funnels=funnels,
        test_id=test_id,
        window_days=window_days,
        group_by=group_by,
        segments=offset_segments(
            start=start_seconds, end=int(end.timestamp()), zone=zone
        ),
        start_param=adapt(start),
        end_param=adapt(end),
        origin=origin,
        ranges=ranges,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql.text, sql.params)
        _counts_add(rows=cursor.fetchall(), counts=counts, funnels=funnels, started=started)
    return counts


def _counts_add(*, rows, counts: Counts, funnels, started) -> None:
    for funnel_index, group, hours, people, before, never in rows:
        key = (funnels[int(funnel_index)], int(group))
        counts[key][None if hours is None else int(hours)] += int(people)
        if started is not None:
            numbers = started.setdefault(key[0], [0, 0])
            numbers[0] += int(before or 0)
            numbers[1] += int(never or 0)


# --- From counts to rows -----------------------------------------------------------------


def _merge(counters: Iterable[Counter]) -> Counter:
    merged: Counter = Counter()
    for counter in counters:
        merged.update(counter)
    return merged


def nearest_rank(*, hours: Counter, percent: int) -> int | None:
    """The percentile of whole hours to purchase by nearest rank (None key = no purchase)."""
    values = sorted((h, n) for h, n in hours.items() if h is not None and n)
    total = sum(n for _, n in values)
    if not total:
        return None
    rank = -(-percent * total // 100)  # ceil without floats
    seen = 0
    for value, n in values:
        seen += n
        if seen >= rank:
            return value
    return values[-1][0]


def _row(*, funnel: str | None, group: str | None, hours: Counter) -> ReportRow:
    return ReportRow(
        funnel=funnel,
        group=group,
        entered=sum(hours.values()),
        converted=sum(n for h, n in hours.items() if h is not None),
        median_hours=nearest_rank(hours=hours, percent=50),
        p90_hours=nearest_rank(hours=hours, percent=90),
    )


def _histogram(*, hours: Counter, window_days: int) -> list[HistogramBin]:
    days = Counter()
    for h, n in hours.items():
        if h is not None:
            days[min(h // 24, window_days - 1)] += n
    return [HistogramBin(day=d, converted=days[d]) for d in range(window_days)]


def _period_keys(*, group_by: str, date_from: dt.date, date_to: dt.date) -> list[int]:
    """Every group key of the period, so a quiet day shows as a zero, not a gap."""
    first, last = day_number(day=date_from), day_number(day=date_to)
    if group_by == GROUP_BY_DAY:
        return list(range(first, last + 1))
    if group_by == GROUP_BY_WEEK:
        return list(range((first + 3) // 7, (last + 3) // 7 + 1))
    keys = []
    year, month = date_from.year, date_from.month
    while (year, month) <= (date_to.year, date_to.month):
        keys.append(year * 100 + month)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return keys


def group_label(*, group_by: str, key: int) -> str | None:
    """The machine-readable group: a date, a week's Monday, YYYY-MM or a test id."""
    if group_by == GROUP_BY_FUNNEL:
        return None
    if group_by == GROUP_BY_TEST:
        return str(key)
    if group_by == GROUP_BY_DAY:
        return day_of_number(key).isoformat()
    if group_by == GROUP_BY_WEEK:
        return day_of_number(key * 7 - 3).isoformat()
    return f"{key // 100:04d}-{key % 100:02d}"


def _rows(*, counts, funnels, group_by, date_from, date_to) -> list[ReportRow]:
    if group_by == GROUP_BY_FUNNEL:
        return [
            _row(funnel=f, group=None, hours=counts.get((f, 0), Counter())) for f in funnels
        ]
    if group_by == GROUP_BY_TEST:
        rows = [
            _row(funnel=f, group=group_label(group_by=group_by, key=key), hours=hours)
            for (f, key), hours in counts.items()
        ]
        # Top tests first; ties in a stable, readable order.
        rows.sort(key=lambda r: (-r.entered, r.funnel, int(r.group)))
        return rows
    keys = _period_keys(group_by=group_by, date_from=date_from, date_to=date_to)
    return [
        _row(
            funnel=f,
            group=group_label(group_by=group_by, key=key),
            hours=counts.get((f, key), Counter()),
        )
        for f in funnels
        for key in keys
    ]


def _window_open_from(*, as_of, zone, window_days, date_from, date_to) -> dt.date | None:
    if as_of is None:
        return None
    # An entry made after (as_of - window) has not had the whole window yet.
    open_from = (as_of - dt.timedelta(days=window_days)).astimezone(zone).date()
    if open_from > date_to:
        return None
    return max(open_from, date_from)


# --- Opt-outs beside the conversions (what the Brevo audit read) ------------------------


@dataclass(frozen=True)
class OptOutRow:
    """People of a funnel who entered in the period, and how many of them the last Brevo
    audit found unsubscribed from the funnel's list or blacklisted: reach a funnel costs,
    which the conversions do not show."""

    funnel: str
    entered: int
    unsubscribed: int
    blacklisted: int

    @property
    def rate(self) -> float | None:
        if not self.entered:
            return None
        return (self.unsubscribed + self.blacklisted) / self.entered


def opt_out_counts(*, report: ConversionReport) -> list[OptOutRow]:
    """The report's entrants per funnel, and how many of them the last audit found opted
    out. One query over the opted-out rows only (idx_fe_brevo: funnel, state, email), a
    few among a million; the entrants come from the report itself: counting them again
    with COUNT(DISTINCT email) over a year of entries took seconds."""
    from django.db.models import Count

    from funnels.models import OPTED_OUT_STATES, BrevoState

    zone = _zone(report.time_zone)
    start = local_midnight(day=report.date_from, zone=zone)
    end = local_midnight(day=report.date_to + dt.timedelta(days=1), zone=zone)
    rows = FunnelEntry.objects.filter(
        funnel_type__in=list(report.funnels), brevo_state__in=list(OPTED_OUT_STATES),
        entered_at__gte=start, entered_at__lt=end,
    )
    if report.test_id is not None:
        rows = rows.filter(test_id=report.test_id)
    by_funnel: dict[str, Counter] = defaultdict(Counter)
    for row in (rows.values("funnel_type", "brevo_state")
                .annotate(people=Count("email", distinct=True)).order_by()):
        by_funnel[row["funnel_type"]][row["brevo_state"]] += row["people"]
    return [
        OptOutRow(
            funnel=slug,
            entered=report.entered_by_funnel.get(slug, 0),
            unsubscribed=by_funnel[slug][BrevoState.UNSUBSCRIBED],
            blacklisted=by_funnel[slug][BrevoState.BLACKLISTED],
        )
        for slug in report.funnels
    ]
