"""Run orchestration: one run of the funnel job, start to finish, recorded as a SyncRun.

Order of a run:
1. take the run lock (another live run: RunBusy, nothing recorded);
2. close the records of runs that died while running (we hold the lock, so any row still
   `running` belongs to a dead process) as `crashed`;
3. create our own SyncRun row (`running`, host, pid, heartbeat) before any other work;
4. live mode only: refuse half-configured Brevo settings (RunConfigError, exit 78);
5. test results -> funnel entries (services.results): waiting, late and new MODX results,
   read by the one MODX reader (services.modx_reader), chunk by chunk, until MODX has
   nothing newer; the flood guard holds the run's new contacts back past its limit;
6. purchases (services.purchases), read the same way, before the push, so purchase
   updates ride along;
7. live mode only: push the outbox to Brevo (services.outbox);
8. final status: success, held (the flood guard held new contacts), partial (some Brevo
   failures) or failed (with the error).

A dry run does every read and writes only its own run row and plan items.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, OperationalError
from django.utils import timezone

from funnels.brevo.client import BrevoClient
from funnels.codes import Source
from funnels.brevo.errors import BrevoAuthError, BrevoError
from funnels.brevo.factory import BrevoNotConfigured, brevo_client_build
from funnels.locks import RunLock, RunLockBusy, RunLockLost
from funnels.logging_filters import redact
from funnels.models import Funnel, SyncRun
from funnels.selectors.funnels import funnel_list_ids, funnels_all, watermark_state_get
from funnels.selectors.readiness import live_config_problems
from funnels.services.flood_guard import held_entries_release
from funnels.services.outbox import outbox_push
from funnels.services.pings import ping_send
from funnels.services.purchases import purchases_sync
from funnels.services.report_rollup import report_rollup_refresh
from funnels.services.results import results_sync
from funnels.services.runtime import run_mode_resolve
from funnels.services.schedule import run_record_paused, schedule_pause_blocks

logger = logging.getLogger("funnels.sync")

# How long a run's row may go without a new heartbeat when nothing on it changed (see
# _Run.heartbeat); far below anything that judges a run by it (twice the schedule).
HEARTBEAT_QUIET = timedelta(seconds=10)


class RunBusy(Exception):
    """Another run_funnels holds the lock (exit code 3)."""


class RunConfigError(Exception):
    """Live mode asked for, but Brevo is not configured (exit code 78)."""


def runs_mark_crashed(*, now: datetime) -> int:
    """Close the records of runs whose process died; call only while holding the lock."""
    marked = 0
    for run in SyncRun.objects.filter(status=SyncRun.Status.RUNNING).order_by("id"):
        last_sign = run.heartbeat_at or run.started_at
        run.status = SyncRun.Status.CRASHED
        run.finished_at = last_sign
        run.error = (
            f"found dead at the next start ({now.isoformat(timespec='seconds')}): "
            f"no heartbeat since {last_sign.isoformat(timespec='seconds')} "
            f"(host {run.hostname or '?'}, pid {run.pid or '?'})"
        )
        run.save(update_fields=["status", "finished_at", "error"])
        logger.warning("run #%s was left running by a dead process; marked crashed", run.pk)
        marked += 1
    return marked


def _busy_message(exc: RunLockBusy) -> str:
    holder = SyncRun.objects.filter(status=SyncRun.Status.RUNNING).order_by("-id").first()
    if holder is not None:
        since = timezone.localtime(holder.started_at).isoformat(timespec="seconds")
        where = f", host {holder.hostname}" if holder.hostname else ""
        return (
            f"another run_funnels is running (since {since}, pid {holder.pid or '?'}{where}, "
            f"run #{holder.pk})"
        )
    info = exc.holder
    if info.get("pid"):
        return (
            f"another run_funnels is running (since {info.get('since', '?')}, "
            f"pid {info['pid']}, host {info.get('hostname', '?')})"
        )
    if info.get("connection_id"):
        return (
            "another run_funnels is running (since ?, pid ?, "
            f"database connection {info['connection_id']})"
        )
    return "another run_funnels is running (since ?, pid ?)"


def _default_since(*, now: datetime) -> date:
    return timezone.localtime(now).date() - timedelta(days=settings.FUNNELS_INITIAL_LOOKBACK_DAYS)


class _Run:
    def __init__(
        self,
        *,
        run: SyncRun,
        lock: RunLock,
        now: datetime,
        since: date | None,
        chunk_size: int,
        brevo_client_factory: Callable[[], BrevoClient],
        clock: Callable[[], datetime],
    ) -> None:
        self.run = run
        self.lock = lock
        self.now = now
        self.since = since
        self.chunk_size = chunk_size
        self.brevo_client_factory = brevo_client_factory
        self.clock = clock
        self.client: BrevoClient | None = None
        # Looked up once (funnel rows and settings) and handed to every phase.
        self.list_ids: dict[str, int | None] = {}
        self.skipped_by_reason: Counter = Counter()
        self.waiting_by_reason: Counter = Counter()
        self.entered_emails: frozenset[str] = frozenset()
        # The run's fields as its row holds them (it was just created): what a heartbeat
        # need not write again.
        self.saved: dict[str, object] = {
            f.attname: copy.deepcopy(getattr(run, f.attname))
            for f in SyncRun._meta.concrete_fields
        }

    def heartbeat(self, *fields: str) -> None:
        """Stamp the run's row as alive, with `fields` (its counters) as they are now. A
        phase that changed none of them, ending within HEARTBEAT_QUIET of the last write,
        writes nothing: in a run with nothing to do, each such UPDATE (a commit, a log
        flush) cost more than the phase's own reads, and the final save writes every
        field anyway."""
        stamp = self.clock()
        values = {name: copy.deepcopy(getattr(self.run, name)) for name in fields}
        if stamp - self.run.heartbeat_at < HEARTBEAT_QUIET and all(
            name in self.saved and self.saved[name] == value for name, value in values.items()
        ):
            return
        self.run.heartbeat_at = stamp
        self.run.save(update_fields=["heartbeat_at", *fields])
        self.saved.update(values)

    def results_phase(self, funnels: list[Funnel]) -> None:
        run = self.run
        if self.since is not None:
            state = watermark_state_get(key=Source.RESULTS)
            if state is not None:
                logger.warning(
                    "run #%s: --since %s ignored: the watermark (#%s) already exists",
                    run.pk, self.since.isoformat(), state.last_id,
                )
        outcome = results_sync(
            run=run, funnels=funnels, now=self.now,
            since=self.since or _default_since(now=self.now), chunk_size=self.chunk_size,
            lock=self.lock, progress=self.results_progress, list_ids=self.list_ids,
        )
        read = outcome.read
        run.results_read = read.rows_read
        run.entries_added = outcome.added
        skipped = Counter(outcome.skipped_by_reason)
        skipped.update({k: v for k, v in read.dropped_by_reason.items() if v})
        run.skipped = sum(skipped.values())
        self.skipped_by_reason.update(skipped)
        self.waiting_by_reason.update(read.waiting_by_reason)
        run.contacts_held = outcome.contacts_held
        self.entered_emails = outcome.entered_emails
        if outcome.contacts_held:
            logger.warning(
                "run #%s: %s new contacts, more than FUNNELS_MAX_NEW_CONTACTS_PER_RUN (%s): "
                "%s held back from Brevo until released (admin dashboard, or run_funnels "
                "--release-held)",
                run.pk, outcome.contacts_held, outcome.guard_limit,
                "would be" if run.dry_run else "their entries are recorded and",
            )
        logger.info(
            "run #%s: test results: %s read, %s %s, %s skipped, %s waiting for a recheck "
            "(%s new)",
            run.pk, read.rows_read, outcome.added,
            "would be added" if run.dry_run else "added", run.skipped, read.waiting_now,
            sum(read.waiting_by_reason.values()),
        )
        self._record_reasons()
        self.heartbeat(
            "results_read", "entries_added", "skipped", "skipped_by_reason",
            "waiting_by_reason", "contacts_held",
        )

    def results_progress(self, *, rows_read: int, added: int, skipped: Counter) -> None:
        """After every chunk: the run's counters and heartbeat, so the admin and
        funnels_health see a long backfill move."""
        self.run.results_read = rows_read
        self.run.entries_added = added
        self.run.skipped = sum(skipped.values())
        self.heartbeat("results_read", "entries_added", "skipped")

    def _record_reasons(self) -> None:
        self.run.skipped_by_reason = dict(sorted(self.skipped_by_reason.items()))
        self.run.waiting_by_reason = dict(sorted(self.waiting_by_reason.items()))

    def purchases_phase(self, funnels: list[Funnel]) -> None:
        result = purchases_sync(
            run=self.run, now=self.now, chunk_size=self.chunk_size,
            lock=self.lock, entered_emails=self.entered_emails, funnels=funnels,
        )
        self.run.payments_read = result.payments_read
        self.run.purchases_found = result.purchases_found
        self.run.purchases_revoked = result.purchases_revoked
        # Namespaced: `skipped` counts test results, these reasons are about payments.
        self.skipped_by_reason.update(
            {f"payment:{reason}": n for reason, n in result.skipped_by_reason.items()}
        )
        self.waiting_by_reason.update(
            {f"payment:{reason}": n for reason, n in result.waiting_by_reason.items()}
        )
        self._record_reasons()
        self.heartbeat(
            "payments_read", "purchases_found", "purchases_revoked", "skipped_by_reason",
            "waiting_by_reason",
        )

    def outbox_phase(self) -> bool:
        """Push to Brevo; True if every due contact went through."""
        self.client = self.brevo_client_factory()
        result = outbox_push(run=self.run, client=self.client, now=self.now, lock=self.lock,
                             clock=self.clock, list_ids=self.list_ids)
        self.run.contacts_sent = result.contacts_sent
        self.run.contacts_failed = result.contacts_failed
        if result.stopped:
            self.run.error = result.stopped
        self.heartbeat("contacts_sent", "contacts_failed", "error")
        return not result.had_failures

    def brevo_counters(self) -> None:
        if self.client is None:
            return
        self.run.brevo_requests = self.client.request_count
        info = self.client.last_ratelimit
        if info is not None:
            self.run.ratelimit_remaining = info.remaining
            self.run.ratelimit_limit = info.limit


def run_funnels(
    *,
    now: datetime,
    dry_run: bool | None,
    trigger: str = SyncRun.Trigger.MANUAL,
    since: date | None = None,
    chunk_size: int | None = None,
    brevo_client_factory: Callable[[], BrevoClient] = brevo_client_build,
    clock: Callable[[], datetime] = timezone.now,
    release_held: bool = False,
) -> SyncRun:
    """One run of the funnel job; returns its SyncRun (status success/held/partial/failed).

    `release_held` first lets the entries the flood guard held go to Brevo (live runs only:
    a dry run sends nothing, so there is nothing to release for it).

    `now` is the as-of time every decision uses (entry times for results without one,
    retry schedules, the default first-run start); `clock` stamps the run's own progress.
    `dry_run=None` takes the mode from the runtime settings row. Raises RunBusy when
    another run holds the lock and RunConfigError for a half-configured live run (the run
    is recorded as failed first). Unexpected errors are recorded on the run, logged with
    their traceback and re-raised.
    """
    chunk_size = chunk_size or settings.FUNNELS_CHUNK_SIZE
    lock = RunLock()
    try:
        lock.acquire(now=clock())
    except RunLockBusy as exc:
        raise RunBusy(_busy_message(exc)) from None
    try:
        return _run_locked(
            lock=lock, now=now, dry_run=dry_run, trigger=trigger, since=since,
            chunk_size=chunk_size, brevo_client_factory=brevo_client_factory, clock=clock,
            release_held=release_held,
        )
    finally:
        lock.release()


def _run_locked(
    *,
    lock: RunLock,
    now: datetime,
    dry_run: bool | None,
    trigger: str,
    since: date | None,
    chunk_size: int,
    brevo_client_factory: Callable[[], BrevoClient],
    clock: Callable[[], datetime],
    release_held: bool = False,
) -> SyncRun:
    if schedule_pause_blocks(trigger=trigger):  # the admin paused the schedule
        return run_record_paused(now=clock(), trigger=trigger, dry_run=dry_run)
    ping_send(event="start")
    runs_mark_crashed(now=clock())
    started = clock()
    run = SyncRun.objects.create(
        started_at=started,
        heartbeat_at=started,
        status=SyncRun.Status.RUNNING,
        # A live settings row runs dry until a first dry run completed here (copied .env).
        # From here on the run's row is the one place that says whether it is dry.
        dry_run=run_mode_resolve(forced=dry_run),
        trigger=trigger,
        hostname=socket.gethostname()[:255],
        pid=os.getpid(),
        as_of=now,
    )
    mode = "dry run" if run.dry_run else "live"
    logger.info("run #%s started (%s, trigger %s, as of %s)", run.pk, mode, trigger,
                now.isoformat(timespec="seconds"))
    state = _Run(
        run=run, lock=lock, now=now, since=since, chunk_size=chunk_size,
        brevo_client_factory=brevo_client_factory, clock=clock,
    )
    try:
        funnels = funnels_all()
        state.list_ids = funnel_list_ids(funnels=funnels)
        if not run.dry_run:
            problems = live_config_problems(funnels=funnels, list_ids=state.list_ids)
            if problems:
                raise RunConfigError("live mode needs: " + "; ".join(problems))
        if release_held and not run.dry_run:
            held_entries_release(now=now, source=f"run_funnels --release-held, run #{run.pk}")
        state.results_phase(funnels)
        state.purchases_phase(funnels)
        complete = True
        if not run.dry_run:
            complete = state.outbox_phase()
            # Last, after every write of the run (entries, purchases, first confirmations):
            # the report then reads the rollup alone until the next run's writes.
            report_rollup_refresh()
        if run.contacts_held and not run.dry_run:
            # Needs a person before anything else: held wins over partial.
            run.status = SyncRun.Status.HELD
        else:
            run.status = SyncRun.Status.SUCCESS if complete else SyncRun.Status.PARTIAL
    except RunConfigError as exc:
        _finish_failed(state, str(exc))
        raise
    except BrevoNotConfigured as exc:
        _finish_failed(state, str(exc))
        raise RunConfigError(str(exc)) from None
    except BrevoAuthError:
        _finish_failed(
            state,
            "Brevo rejected the API key (401): run stopped; entries not confirmed by Brevo "
            "stay pending for the next run",
        )
        return run
    except RunLockLost as exc:
        _finish_failed(state, f"{exc}: run stopped before writing more")
        return run
    except BrevoError as exc:
        _finish_failed(state, f"Brevo error: {exc}")
        return run
    except DatabaseError as exc:
        # Unreachable or restarted servers are an operations matter (one line); anything
        # else from the database is a bug and keeps its traceback in the log.
        logger.error(
            "run #%s: database error: %s: %s", run.pk, type(exc).__name__, redact(str(exc)),
            exc_info=not isinstance(exc, OperationalError),
        )
        try:
            _finish_failed(state, f"database error: {type(exc).__name__}: {exc}")
        except DatabaseError:
            pass
        raise
    except Exception as exc:
        logger.exception("run #%s failed unexpectedly", run.pk)
        _finish_failed(state, f"unexpected error: {type(exc).__name__}: {exc}")
        raise
    state.brevo_counters()
    run.finished_at = clock()
    run.heartbeat_at = run.finished_at
    run.save()
    if state.client is not None:
        state.client.close()
    logger.info(
        "run #%s %s: %s results read, %s entries %s, %s skipped, %s contacts sent, "
        "%s failed, %s held, %s Brevo requests",
        run.pk, run.status, run.results_read, run.entries_added,
        "planned" if run.dry_run else "added", run.skipped, run.contacts_sent,
        run.contacts_failed, run.contacts_held, run.brevo_requests,
    )
    # The end-of-run ping (success, or /fail for partial and held) is sent with the other
    # alerts by the command: services/alerts.py.
    return run


def _finish_failed(state: _Run, error: str) -> None:
    run = state.run
    run.status = SyncRun.Status.FAILED
    previous = f"{run.error}; " if run.error else ""
    run.error = redact(previous + error)[:5000]
    state.brevo_counters()
    run.finished_at = state.clock()
    run.heartbeat_at = run.finished_at
    if state.client is not None:
        state.client.close()
    logger.error("run #%s failed: %s", run.pk, run.error)
    run.save()
