"""One way to read a MODX source incrementally: watermark, gaps, recheck list, chunks.

Test results (services/results.py) and certificate payments (services/purchases.py) are
read the same way; each source supplies only how to read rows (after an id, by ids), what
makes a row undecidable for now (`waiting`), and how to apply a chunk of decided rows.
This module owns the rest, in this order:

1. the recheck list (services/recheck.py): rows that waited, re-read by primary key; those
   MODX changed (or whose reason the clock may lift) are decided again, like new rows;
   rows gone from MODX, and rows whose period is over, leave the list. Where MODX's
   database computes digests (funnels/modx/digests.py), one query first asks it for the
   count and digest sum of the listed rows: equal to the list's own, nothing changed and
   no row is read one by one;
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
from funnels.modx.digests import digests_supported
from funnels.services.recheck import (
    RecheckChanges,
    RecheckList,
    Waiting,
    recheck_digests_save,
    recheck_list_load,
    recheck_save,
    recheck_summary_load,
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

    def light_by_ids(
        self, *, ids: Sequence[int], digest: bool
    ) -> dict[int, tuple[str, int | None]]:
        """(fingerprint, digest) of each row with these ids that exists now: the decision's
        columns as MODX returns them, no objects built (the fingerprint equal to
        `fingerprint` of the same row read whole); the digest from the same statement when
        `digest`, else None."""

    def digest_total(self, *, ids: Sequence[int]) -> tuple[int, int]:
        """(rows with these ids that exist, the sum of their digests): one query, one row
        back (only where digests are supported)."""

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
        self.digests = digests_supported()
        # Loaded when first needed: a run whose waiting rows MODX did not change, none of
        # them due for a decision, never builds the list (recheck).
        self._list: RecheckList | None = None
        self._waiting = 0

    def waiting_now(self) -> int:
        return len(self._list.rows) if self._list is not None else self._waiting

    @property
    def list(self) -> RecheckList:
        if self._list is None:
            self._list = recheck_list_load(
                source=self.source.key,
                period=dt.timedelta(days=settings.FUNNELS_RECHECK_DAYS),
                limit=settings.FUNNELS_RECHECK_MAX_ROWS,
                clock_reasons=self.source.clock_reasons,
                now=self.now,
            )
        return self._list

    # -- passes -----------------------------------------------------------------------

    def recheck(self) -> None:
        """Every waiting row is read back by primary key. Rows whose columns MODX has not
        changed, and whose reason the clock cannot lift, stay as they are; only the others
        are read whole and decided again.

        Where MODX computes digests, the list's ids, digests and flags are read (not the
        whole list), and one query asks MODX for the count and digest sum of those rows:
        when both match, nothing changed, and only rows the clock may decide or whose
        period is over go further. Otherwise (a difference, digests not known yet, or no
        digests on this database) a light read of the decision's columns finds the changed
        rows by fingerprint, and stores the digests it read with them. With 10,000 rows
        waiting, the light read and its fingerprints were most of an idle run's time."""
        summary = recheck_summary_load(
            source=self.source.key, clock_reasons=self.source.clock_reasons, now=self.now
        )
        self._waiting = len(summary.ids)
        if not summary.ids:
            # Nothing waits: the list is known to be empty, no need to read it again.
            self._list = RecheckList(
                source=self.source.key, rows={},
                period=dt.timedelta(days=settings.FUNNELS_RECHECK_DAYS),
                limit=settings.FUNNELS_RECHECK_MAX_ROWS,
                clock_reasons=self.source.clock_reasons,
            )
            return
        if self.digests and not summary.unknown:
            found, total = self.source.digest_total(ids=summary.ids)
            if (found, total) == (len(summary.ids), summary.total):
                self.result.rows_rechecked += found
                if summary.attention:
                    clock = [i for i in summary.ids if self.list.rows[i].clock]
                    self._decide_again(batch=summary.ids, found=summary.ids, stale=clock)
                return
        ids = self.list.ids()
        for start in range(0, len(ids), RECHECK_READ_SIZE):
            batch = ids[start:start + RECHECK_READ_SIZE]
            light = self.source.light_by_ids(ids=batch, digest=self.digests)
            self.result.rows_rechecked += len(light)
            stale = [
                modx_id for modx_id, (fingerprint, _) in light.items()
                if self.list.needs_decision(modx_id=modx_id, fingerprint=fingerprint)
            ]
            self._decide_again(
                batch=batch, found=list(light), stale=stale, digests=self._digests_read(light)
            )

    def _digests_read(self, light: dict[int, tuple[str, int | None]]) -> dict[int, int]:
        """Digests to store: read with the fingerprint the list holds (so they describe the
        row as it was decided), and not stored yet."""
        rows = self.list.rows
        return {
            modx_id: digest for modx_id, (fingerprint, digest) in light.items()
            if digest is not None and modx_id in rows
            and rows[modx_id].fingerprint == fingerprint and rows[modx_id].digest != digest
        }

    def _decide_again(
        self, *, batch: list[int], found: list[int], stale: list[int],
        digests: dict[int, int] | None = None,
    ) -> None:
        """Read `stale` whole and decide them like new rows; rows of `batch` not `found`
        leave the list, and so do unchanged ones whose period is over."""
        changed = self.source.read_by_ids(ids=stale) if stale else []
        changed_ids = {self.source.row_id(row) for row in changed}
        parts = _parts(changed, self.chunk_size)
        for number, part in enumerate(parts, start=1):
            drops = None
            if number == len(parts):
                # Gone from MODX, or unchanged and past its period: off the list with the
                # batch's last part. A row that vanished between the two reads is still
                # waiting here; the next run finds it gone.
                drops = self.list.plan_drops(
                    read_ids=batch, found_ids=found,
                    still_waiting=[i for i in found if i not in changed_ids], now=self.now,
                )
            self.commit(part, move=None, drops=drops, rechecked=True,
                        digests=digests if number == len(parts) else None)

    def digests_fill(self) -> None:
        """Digests for rows this run put on the list (read whole, no digest): read lightly
        once more, kept where the fingerprint is still the one decided on, so that the next
        idle run can compare sums. Live runs only; nothing when no row lacks one."""
        if not self.digests or self.dry_run or self._list is None:
            return
        missing = sorted(i for i, w in self._list.rows.items() if w.digest is None)
        for start in range(0, len(missing), RECHECK_READ_SIZE):
            batch = missing[start:start + RECHECK_READ_SIZE]
            digests = self._digests_read(self.source.light_by_ids(ids=batch, digest=True))
            if not digests:
                continue
            with transaction.atomic():
                recheck_digests_save(source=self.source.key, digests=digests)
                if self.lock is not None:
                    self.lock.check()
            for modx_id, digest in digests.items():
                self._list.rows[modx_id].digest = digest

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
        rechecked: bool = False, digests: dict[int, int] | None = None,
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
        # A row that leaves the list or changes on it keeps no digest from this read.
        digests = {
            modx_id: digest for modx_id, digest in (digests or {}).items()
            if modx_id not in changes.remove and modx_id not in changes.upsert
        }
        # A waiting row decided again only because the clock may have lifted its reason,
        # and still waiting for the same reason, was not "read" in any useful sense.
        self.result.rows_read += (
            len(decided) + len(changes.upsert) if rechecked else len(rows)
        )
        if self.dry_run:
            if decided:
                source.apply(decided)
            SyncRunItem.objects.bulk_create(items, batch_size=1000)
        elif decided or changes.changed or items or digests or move is not None:
            # (With nothing to write, no transaction and no lock check: an idle re-read.)
            with transaction.atomic():
                if decided:
                    source.apply(decided)
                if changes.changed:
                    recheck_save(source=source.key, changes=changes, run=self.run,
                                 now=self.now)
                if digests:
                    recheck_digests_save(source=source.key, digests=digests)
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
        if not self.dry_run:
            for modx_id, digest in digests.items():
                self.list.rows[modx_id].digest = digest
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
    reader.digests_fill()
    reader.result.last_id = state.last_id
    reader.result.waiting_now = reader.waiting_now()
    return reader.result
