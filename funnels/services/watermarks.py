"""Watermarks that do not lose rows committed late.

A reader (test results, payments) remembers the highest MODX id it has handled. That
alone loses rows: a web form's INSERT takes its AUTO_INCREMENT id when it runs but the row
becomes visible only at COMMIT, so if a higher id commits first and a run reads past it,
the lower id appears later *below* the watermark and a plain `Id > watermark` never sees it.

So the watermark keeps, with `last_id`, the ids that were missing below it when it moved
(its gaps), each with the time it was first seen missing. Every run re-reads the gaps by
primary key and handles the rows that have appeared exactly like new rows, in the
transaction that removes them from the list; gaps still missing after
FUNNELS_WATERMARK_GAP_GRACE_MINUTES are dropped (a rolled-back insert or a deleted row
never appears). The transitions here are pure: the callers read, decide, and commit the
new state with `watermark_save` in the transaction that handles the rows it covers.

Bounds, so that the list stays cheap to re-read and to rewrite:
- of one run of consecutive missing ids (a hole) only the HOLE_SPAN highest are kept: rows
  committed late are the ones whose ids were taken just before the row above the hole, a
  handful even on a busy site; a long hole is deleted history or an AUTO_INCREMENT jump
  (the first read of a table, a restart, a bulk delete);
- the whole list holds at most GAP_LIMIT ids, the oldest dropped first with a WARNING: a
  server with auto_increment_increment > 1 leaves a gap after every row.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from django.utils import timezone

from funnels.models import SyncRun, SyncState
from funnels.selectors.funnels import WatermarkState, watermark_gaps_encode

logger = logging.getLogger("funnels.sync")

HOLE_SPAN = 1_000
GAP_LIMIT = 10_000
# Gap ids per primary-key re-read (`Id IN (...)`), whatever the run's chunk size.
GAP_READ_SIZE = 1_000


class WatermarkMoved(RuntimeError):
    """The watermark is not where this run left it: another writer. Nothing was applied."""


@dataclass(frozen=True)
class WatermarkMove:
    """A watermark before and after one chunk, and what the move did to its gaps."""

    before: WatermarkState
    after: WatermarkState
    gaps_added: int = 0
    gaps_filled: int = 0  # re-read and found: handled now
    gaps_expired: int = 0  # still missing after the grace period: dropped
    gaps_dropped: int = 0  # over GAP_LIMIT: the oldest dropped
    ids_untracked: int = 0  # below the HOLE_SPAN highest ids of a long hole

    @property
    def changed(self) -> bool:
        """Something to write: the row is new, or its last id or gaps differ."""
        before, after = self.before, self.after
        return (
            not before.stored
            or before.last_id != after.last_id
            or dict(before.gaps) != dict(after.gaps)
        )

    def log(self, *, run: SyncRun, dry_run: bool) -> None:
        key = self.after.key
        prefix = f"run #{run.pk}: {key} watermark"
        would = "would be " if dry_run else ""
        if self.gaps_filled:
            logger.info(
                "%s: %s ids missing before appeared (committed late) and %shandled",
                prefix, self.gaps_filled, would,
            )
        if self.gaps_expired:
            logger.info(
                "%s: %s gap ids still missing after the grace period %sdropped "
                "(rolled-back inserts or deleted rows)",
                prefix, self.gaps_expired, would,
            )
        if self.ids_untracked:
            logger.info(
                "%s: %s missing ids not tracked (only the highest of a long run of "
                "missing ids are)",
                prefix, self.ids_untracked,
            )
        if self.gaps_dropped:
            logger.warning(
                "%s: gap list full, the %s oldest gap ids %sdropped; a row committed "
                "that late below the watermark will not be read",
                prefix, self.gaps_dropped, would,
            )


def _missing_ids(*, after_id: int, ids: Sequence[int], span: int) -> tuple[list[int], int]:
    """Ids in (after_id, max(ids)) that are not in `ids`, at most `span` (the highest) of
    each hole; and how many were left out. Never builds a hole's full range."""
    kept: list[int] = []
    left_out = 0
    low = after_id
    for high in ids:
        hole = high - low - 1
        if hole > 0:
            take = min(hole, span)
            kept.extend(range(high - take, high))
            left_out += hole - take
        low = high
    return kept, left_out


def _bounded(gaps: dict[int, dt.datetime], *, limit: int) -> tuple[dict[int, dt.datetime], int]:
    if len(gaps) <= limit:
        return gaps, 0
    # Oldest first; of the same age the lowest ids, the least likely to be a late commit.
    ordered = sorted(gaps.items(), key=lambda item: (item[1], item[0]))
    dropped = len(gaps) - limit
    return dict(ordered[dropped:]), dropped


def watermark_after_new_rows(
    *,
    state: WatermarkState,
    ids: Iterable[int],
    now: dt.datetime,
    hole_span: int | None = None,
    limit: int | None = None,
) -> WatermarkMove:
    """The watermark after handling new rows `ids` (all above `state.last_id`): it moves to
    the highest, and the ids it passes without a row become gaps first seen at `now`."""
    hole_span = HOLE_SPAN if hole_span is None else hole_span
    limit = GAP_LIMIT if limit is None else limit
    ordered = sorted(set(ids))
    if not ordered:
        return WatermarkMove(before=state, after=state)
    if ordered[0] <= state.last_id:
        raise ValueError(f"id {ordered[0]} is not above the watermark {state.last_id}")
    missing, untracked = _missing_ids(after_id=state.last_id, ids=ordered, span=hole_span)
    gaps = dict(state.gaps)
    for gap_id in missing:
        gaps[gap_id] = now
    gaps, dropped = _bounded(gaps, limit=limit)
    return WatermarkMove(
        before=state,
        after=replace(state, last_id=ordered[-1], gaps=gaps),
        gaps_added=len(missing),
        gaps_dropped=dropped,
        ids_untracked=untracked,
    )


def watermark_after_gap_reads(
    *,
    state: WatermarkState,
    read_ids: Iterable[int],
    found_ids: Iterable[int],
    now: dt.datetime,
    grace: dt.timedelta,
) -> WatermarkMove:
    """The watermark after re-reading `read_ids` of its gaps: the rows found leave the list
    (the caller handles them in the same transaction), and so do the ids still missing
    that were first seen missing more than `grace` before `now`."""
    read = set(read_ids)
    found = set(found_ids) & read
    oldest_kept = now - grace
    expired = {
        gap_id for gap_id in read - found
        if gap_id in state.gaps and state.gaps[gap_id] < oldest_kept
    }
    gone = found | expired
    gaps = {gap_id: seen for gap_id, seen in state.gaps.items() if gap_id not in gone}
    return WatermarkMove(
        before=state,
        after=replace(state, gaps=gaps),
        gaps_filled=len(found & state.gaps.keys()),
        gaps_expired=len(expired),
    )


def watermark_gap_batches(*, state: WatermarkState, size: int | None = None) -> list[list[int]]:
    """The gap ids in primary-key order, cut into re-read batches."""
    size = GAP_READ_SIZE if size is None else size
    ids = sorted(state.gaps)
    return [ids[start:start + size] for start in range(0, len(ids), size)]


def watermark_save(*, move: WatermarkMove, run: SyncRun | None, stamp: dt.datetime) -> bool:
    """Write `move.after`; call inside the transaction that handles the rows it covers.

    Compare-and-set on the last id the move started from: False (nothing written) if the
    row says otherwise, i.e. someone else moved the watermark, and the caller must roll back.
    """
    if not move.changed:
        return True
    after = move.after
    payload = watermark_gaps_encode(after.gaps)
    if not move.before.stored:
        # get_or_create, not create: a first run that found the table empty has already
        # written the row.
        state, created = SyncState.objects.get_or_create(
            key=after.key, defaults={"last_id": after.last_id, "gaps": payload, "run": run}
        )
        if created:
            return True
        if state.last_id != move.before.last_id:
            return False
    updated = SyncState.objects.filter(key=after.key, last_id=move.before.last_id).update(
        last_id=after.last_id, gaps=payload, run=run, updated_at=stamp
    )
    return updated == 1


def watermark_advance(*, key: str, last_id: int, run: SyncRun | None) -> None:
    """Move the watermark forward (never back), leaving its gaps as they are: for a first
    run's starting point, which passes no id. Chunks move it with watermark_save."""
    updated = SyncState.objects.filter(key=key, last_id__lt=last_id).update(
        last_id=last_id, run=run, updated_at=timezone.now()
    )
    if not updated and not SyncState.objects.filter(key=key).exists():
        SyncState.objects.create(key=key, last_id=last_id, run=run)
