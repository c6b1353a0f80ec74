"""Does the funnel sell? Treatment against control, per funnel and control period.

The cohort is the conversion report's: people (an email in a funnel) whose first entry of
the report's period falls in it, days being local days. Each person is in the group and
the control period their entry records (funnels/services/control_groups.py); groups are
compared only within one period, because a period is one share, one experiment.

Converted: a purchase within the window, counted from the test's completion (the default,
as the rest of the report) or from the funnel's start (when Brevo first confirmed the
contact, or when the run held the person out). Counting from the completion is the
unbiased comparison, since both groups are treated alike until the funnel starts; the
people who "bought before the funnel started" are shown as their own number either way,
and they are in the entered counts of both groups (an assignment cannot depend on them).
People whose funnel never started (a contact Brevo never confirmed, an entry adopted from
the earlier tool) stay in their group (intent to treat); counted from the start they
cannot convert.

The counts come from ONE grouped query on idx_fe_lift, over the periods with a control
share only (none at all without a control group): people counted by (funnel, period,
group, day of purchase after the origin within the window or NULL, phase), a few hundred
rows whatever the number of entries; Python only adds them up. The cohort's "bought before
the funnel started" comes from the report's own cohort query (two sums, same index pass).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import connections, router

from funnels.local_days import DAY_SECONDS, Dialect, Sql, local_midnight
from funnels.models import ControlPeriod, ExperimentGroup, FunnelEntry
from reports.rollup import RollupView, lift_rollup_rows
from reports.selectors import ORIGIN_CHOICES, ORIGIN_COMPLETION, _entered_in, rollup_serves
from reports.stats import (
    Difference,
    SampleRatio,
    newcombe_interval,
    people_needed,
    sample_ratio_check,
)

# The lift the "how long until we know" estimate is for, in absolute terms (2 points).
DETECTABLE_LIFT = 0.02

# Phases of a person's purchase against their funnel's start.
_AFTER_OR_NONE = 0  # no purchase, or one at or after the start
_BEFORE_START = 1  # bought between the test's completion and the funnel's start
_NOT_STARTED = 2  # the funnel never started for them (funnel_started_at is NULL)

# Why the lift cannot be read yet.
NOT_ENOUGH_NO_CONTROL = "no_control"
NOT_ENOUGH_WINDOW_OPEN = "window_open"
NOT_ENOUGH_SPANS_ZERO = "spans_zero"


@dataclass(frozen=True)
class GroupNumbers:
    entered: int
    converted: int
    bought_before_start: int
    not_started: int
    # Converted people by day after the origin (0 = the first 24 hours).
    by_day: tuple[int, ...]

    @property
    def rate(self) -> float | None:
        return self.converted / self.entered if self.entered else None

    def cumulative(self) -> list[int]:
        total, out = 0, []
        for n in self.by_day:
            total += n
            out.append(total)
        return out


@dataclass(frozen=True)
class CurvePoint:
    day: int
    treatment_converted: int
    treatment_rate: float | None
    control_converted: int
    control_rate: float | None


@dataclass(frozen=True)
class LiftRow:
    funnel: str
    period: int
    share: int  # percent held out in this period
    period_started_at: dt.datetime | None
    treatment: GroupNumbers
    control: GroupNumbers
    difference: Difference | None  # treatment - control, fractions
    sample_ratio: SampleRatio | None
    not_enough: tuple[str, ...]
    people_needed: int | None  # in total, for DETECTABLE_LIFT at this share
    days_more: int | None  # at the cohort's daily volume; 0: already enough people
    curve: list[CurvePoint] = field(default_factory=list)

    @property
    def lift_points(self) -> float | None:
        return None if self.difference is None else self.difference.difference * 100

    @property
    def relative_lift(self) -> float | None:
        if self.difference is None or not self.difference.p2:
            return None
        return self.difference.difference / self.difference.p2

    @property
    def incremental_purchases(self) -> float | None:
        """Purchases the treated made that they would not have made without the emails."""
        if self.difference is None:
            return None
        return self.difference.difference * self.treatment.entered

    @property
    def srm_warning(self) -> bool:
        return self.sample_ratio is not None and self.sample_ratio.mismatch


@dataclass(frozen=True)
class LiftReport:
    origin: str
    window_days: int
    rows: list[LiftRow]
    # Per funnel over the whole cohort (every period, both groups): bought after the
    # test but before their funnel started, and whose funnel never started.
    bought_before_start: dict[str, int]
    not_started: dict[str, int]


def lift_report(
    *,
    date_from: dt.date,
    date_to: dt.date,
    funnels: Sequence[str],
    test_id: int | None,
    window_days: int,
    zone: dt.tzinfo,
    origin: str = ORIGIN_COMPLETION,
    as_of: dt.datetime | None = None,
    window_open: bool = False,
    bought_before_start: dict[str, int] | None = None,
    not_started: dict[str, int] | None = None,
    rollup: RollupView | None = None,
) -> LiftReport:
    """The lift of every period with a control share in the report's cohort.
    `bought_before_start` and `not_started` (by funnel, for the whole cohort) come from
    the report's own cohort query, which reads them from the same index pass."""
    if origin not in ORIGIN_CHOICES:
        raise ValueError(f"unknown origin {origin!r}")
    start = local_midnight(day=date_from, zone=zone)
    end = local_midnight(day=date_to + dt.timedelta(days=1), zone=zone)
    periods = _periods(funnels=funnels)
    compared = sorted(key for key, (share, _started) in periods.items() if share > 0)
    # Without a control group there is nothing to compare: no second pass over entries.
    counts = _lift_counts(
        periods=compared, test_id=test_id, window_days=window_days, origin=origin,
        start=start, end=end, rollup=rollup, date_from=date_from, date_to=date_to, zone=zone,
    ) if compared else {}

    rows = []
    for (funnel, number), (share, started_at) in sorted(periods.items()):
        if share <= 0:
            continue
        treatment = counts.get((funnel, number, ExperimentGroup.TREATMENT))
        control = counts.get((funnel, number, ExperimentGroup.CONTROL))
        if treatment is None and control is None:
            continue
        rows.append(_row(
            funnel=funnel, period=number, share=share, started_at=started_at,
            treatment=treatment or _empty(window_days), control=control or _empty(window_days),
            window_open=window_open, start=start, end=end, as_of=as_of,
        ))
    return LiftReport(
        origin=origin, window_days=window_days, rows=rows,
        bought_before_start={f: (bought_before_start or {}).get(f, 0) for f in funnels},
        not_started={f: (not_started or {}).get(f, 0) for f in funnels},
    )


def _empty(window_days: int) -> GroupNumbers:
    return GroupNumbers(0, 0, 0, 0, tuple([0] * window_days))


def _row(*, funnel, period, share, started_at, treatment, control, window_open, start, end,
         as_of) -> LiftRow:
    difference = None
    if treatment.entered and control.entered:
        difference = newcombe_interval(
            treatment.converted, treatment.entered, control.converted, control.entered
        )
    not_enough = []
    if not control.entered or not treatment.entered:
        not_enough.append(NOT_ENOUGH_NO_CONTROL)
    if window_open:
        not_enough.append(NOT_ENOUGH_WINDOW_OPEN)
    if difference is not None and difference.spans_zero:
        not_enough.append(NOT_ENOUGH_SPANS_ZERO)

    fraction = share / 100
    entered = treatment.entered + control.entered
    baseline = control.rate if control.rate is not None else (treatment.rate or 0.0)
    needed = people_needed(baseline=baseline, lift=DETECTABLE_LIFT, share=fraction)
    days_more = None
    observed_from = max(start, started_at) if started_at else start
    observed_to = min(end, as_of) if as_of else end
    observed_days = (observed_to - observed_from).total_seconds() / DAY_SECONDS
    if needed <= entered:
        days_more = 0
    elif entered and observed_days > 0:
        days_more = math.ceil((needed - entered) / (entered / observed_days))

    curve = []
    for day, (t, c) in enumerate(zip(treatment.cumulative(), control.cumulative())):
        curve.append(CurvePoint(
            day=day,
            treatment_converted=t,
            treatment_rate=t / treatment.entered if treatment.entered else None,
            control_converted=c,
            control_rate=c / control.entered if control.entered else None,
        ))
    return LiftRow(
        funnel=funnel, period=period, share=share, period_started_at=started_at,
        treatment=treatment, control=control, difference=difference,
        sample_ratio=sample_ratio_check(
            control=control.entered, treatment=treatment.entered, share=fraction
        ),
        not_enough=tuple(not_enough), people_needed=needed, days_more=days_more,
        curve=curve,
    )


def _periods(*, funnels: Sequence[str]) -> dict[tuple[str, int], tuple[int, dt.datetime | None]]:
    """{(funnel, period): (share, started at)}: one small query. Period 0 has no row
    (share 0, nothing to compare)."""
    return {
        (slug, number): (share, started_at)
        for slug, number, share, started_at in ControlPeriod.objects.filter(
            funnel__slug__in=list(funnels)
        ).values_list("funnel__slug", "number", "share", "started_at")
    }


def _lift_counts(*, periods, test_id, window_days, origin, start, end, rollup=None,
                 date_from=None, date_to=None, zone=None):
    """Counts of the (funnel, period) pairs `periods` only: each is one range of
    idx_fe_lift (funnel_type, control_period, entered_at, ...). With a `rollup` that
    serves the request, its clean days come from the rollup and only its dirty days from
    the entries (reports/rollup.py)."""
    raw: dict[tuple[str, int, str], dict] = defaultdict(
        lambda: {"entered": 0, "before": 0, "never": 0, "days": [0] * window_days}
    )
    ranges = None
    if rollup_serves(rollup=rollup, test_id=test_id, origin=origin, group_by="funnel",
                     date_from=date_from, date_to=date_to, zone=zone):
        _lift_add(raw=raw, window_days=window_days, rows=lift_rollup_rows(
            periods=periods, date_from=date_from, date_to=date_to, window_days=window_days,
            dirty=rollup.dirty_in(date_from=date_from, date_to=date_to),
        ))
        ranges = rollup.dirty_ranges(date_from=date_from, date_to=date_to, zone=zone)
        if not ranges:
            return _lift_numbers(raw)
    connection = connections[router.db_for_read(FunnelEntry)]
    dialect = Dialect(connection.vendor)
    adapt = connection.ops.adapt_datetimefield_value
    table = connection.ops.quote_name(FunnelEntry._meta.db_table)
    origin_column = "entered_at" if origin == ORIGIN_COMPLETION else "funnel_started_at"
    purchased = dialect.epoch("certificate_purchased_at")
    since = dialect.epoch(origin_column)
    elapsed = f"({purchased} - {since})"
    day = Sql(
        f"CASE WHEN certificate_purchased_at >= {origin_column} "
        f"AND certificate_purchased_at >= entered_at AND {elapsed} <= %s "
        f"THEN {dialect.div(elapsed, DAY_SECONDS)} END",
        [window_days * DAY_SECONDS],
    )
    phase = Sql(
        "CASE WHEN funnel_started_at IS NULL THEN %s "
        "WHEN certificate_purchased_at >= entered_at "
        "AND certificate_purchased_at < funnel_started_at THEN %s ELSE %s END",
        [_NOT_STARTED, _BEFORE_START, _AFTER_OR_NONE],
    )
    where = Sql(
        "(" + " OR ".join(["(funnel_type = %s AND control_period = %s)"] * len(periods))
        + ")",
        [value for pair in periods for value in pair],
    ) + _entered_in(
        start_param=adapt(start), end_param=adapt(end),
        ranges=None if ranges is None else [(adapt(a), adapt(b)) for a, b in ranges],
    )
    if test_id is None:
        where += Sql(
            " AND (previous_entered_at IS NULL OR previous_entered_at < %s)", [adapt(start)]
        )
    else:
        where += Sql(" AND test_id = %s", [test_id])
    sql = (
        "SELECT funnel_type, control_period, experiment_group, " + day + " AS day_after, "
        + phase + f" AS phase, COUNT(*) FROM {table} WHERE " + where
        + " GROUP BY funnel_type, control_period, experiment_group, day_after, phase"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql.text, sql.params)
        _lift_add(raw=raw, window_days=window_days, rows=cursor.fetchall())
    return _lift_numbers(raw)


def _lift_add(*, raw, window_days, rows) -> None:
    for funnel, period, group, day_after, phase_value, people in rows:
        numbers = raw[(funnel, int(period), group)]
        people = int(people)
        numbers["entered"] += people
        if int(phase_value) == _BEFORE_START:
            numbers["before"] += people
        elif int(phase_value) == _NOT_STARTED:
            numbers["never"] += people
        if day_after is not None:
            # A purchase at exactly the end of the window counts on the last day.
            numbers["days"][min(int(day_after), window_days - 1)] += people


def _lift_numbers(raw) -> dict:
    return {
        key: GroupNumbers(
            entered=n["entered"], converted=sum(n["days"]), bought_before_start=n["before"],
            not_started=n["never"], by_day=tuple(n["days"]),
        )
        for key, n in raw.items()
    }
