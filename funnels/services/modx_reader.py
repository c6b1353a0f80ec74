"""One way to read a MODX source incrementally: watermark, gaps, recheck list, chunks.

Test results (services/results.py) and certificate payments (services/purchases.py) are
read the same way; each source supplies only how to read rows (after an id, by ids), what
makes a row undecidable for now (`waiting`), and how to apply a chunk of decided rows.
This module owns the rest, in this order:

1. the recheck list (services/recheck.py): rows that waited, re-read by primary key; those
   MODX changed (or whose reason the clock may lift) are decided again, like new rows;
   rows gone from MODX, and rows whose period is over, leave the list;
2. the watermark's gaps (services/watermarks.py): ids passed without a row, re-read by
   primary key; rows that have appeared are handled like new ones;
3. new rows above the watermark, a chunk at a time, until MODX has nothing newer.

Every chunk commits in one transaction: the source's writes, the recheck list's changes,
the run's items and the watermark (compare-and-set on its last id), and the run lock is
checked just before the commit. A crash between chunks loses nothing and repeats nothing.
A dry run decides the same and writes only its items.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from funnels.locks import RunLock
from funnels.models import SyncRun, SyncRunItem
from funnels.selectors.funnels import WatermarkState, watermark_state_get
from funnels.services.recheck import (
    RecheckChanges,
    RecheckList,
    Waiting,
    recheck_list_load,
    recheck_save,
)
from funnels.services.watermarks import (
    WatermarkMove,
    WatermarkMoved,
    watermark_advance,
    watermark_after_gap_reads,
    watermark_after_new_rows,
    watermark_gap_batches,
    watermark_save,
)

logger = logging.getLogger("funnels.sync")

# Waiting rows re-read per primary-key IN list: one query for a list of this size, so a run
# with nothing new costs the same few queries however many rows wait (up to the bound).
RECHECK_READ_SIZE = 10_000

# Reasons a row leaves a recheck list without being decided (SyncRun.skipped_by_reason).
DROPPED_EXPIRED = "recheck_expired"
DROPPED_LIST_FULL = "recheck_list_full"


class ModxSource(Protocol):
    key: str  # the watermark's key, and the recheck list's source
    clock_reasons: frozenset[str]  # waiting reasons that time alone can lift

    def read_after(self, *, after_id: int, limit: int) -> list[Any]: ...

    def read_by_ids(self, *, ids: Sequence[int]) -> list[Any]: ...

    def fingerprints_by_ids(self, *, ids: Sequence[int]) -> dict[int, str]:
        """The fingerprint of each row with these ids that exists now: the decision's
        columns as MODX returns them, no objects built (equal to `fingerprint` of the same
        row read whole)."""

    def row_id(self, row: Any) -> int: ...

    def fingerprint(self, row: Any) -> str: ...

    def waiting(self, row: Any) -> Waiting | None: ...

    def apply(self, rows: list[Any]) -> None:
        """Decide and write decided rows (inside the driver's transaction when live)."""

    def first_start_id(self) -> int:
        """Where a first run starts: every id above it is read."""


@dataclass
class ReadResult:
    rows_read: int = 0  # new rows, late rows, and waiting rows decided again
    rows_rechecked: int = 0  # waiting rows re-read
    waiting_by_reason: Counter = field(default_factory=Counter)  # put on the list now
    dropped_by_reason: Counter = field(default_factory=Counter)
    waiting_now: int = 0  # on the list at the end
    last_id: int = 0


class ModxReader:
    """The reader of one source for one run; `commit` is one chunk, start to finish."""

    def __init__(
        self, *, source: ModxSource, run: SyncRun, now: dt.datetime,
        chunk_size: int, lock: RunLock | None,
        progress: Callable[[ReadResult], None] | None = None,
    ) -> None:
        self.source = source
        self.progress = progress
        self.run = run
        self.dry_run = run.dry_run
        self.now = now
        self.chunk_size = chunk_size
        self.lock = lock
        self.result = ReadResult()
        self.list: RecheckList = recheck_list_load(
            source=source.key,
            period=dt.timedelta(days=settings.FUNNELS_RECHECK_DAYS),
            limit=settings.FUNNELS_RECHECK_MAX_ROWS,
            clock_reasons=source.clock_reasons,
            now=now,
        )

    # -- passes -----------------------------------------------------------------------

    def recheck(self) -> None:
        """Waiting rows whose columns MODX has not changed, and whose reason the clock
        cannot lift, stay as they are: a first, light read (their fingerprints only) finds
        the others, and only those are read whole and decided again. With 10,000 rows
        waiting and none changed, building and comparing whole rows was most of an idle
        run's time."""
        ids = self.list.ids()
        for start in range(0, len(ids), RECHECK_READ_SIZE):
            batch = ids[start:start + RECHECK_READ_SIZE]
            prints = self.source.fingerprints_by_ids(ids=batch)
            self.result.rows_rechecked += len(prints)
            stale = [
                modx_id for modx_id, fingerprint in prints.items()
                if self.list.needs_decision(modx_id=modx_id, fingerprint=fingerprint)
            ]
            changed = self.source.read_by_ids(ids=stale) if stale else []
            changed_ids = {self.source.row_id(row) for row in changed}
            parts = _parts(changed, self.chunk_size)
            for number, part in enumerate(parts, start=1):
                drops = None
                if number == len(parts):
                    # Gone from MODX, or unchanged and past its period: off the list with
                    # the batch's last part. A row that vanished between the two reads is
                    # still waiting here; the next run finds it gone.
                    drops = self.list.plan_drops(
                        read_ids=batch, found_ids=prints,
                        still_waiting=[i for i in prints if i not in changed_ids], now=self.now,
                    )
                self.commit(part, move=None, drops=drops, rechecked=True)

    def gaps(self, state: WatermarkState) -> WatermarkState:
        grace = dt.timedelta(minutes=settings.FUNNELS_WATERMARK_GAP_GRACE_MINUTES)
        for ids in watermark_gap_batches(state=state):
            rows = self.source.read_by_ids(ids=ids)
            parts = _parts(rows, self.chunk_size)
            for number, part in enumerate(parts, start=1):
                found = [self.source.row_id(row) for row in part]
                # The batch's ids still missing past the grace period leave with its
                # last part.
                move = watermark_after_gap_reads(
                    state=state,
                    read_ids=ids if number == len(parts) else found,
                    found_ids=found,
                    now=self.now,
                    grace=grace,
                )
                if not move.changed:
                    continue
                self.commit(part, move=move)
                state = move.after
                move.log(run=self.run, dry_run=self.dry_run)
        return state

    def new_rows(self, state: WatermarkState) -> WatermarkState:
        while True:
            rows = self.source.read_after(after_id=state.last_id, limit=self.chunk_size)
            if not rows:
                return state
            move = watermark_after_new_rows(
                state=state, ids=[self.source.row_id(row) for row in rows], now=self.now
            )
            self.commit(rows, move=move)
            state = move.after
            move.log(run=self.run, dry_run=self.dry_run)
            if len(rows) < self.chunk_size:
                return state

    # -- one chunk --------------------------------------------------------------------

    def commit(
        self, rows: list, *, move: WatermarkMove | None, drops: RecheckChanges | None = None,
        rechecked: bool = False,
    ) -> None:
        source = self.source
        decided: list = []
        waiting: dict[int, tuple[Waiting, str]] = {}
        for row in rows:
            why = source.waiting(row)
            if why is None:
                decided.append(row)
            else:
                waiting[source.row_id(row)] = (why, source.fingerprint(row))
        changes = self.list.plan(
            decided=[source.row_id(row) for row in decided], waiting=waiting, now=self.now
        )
        # A row still waiting at the end of its period is dropped, changed or not.
        for modx_id in waiting:
            known = self.list.rows.get(modx_id)
            if known is not None and known.expired:
                changes.upsert.pop(modx_id, None)
                changes.newly_waiting = [w for w in changes.newly_waiting if w.modx_id != modx_id]
                changes.remove.add(modx_id)
                changes.expired.append(known)
        if drops is not None:
            changes.remove |= drops.remove
            changes.expired += drops.expired
            changes.vanished += drops.vanished
        self.list.bound(changes)
        items = self._items(changes)
        # A waiting row decided again only because the clock may have lifted its reason,
        # and still waiting for the same reason, was not "read" in any useful sense.
        self.result.rows_read += (
            len(decided) + len(changes.upsert) if rechecked else len(rows)
        )
        if self.dry_run:
            source.apply(decided)
            SyncRunItem.objects.bulk_create(items, batch_size=1000)
        else:
            with transaction.atomic():
                source.apply(decided)
                if changes.changed:
                    recheck_save(source=source.key, changes=changes, run=self.run,
                                 now=self.now)
                SyncRunItem.objects.bulk_create(items, batch_size=1000)
                if move is not None and not watermark_save(
                    move=move, run=self.run, stamp=self.now
                ):
                    raise WatermarkMoved(
                        f"the {source.key} watermark is no longer {move.before.last_id}"
                    )
                if self.lock is not None:
                    self.lock.check()
        self.list.apply(changes)
        self._count(changes)
        if rows and self.progress is not None:
            # The run's counters and heartbeat move with every chunk of rows (an idle
            # re-read of unchanged waiting rows writes nothing).
            self.progress(self.result)

    def _items(self, changes: RecheckChanges) -> list[SyncRunItem]:
        """Said once: when a row is first put on the list (or its reason changes), and
        when it is dropped; never on every re-read."""
        self.list.times_load(
            [w.modx_id for w in (*changes.newly_waiting, *changes.expired, *changes.overflow)]
        )
        items = [
            SyncRunItem(
                run=self.run, action=SyncRunItem.Action.WAITING, reason=w.reason,
                email=w.email, source_id=w.modx_id, test_id=w.test_id,
                detail=f"rechecked until {_day(w.recheck_until)}",
            )
            for w in changes.newly_waiting
        ]
        for reason, dropped in ((DROPPED_EXPIRED, changes.expired),
                                (DROPPED_LIST_FULL, changes.overflow)):
            items += [
                SyncRunItem(
                    run=self.run, action=SyncRunItem.Action.SKIPPED, reason=reason,
                    email=w.email, source_id=w.modx_id,
                    detail=f"waited since {_day(w.first_seen_at)}: {w.reason}",
                )
                for w in dropped
            ]
        return items

    def _count(self, changes: RecheckChanges) -> None:
        result = self.result
        result.waiting_by_reason.update(w.reason for w in changes.newly_waiting)
        result.dropped_by_reason[DROPPED_EXPIRED] += len(changes.expired)
        result.dropped_by_reason[DROPPED_LIST_FULL] += len(changes.overflow)
        if changes.vanished:
            # Deleted in MODX: nobody to decide about, and nothing for the run to report.
            logger.info(
                "run #%s: %s: %s waiting rows no longer in MODX, taken off the list",
                self.run.pk, self.source.key, len(changes.vanished),
            )
        if changes.overflow:
            logger.warning(
                "run #%s: %s recheck list full (%s rows): the %s rows waiting longest %s",
                self.run.pk, self.source.key, self.list.limit, len(changes.overflow),
                "would be dropped" if self.dry_run else "dropped",
            )
        if changes.expired:
            logger.info(
                "run #%s: %s: %s rows still undecidable after %s days %s",
                self.run.pk, self.source.key, len(changes.expired),
                settings.FUNNELS_RECHECK_DAYS, "would be dropped" if self.dry_run else "dropped",
            )


def _parts(rows: list, size: int) -> list[list]:
    """`rows` cut into parts of `size`; always at least one (maybe empty) part, so that a
    pass's bookkeeping (gaps expired, rows gone) has a commit to ride with."""
    return [rows[i:i + size] for i in range(0, len(rows), size)] or [[]]


def _day(moment: dt.datetime) -> str:
    return timezone.localtime(moment).date().isoformat()


def modx_source_read(
    *, source: ModxSource, run: SyncRun, now: dt.datetime, chunk_size: int,
    lock: RunLock | None = None,
    progress: Callable[[ReadResult], None] | None = None,
) -> ReadResult:
    """Read `source` as the module docstring says; returns what was read and decided."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    reader = ModxReader(
        source=source, run=run, now=now, chunk_size=chunk_size, lock=lock, progress=progress,
    )
    dry_run = run.dry_run
    state = watermark_state_get(key=source.key)
    if state is None:
        start = source.first_start_id()
        if not dry_run:
            watermark_advance(key=source.key, last_id=start, run=run)
        state = WatermarkState(key=source.key, last_id=start, stored=not dry_run)
    reader.recheck()
    # Rows committed late below the watermark before new ones: they are older.
    state = reader.gaps(state)
    state = reader.new_rows(state)
    reader.result.last_id = state.last_id
    reader.result.waiting_now = len(reader.list.rows)
    return reader.result
