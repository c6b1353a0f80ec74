"""Run orchestration: one run of the funnel job, start to finish, recorded as a SyncRun.

Order of a run:
1. take the run lock (another live run: RunBusy, nothing recorded);
2. close the records of runs that died while running (we hold the lock, so any row still
   `running` belongs to a dead process) as `crashed`;
3. create our own SyncRun row (`running`, host, pid, heartbeat) before any other work;
4. live mode only: refuse half-configured Brevo settings (RunConfigError, exit 78);
5. new MODX test results since the watermark -> funnel entries, chunk by chunk, until
   MODX has nothing newer (services.entries);
6. purchases (services.purchases) before the push, so purchase updates ride along;
7. live mode only: push the outbox to Brevo (services.outbox);
8. final status: success, partial (some Brevo failures) or failed (with the error).

A dry run does every read and writes only its own run row and plan items.
"""

from __future__ import annotations

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
from funnels.brevo.errors import BrevoAuthError, BrevoError
from funnels.brevo.factory import BrevoNotConfigured, brevo_client_build
from funnels.locks import RunLock, RunLockBusy, RunLockLost
from funnels.logging_filters import redact
from funnels.models import Funnel, SyncRun
from funnels.selectors.candidates import (
    WATERMARK_KEY,
    KindResolver,
    candidates_by_ids,
    candidates_start_id,
    candidates_stream,
)
from funnels.selectors.readiness import live_config_problems
from funnels.selectors.funnels import (
    WatermarkState,
    funnel_list_id,
    funnels_all,
    watermark_state_get,
)
from funnels.services.entries import (
    ChunkOutcome,
    EntryPlanner,
    entries_create_chunk,
    watermark_advance,
)
from funnels.services.outbox import outbox_push
from funnels.services.pings import ping_send
from funnels.services.purchases import purchases_sync
from funnels.services.runtime import runtime_settings_get
from funnels.services.schedule import run_record_paused, schedule_pause_blocks
from funnels.services.watermarks import (
    watermark_after_gap_reads,
    watermark_after_new_rows,
    watermark_gap_batches,
)

logger = logging.getLogger("funnels.sync")


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
        self.skipped_by_reason: Counter = Counter()

    def heartbeat(self, *fields: str) -> None:
        self.run.heartbeat_at = self.clock()
        self.run.save(update_fields=["heartbeat_at", *fields])

    def entries_phase(self, funnels: list[Funnel]) -> None:
        run = self.run
        state = watermark_state_get(key=WATERMARK_KEY)
        if state is None:
            since = self.since or _default_since(now=self.now)
            start = candidates_start_id(since=since)
            logger.info(
                "run #%s: first run, reading test results completed since %s (after #%s)",
                run.pk, since.isoformat(), start,
            )
            if not run.dry_run:
                watermark_advance(key=WATERMARK_KEY, last_id=start, run=run)
            state = WatermarkState(key=WATERMARK_KEY, last_id=start, stored=not run.dry_run)
        elif self.since is not None:
            logger.warning(
                "run #%s: --since %s ignored: the watermark (#%s) already exists",
                run.pk, self.since.isoformat(), state.last_id,
            )
        planner = EntryPlanner(
            funnels=funnels, list_ids={f.slug: funnel_list_id(funnel=f) for f in funnels}
        )
        kinds = KindResolver()
        # Rows committed late below the watermark first: they are older than the new ones.
        state = self.gaps_read(state, planner=planner, kinds=kinds)
        for chunk in candidates_stream(
            after_id=state.last_id, chunk_size=self.chunk_size, kinds=kinds
        ):
            move = watermark_after_new_rows(
                state=state, ids=[c.result_id for c in chunk], now=self.now
            )
            outcome = entries_create_chunk(
                run=run, planner=planner, candidates=chunk, dry_run=run.dry_run,
                now=self.now, lock=self.lock, watermark=move,
            )
            state = move.after
            move.log(run=run, dry_run=run.dry_run)
            self.count(outcome)
            logger.info(
                "run #%s: read results up to #%s: %s %s, %s skipped",
                run.pk, outcome.last_id, outcome.added,
                "would be added" if run.dry_run else "added", outcome.skipped,
            )

    def gaps_read(
        self, state: WatermarkState, *, planner: EntryPlanner, kinds: KindResolver
    ) -> WatermarkState:
        """Re-read the watermark's gaps by primary key; the rows that have appeared become
        entries (or skips) in the transaction that takes them off the list. Nothing to do,
        no query: the gaps came with the watermark's row."""
        run = self.run
        grace = timedelta(minutes=settings.FUNNELS_WATERMARK_GAP_GRACE_MINUTES)
        for ids in watermark_gap_batches(state=state):
            found = candidates_by_ids(ids=ids, kinds=kinds)
            # Processed in the run's chunk size, each part committed with its own removal
            # from the list; the expired ids of the batch leave with the last part.
            parts = [found[i:i + self.chunk_size] for i in range(0, len(found), self.chunk_size)]
            for number, part in enumerate(parts or [[]], start=1):
                last = number == max(1, len(parts))
                move = watermark_after_gap_reads(
                    state=state,
                    read_ids=ids if last else [c.result_id for c in part],
                    found_ids=[c.result_id for c in part],
                    now=self.now,
                    grace=grace,
                )
                if not move.changed:
                    continue
                outcome = entries_create_chunk(
                    run=run, planner=planner, candidates=part, dry_run=run.dry_run,
                    now=self.now, lock=self.lock, watermark=move,
                )
                state = move.after
                move.log(run=run, dry_run=run.dry_run)
                if part:
                    self.count(outcome)
                    logger.info(
                        "run #%s: read %s results committed late below the watermark: "
                        "%s %s, %s skipped",
                        run.pk, len(part), outcome.added,
                        "would be added" if run.dry_run else "added", outcome.skipped,
                    )
        return state

    def count(self, outcome: ChunkOutcome) -> None:
        run = self.run
        run.results_read += outcome.results_read
        run.entries_added += outcome.added
        run.skipped += outcome.skipped
        self.skipped_by_reason.update(outcome.skipped_by_reason)
        run.skipped_by_reason = dict(sorted(self.skipped_by_reason.items()))
        self.heartbeat("results_read", "entries_added", "skipped", "skipped_by_reason")

    def purchases_phase(self) -> None:
        result = purchases_sync(
            run=self.run, dry_run=self.run.dry_run, now=self.now, chunk_size=self.chunk_size,
            lock_check=self.lock.check,
        )
        self.run.payments_read = result.payments_read
        self.run.purchases_found = result.purchases_found
        self.run.purchases_revoked = result.purchases_revoked
        # Namespaced: `skipped` counts test results, these reasons are about payments.
        self.skipped_by_reason.update(
            {f"payment:{reason}": n for reason, n in result.skipped_by_reason.items()}
        )
        self.run.skipped_by_reason = dict(sorted(self.skipped_by_reason.items()))
        self.heartbeat(
            "payments_read", "purchases_found", "purchases_revoked", "skipped_by_reason"
        )

    def outbox_phase(self) -> bool:
        """Push to Brevo; True if every due contact went through."""
        self.client = self.brevo_client_factory()
        result = outbox_push(run=self.run, client=self.client, now=self.now, lock=self.lock,
                             clock=self.clock)
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
) -> SyncRun:
    """One run of the funnel job; returns its SyncRun (status success/partial/failed).

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
) -> SyncRun:
    if schedule_pause_blocks(trigger=trigger):  # the admin paused the schedule
        return run_record_paused(now=clock(), trigger=trigger, dry_run=dry_run)
    ping_send(event="start")
    runs_mark_crashed(now=clock())
    effective_dry_run = runtime_settings_get().dry_run if dry_run is None else dry_run
    started = clock()
    run = SyncRun.objects.create(
        started_at=started,
        heartbeat_at=started,
        status=SyncRun.Status.RUNNING,
        dry_run=effective_dry_run,
        trigger=trigger,
        hostname=socket.gethostname()[:255],
        pid=os.getpid(),
        as_of=now,
    )
    mode = "dry run" if effective_dry_run else "live"
    logger.info("run #%s started (%s, trigger %s, as of %s)", run.pk, mode, trigger,
                now.isoformat(timespec="seconds"))
    state = _Run(
        run=run, lock=lock, now=now, since=since, chunk_size=chunk_size,
        brevo_client_factory=brevo_client_factory, clock=clock,
    )
    try:
        funnels = funnels_all()
        if not effective_dry_run:
            problems = live_config_problems(funnels=funnels)
            if problems:
                raise RunConfigError("live mode needs: " + "; ".join(problems))
        state.entries_phase(funnels)
        state.purchases_phase()
        complete = True
        if not effective_dry_run:
            complete = state.outbox_phase()
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
        "%s failed, %s Brevo requests",
        run.pk, run.status, run.results_read, run.entries_added,
        "planned" if run.dry_run else "added", run.skipped, run.contacts_sent,
        run.contacts_failed, run.brevo_requests,
    )
    ping_send(event="success")
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
    try:
        run.save()
    finally:
        ping_send(event="fail")
