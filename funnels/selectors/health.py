"""Is the funnel job alive? Judged from the run records only (a handful of queries)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils.translation import gettext as _

from funnels.models import SyncRun
from funnels.selectors.funnels import funnel_entries_unusable_count
from funnels.selectors.held import held_summary_get
from funnels.services.runtime import runtime_settings_get

OK, WARNING, CRITICAL = "OK", "WARNING", "CRITICAL"
EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2}
RECENT_RUNS = 4

# The one rule for the job's health, used here and by the admin's header and dashboard
# (selectors/dashboard.py): a held run completed its reads (it waits for a person, which
# run_health reports first); a failed or crashed one did not.
COMPLETED_STATUSES = (SyncRun.Status.SUCCESS, SyncRun.Status.PARTIAL, SyncRun.Status.HELD)
BROKEN_STATUSES = (SyncRun.Status.FAILED, SyncRun.Status.CRASHED)


def stale_after(*, schedule_minutes: int | None = None) -> timedelta:
    """Twice the schedule: one late or skipped tick is normal, two in a row are not."""
    return timedelta(minutes=2 * (schedule_minutes or settings.FUNNELS_SCHEDULE_MINUTES))


def last_completed_run_get() -> SyncRun | None:
    return (
        SyncRun.objects.filter(status__in=COMPLETED_STATUSES, finished_at__isnull=False)
        .order_by("-started_at", "-id")
        .first()
    )


@dataclass(frozen=True)
class Health:
    level: str
    message: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.level]

    @property
    def line(self) -> str:
        return f"{self.level}: {self.message}"


def _minutes(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() // 60))


def schedule_pause_health(*, now: datetime) -> Health | None:
    """While the admin has paused the schedule no run completes, on purpose: that is OK
    for FUNNELS_PAUSE_WARN_MINUTES, then a WARNING so a forgotten pause is noticed."""
    row = runtime_settings_get()
    if not row.schedule_paused:
        return None
    since = row.schedule_paused_at or now
    age = now - since
    level = WARNING if age > timedelta(minutes=settings.FUNNELS_PAUSE_WARN_MINUTES) else OK
    return Health(
        level,
        _("the schedule is paused in the admin (for %(m)s min, warning after %(limit)s min)")
        % {"m": _minutes(age), "limit": settings.FUNNELS_PAUSE_WARN_MINUTES},
    )


def proof_health() -> Health | None:
    """WARNING when the latest daily proof (services/nobody_lost.py) found a difference of
    any class: the goal is zero, every day."""
    from funnels.models import ProofCheck, ProofDifference

    proof = (
        ProofCheck.objects.exclude(status=ProofCheck.Status.RUNNING)
        .order_by("-started_at", "-id").first()
    )
    if proof is None:
        return None
    if proof.status == ProofCheck.Status.FAILED:
        return Health(WARNING, _("the proof that nobody is lost #%(id)s failed: %(e)s")
                      % {"id": proof.pk, "e": proof.error[:200]})
    found = {kind: n for kind, n in (proof.counts or {}).items() if n}
    if not found:
        return None
    labels = dict(ProofDifference.Kind.choices)
    return Health(
        WARNING,
        _("the proof that nobody is lost #%(id)s found %(n)s differences: %(classes)s")
        % {"id": proof.pk, "n": sum(found.values()),
           "classes": ", ".join(f"{labels.get(k, k)} {n}" for k, n in sorted(found.items()))},
    )


def run_health(*, now: datetime, schedule_minutes: int | None = None) -> Health:
    """CRITICAL while the flood guard holds contacts back (a person must decide) or when no
    run completed within twice the schedule; WARNING when one of the last RECENT_RUNS runs
    failed or crashed, the latest one had Brevo failures, a run has shown no heartbeat for
    twice the schedule, or funnel_entries holds rows this job cannot use (another
    writer's); OK otherwise."""
    held = held_summary_get()
    if held.entries:
        return Health(
            CRITICAL,
            _("%(n)s new contacts held back from Brevo by the flood guard (run #%(run)s): "
              "check them, then release them in the admin or with run_funnels --release-held")
            % {"n": held.contacts, "run": held.runs[0].pk if held.runs else "?"},
        )
    limit = stale_after(schedule_minutes=schedule_minutes)
    paused = schedule_pause_health(now=now)
    if paused is not None:
        return paused
    last_good = last_completed_run_get()
    if last_good is None:
        return Health(CRITICAL, _("no run has completed yet"))
    age = now - last_good.finished_at
    mode = _("dry run") if last_good.dry_run else _("live")
    if age > limit:
        return Health(
            CRITICAL,
            _("last completed run #%(id)s finished %(m)s min ago (limit %(limit)s min)")
            % {"id": last_good.pk, "m": _minutes(age), "limit": _minutes(limit)},
        )
    recent = list(
        SyncRun.objects.exclude(status=SyncRun.Status.RUNNING)
        .order_by("-started_at", "-id")
        .values("id", "status", "contacts_failed")[:RECENT_RUNS]
    )
    broken = [r for r in recent if r["status"] in BROKEN_STATUSES]
    if broken:
        return Health(
            WARNING,
            _("%(n)s of the last %(total)s runs failed (latest failed: #%(id)s); last "
              "completed run #%(good)s finished %(m)s min ago")
            % {"n": len(broken), "total": len(recent), "id": broken[0]["id"],
               "good": last_good.pk, "m": _minutes(age)},
        )
    stale = (
        SyncRun.objects.filter(status=SyncRun.Status.RUNNING, heartbeat_at__lt=now - limit)
        .order_by("id")
        .first()
    )
    if stale is not None:
        return Health(
            WARNING,
            _("run #%(id)s shows no heartbeat for %(m)s min")
            % {"id": stale.pk, "m": _minutes(now - stale.heartbeat_at)},
        )
    if recent and recent[0]["status"] == SyncRun.Status.PARTIAL:
        return Health(
            WARNING,
            _("last run #%(id)s finished with %(n)s contacts failed in Brevo")
            % {"id": recent[0]["id"], "n": recent[0]["contacts_failed"]},
        )
    unusable = funnel_entries_unusable_count()
    if unusable:
        return Health(
            WARNING,
            _("%(n)s rows in funnel_entries were not written by this job (zero or NULL "
              "date, empty sync state or unnormalised email): left alone; see admin, "
              "Funnel entries, filter \"Not usable\"; is the earlier tool's cron still "
              "running?") % {"n": unusable},
        )
    proof = proof_health()
    if proof is not None:
        return proof
    return Health(
        OK,
        _("last run #%(id)s completed %(m)s min ago (%(mode)s)")
        % {"id": last_good.pk, "m": _minutes(age), "mode": mode},
    )

