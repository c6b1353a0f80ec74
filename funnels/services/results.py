"""The test-results phase of a run: MODX results -> funnel entries, through the one reader.

How to read (selectors/candidates.py), when a result cannot be decided yet, and how a
chunk of decided results is applied (services/entries.py's planner and writer, the flood
guard); services/modx_reader.py does the rest (watermark, gaps, recheck list, chunks).

A result cannot be decided yet, and waits on the recheck list, when it has no email or an
invalid one, no test id, no completion time (MODX has not finished it: not a completed
test), or a completion time further in the future than FUNNELS_CLOCK_SKEW_MINUTES (a clock
or time-zone error, or a typo; time or a correction makes it decidable). Everything else
is decided by the funnel rules.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

from funnels.codes import Source, WaitReason
from funnels.emails import email_check, email_normalize
from funnels.locks import RunLock
from funnels.modx.times import modx_time_text
from funnels.models import Funnel, SyncRun, SyncRunItem, SyncStatus
from funnels.selectors.candidates import (
    Candidate,
    KindResolver,
    candidates_by_ids,
    candidates_columns_by_ids,
    candidates_digest_total,
    candidates_chunk,
    candidates_start_id,
)
from funnels.selectors.funnels import funnel_list_ids
from funnels.services.entries import EntryPlanner, entries_write
from funnels.services.flood_guard import FloodGuard, entries_hold_run
from funnels.services.modx_reader import ReadResult, modx_source_read
from funnels.services.recheck import Waiting, fingerprint_of


def candidate_waiting(
    candidate: Candidate, *, now: dt.datetime, skew: dt.timedelta
) -> Waiting | None:
    """Why this result cannot be decided yet, or None if the funnel rules can decide it."""
    check = email_check(candidate.raw_email)
    test_id = candidate.test_id
    if not check.ok:
        return Waiting(check.reason, email=email_normalize(candidate.raw_email), test_id=test_id)
    if test_id is None:
        return Waiting(WaitReason.NO_TEST_ID, email=check.email)
    if candidate.completed_at is None:
        return Waiting(WaitReason.NO_COMPLETION_TIME, email=check.email, test_id=test_id)
    if candidate.completed_at > now + skew:
        return Waiting(WaitReason.COMPLETED_IN_FUTURE, email=check.email, clock=True,
                       test_id=test_id)
    return None


@dataclass
class ResultsOutcome:
    read: ReadResult
    added: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    contacts_held: int = 0  # the run's new contacts, when the guard tripped
    guard_limit: int = 0
    # Everyone the run entered (or, dry, would enter): the purchase phase reads their
    # paid payments, which may have been read before their entry existed.
    entered_emails: frozenset[str] = frozenset()

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())


class ResultSource:
    key = Source.RESULTS
    clock_reasons = frozenset({WaitReason.COMPLETED_IN_FUTURE})

    def __init__(
        self, *, run: SyncRun, planner: EntryPlanner, guard: FloodGuard,
        now: dt.datetime, since: dt.date,
    ) -> None:
        self.run = run
        self.planner = planner
        self.guard = guard
        self.dry_run = run.dry_run
        self.now = now
        self.since = since
        self.skew = dt.timedelta(minutes=settings.FUNNELS_CLOCK_SKEW_MINUTES)
        self.kinds = KindResolver()
        self.added = 0
        self.skipped: Counter = Counter()

    def read_after(self, *, after_id: int, limit: int) -> list[Candidate]:
        return candidates_chunk(after_id=after_id, limit=limit, kinds=self.kinds)

    def read_by_ids(self, *, ids: Sequence[int]) -> list[Candidate]:
        return candidates_by_ids(ids=ids, kinds=self.kinds)

    def row_id(self, row: Candidate) -> int:
        return row.result_id

    def fingerprint(self, row: Candidate) -> str:
        return fingerprint_of(row.raw_email, row.test_id, modx_time_text(row.completed_at))

    def light_by_ids(
        self, *, ids: Sequence[int], digest: bool
    ) -> dict[int, tuple[str, int | None]]:
        return {
            row[0]: (
                fingerprint_of(row[1], row[2], modx_time_text(row[3])),
                int(row[4]) if digest else None,
            )
            for row in candidates_columns_by_ids(ids=ids, digest=digest)
        }

    def digest_total(self, *, ids: Sequence[int]) -> tuple[int, int]:
        return candidates_digest_total(ids=ids)

    def waiting(self, row: Candidate) -> Waiting | None:
        return candidate_waiting(row, now=self.now, skew=self.skew)

    def first_start_id(self) -> int:
        return candidates_start_id(since=self.since)

    def apply(self, rows: list[Candidate]) -> None:
        if not rows:
            return
        entries, items, outcome = self.planner.plan_chunk(
            run=self.run, candidates=rows, now=self.now
        )
        added = {SyncRunItem.Action.ADDED, SyncRunItem.Action.WOULD_ADD}
        # Control entries make no Brevo contact: the flood guard does not count them.
        trips = self.guard.admit([
            item.email for item in items
            if item.action in added
            and (item.email, item.funnel_type) not in outcome.control_keys
        ])
        if trips:
            # From this chunk on, and for what earlier chunks of the run committed.
            self.planner.hold = True
            for entry in entries:
                if entry.sync_status != SyncStatus.CONTROL:  # control is never sent
                    entry.sync_status = SyncStatus.HELD
        if not self.dry_run:
            entries_write(entries=entries, items=items, outcome=outcome, run=self.run)
            if trips:
                entries_hold_run(run=self.run)
        else:
            SyncRunItem.objects.bulk_create(items, batch_size=1000)
        self.added += outcome.added
        self.skipped.update(outcome.skipped_by_reason)


def results_sync(
    *, run: SyncRun, funnels: list[Funnel], now: dt.datetime, since: dt.date,
    chunk_size: int, lock: RunLock | None = None, progress=None,
    list_ids: dict[str, int | None] | None = None,
) -> ResultsOutcome:
    """Read new, late and waiting test results and enter the decidable ones (planned
    only, when `run.dry_run`). `list_ids`: the run's, else read from the funnels."""
    planner = EntryPlanner(
        funnels=funnels,
        list_ids=funnel_list_ids(funnels=funnels) if list_ids is None else list_ids,
    )
    guard = FloodGuard(limit=settings.FUNNELS_MAX_NEW_CONTACTS_PER_RUN)
    source = ResultSource(run=run, planner=planner, guard=guard, now=now, since=since)
    read = modx_source_read(
        source=source, run=run, now=now, chunk_size=chunk_size, lock=lock,
        progress=(
            (lambda done: progress(rows_read=done.rows_read, added=source.added,
                                   skipped=source.skipped))
            if progress is not None else None
        ),
    )
    return ResultsOutcome(
        read=read, added=source.added, skipped_by_reason=source.skipped,
        contacts_held=guard.held, guard_limit=guard.limit,
        entered_emails=frozenset(guard.emails),
    )
