"""What the admin shows at a glance: the mode, the job's health and the day's numbers.

Every number here is one query with an index that fits it, so the dashboard costs the
same on a million entries as on ten (see the query-count tests).
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Min, Q
from django.utils.translation import gettext as _

from funnels.codes import SkipReason, Source
from funnels.models import Funnel, FunnelEntry, RecheckRow, SyncRun, SyncRunItem, SyncStatus
from funnels.modx.models import TestResult
from funnels.selectors.funnels import funnel_list_id, funnels_all
from funnels.selectors.health import (
    BROKEN_STATUSES,
    COMPLETED_STATUSES,
    last_completed_run_get,
    stale_after,
)
from funnels.selectors.readiness import live_config_problems_display
from funnels.services.runtime import runtime_settings_get

logger = logging.getLogger(__name__)

LAST_RUNS_SHOWN = 10


@dataclass(frozen=True)
class RunHealth:
    last_finished_run: SyncRun | None
    last_completed_run: SyncRun | None
    stale_after: dt.timedelta  # selectors.health.stale_after
    stale: bool

    @property
    def schedule_minutes(self) -> int:
        return int(self.stale_after.total_seconds() // 120)

    @property
    def last_completed_at(self) -> dt.datetime | None:
        run = self.last_completed_run
        if run is None:
            return None
        return run.finished_at

    @property
    def last_run_broken(self) -> bool:
        run = self.last_finished_run
        return run is not None and run.status in BROKEN_STATUSES

    @property
    def last_run_partial(self) -> bool:
        run = self.last_finished_run
        return run is not None and run.status == SyncRun.Status.PARTIAL


@dataclass(frozen=True)
class AdminStatus:
    dry_run: bool
    health: RunHealth
    schedule_paused: bool = False
    schedule_paused_at: dt.datetime | None = None


@dataclass(frozen=True)
class PeriodCounts:
    today: int
    week: int


@dataclass(frozen=True)
class Dashboard:
    now: dt.datetime
    today_start: dt.datetime
    week_start: dt.datetime
    day_start: dt.datetime
    last_runs: list[SyncRun]
    entries: PeriodCounts
    purchases: PeriodCounts
    sync_pending: int
    sync_failed: int
    # The "nothing is dropped" check over the last 24 hours.
    modx_results_last_day: int | None  # None: MODX could not be read
    entries_last_day: int
    skipped_last_day: int
    # Results of the last 24 hours that wait on the recheck list (no completion time yet,
    # a bad email, ...): read again by every run, neither entered nor skipped yet.
    waiting_last_day: int = 0

    @property
    def modx_unreachable(self) -> bool:
        return self.modx_results_last_day is None

    @property
    def unaccounted_last_day(self) -> int | None:
        """Results neither entered, skipped nor waiting after a live run: a backlog or a
        gap."""
        if self.modx_results_last_day is None:
            return None
        return max(0, self.modx_results_last_day - self.entries_last_day
                   - self.skipped_last_day - self.waiting_last_day)


def run_health_get(*, now: dt.datetime) -> RunHealth:
    """The header's view of the job's health, by selectors.health's rule."""
    limit = stale_after()
    # A run still going says nothing yet about whether runs work.
    last_finished = (
        SyncRun.objects.exclude(status__in=[SyncRun.Status.RUNNING, SyncRun.Status.PAUSED])
        .order_by("-started_at", "-id")
        .first()
    )
    if (last_finished is not None and last_finished.status in COMPLETED_STATUSES
            and last_finished.finished_at is not None):
        last_completed = last_finished
    else:
        last_completed = last_completed_run_get()
    stale = last_completed is None or now - last_completed.finished_at > limit
    return RunHealth(
        last_finished_run=last_finished, last_completed_run=last_completed,
        stale_after=limit, stale=stale,
    )


def admin_status_get(*, now: dt.datetime) -> AdminStatus:
    """The header of every admin page: the effective mode and the job's health."""
    row = runtime_settings_get()
    return AdminStatus(
        dry_run=row.dry_run, health=run_health_get(now=now),
        schedule_paused=row.schedule_paused, schedule_paused_at=row.schedule_paused_at,
    )


def period_starts(*, now: dt.datetime, tz_name: str) -> tuple[dt.datetime, dt.datetime]:
    """Local midnight today and on this week's Monday, as aware datetimes in UTC."""
    tz = zoneinfo.ZoneInfo(tz_name)
    local_today = now.astimezone(tz).date()
    monday = local_today - dt.timedelta(days=local_today.weekday())
    today_start = dt.datetime.combine(local_today, dt.time.min, tzinfo=tz)
    week_start = dt.datetime.combine(monday, dt.time.min, tzinfo=tz)
    return today_start.astimezone(dt.UTC), week_start.astimezone(dt.UTC)


def modx_results_count(*, since: dt.datetime) -> int | None:
    """Test results completed since `since`, or None when MODX cannot be read."""
    return modx_results_since(since=since)[0]


def modx_results_since(*, since: dt.datetime) -> tuple[int | None, int | None]:
    """How many test results were completed since `since`, and the lowest id among them;
    (None, None) when MODX cannot be read.

    The dashboard must render when the website's database is down: that is exactly when
    the operator opens it. The reason goes to the log, not the page (it may name hosts).
    """
    try:
        row = TestResult.objects.filter(completed_at__gte=since).aggregate(
            n=Count("pk"), first=Min("pk")
        )
    except DatabaseError:
        logger.warning("dashboard: the MODX database could not be read", exc_info=True)
        return None, None
    return row["n"], row["first"]


def dashboard_get(*, now: dt.datetime) -> Dashboard:
    today_start, week_start = period_starts(now=now, tz_name=settings.TIME_ZONE)
    day_start = now - dt.timedelta(days=1)

    last_runs = list(SyncRun.objects.order_by("-started_at", "-id")[:LAST_RUNS_SHOWN])

    # One range scan of idx_fe_entered covers the week, today and the last 24 hours.
    entries = FunnelEntry.objects.filter(entered_at__gte=min(week_start, day_start)).aggregate(
        week=Count("id", filter=Q(entered_at__gte=week_start)),
        today=Count("id", filter=Q(entered_at__gte=today_start)),
        last_day=Count("id", filter=Q(entered_at__gte=day_start, entered_at__lte=now)),
    )
    purchases = FunnelEntry.objects.filter(
        certificate_purchased=True, certificate_purchased_at__gte=week_start
    ).aggregate(
        week=Count("id"),
        today=Count("id", filter=Q(certificate_purchased_at__gte=today_start)),
    )
    # idx_fe_outbox starts with sync_status: two small index ranges.
    by_status = dict(
        FunnelEntry.objects.filter(sync_status__in=[SyncStatus.PENDING, SyncStatus.FAILED])
        .values_list("sync_status")
        .annotate(n=Count("id"))
        .order_by()
    )
    # The same clock as the MODX count: results of the last 24 hours (from the lowest
    # id among them, on idx_runitem_source) that live runs skipped. Dry runs re-read the
    # same results every time and enter nobody: only live runs account for results.
    modx_results, first_id = modx_results_since(since=day_start)
    skipped = waiting = 0
    if first_id is not None:
        # On uk_recheck_source_id: the waiting results among them.
        waiting = RecheckRow.objects.filter(
            source=Source.RESULTS, modx_id__gte=first_id
        ).count()
        skipped = (
            SyncRunItem.objects.filter(
                source_id__gte=first_id, action=SyncRunItem.Action.SKIPPED,
                run__dry_run=False, reason__in=SkipReason.OF_RESULTS,
            )
            .values("source_id").distinct().count()
        )

    return Dashboard(
        now=now,
        today_start=today_start,
        week_start=week_start,
        day_start=day_start,
        last_runs=last_runs,
        entries=PeriodCounts(today=entries["today"], week=entries["week"]),
        purchases=PeriodCounts(today=purchases["today"], week=purchases["week"]),
        sync_pending=by_status.get(SyncStatus.PENDING, 0),
        sync_failed=by_status.get(SyncStatus.FAILED, 0),
        modx_results_last_day=modx_results,
        entries_last_day=entries["last_day"],
        skipped_last_day=skipped,
        waiting_last_day=waiting,
    )


def live_mode_blockers_get() -> list[str]:
    """Reasons the job cannot run live; switching to live is refused while any remain.
    The run's own definition (selectors.readiness), in the page's language."""
    return live_config_problems_display()


def funnels_without_list_get() -> list[Funnel]:
    """Active funnels the job would skip in live mode: they have no Brevo list."""
    return [f for f in funnels_all() if f.active and not funnel_list_id(funnel=f)]
