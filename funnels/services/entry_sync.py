"""An entry's Brevo sync outcomes, one service each, on one compare-and-set.

The outbox reads due entries (with their sync_revision), sends them, and then records
what happened. Between the read and the record, a purchase may have changed an entry and
bumped its revision: that entry's new state has not been sent, so the outcome of the old
send must not be written over it. Every outcome therefore updates a row only while its
sync_revision is still the one that was sent (`_compare_and_set`, the one place that
knows this); a row whose revision moved on stays pending and goes out in the next push.

The caller owns the transaction (the outbox writes an outcome, its run items and the
run-lock check together).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from django.db.models import F, Value
from django.db.models.functions import Coalesce

from funnels.models import FunnelEntry, SyncStatus
from funnels.services.report_rollup import report_days_dirty_mark

_CHUNK = 1000


class SentEntry(Protocol):
    """What an outcome needs of an entry: which row, and which revision of it was sent."""

    id: int
    sync_revision: int
    entered_at: datetime


def _compare_and_set(entries: Iterable[SentEntry], **changes) -> int:
    """Apply `changes` to the rows whose revision is still the one sent; the number
    changed. One UPDATE per revision and chunk of ids, so the cost follows the number of
    distinct revisions in the batch, not the number of entries."""
    by_revision: dict[int, list[int]] = defaultdict(list)
    for entry in entries:
        by_revision[entry.sync_revision].append(entry.id)
    changed = 0
    for revision, ids in by_revision.items():
        for start in range(0, len(ids), _CHUNK):
            changed += FunnelEntry.objects.filter(
                id__in=ids[start : start + _CHUNK], sync_revision=revision
            ).update(**changes)
    return changed


def entries_mark_synced(*, entries: Iterable[SentEntry], at: datetime) -> int:
    """Brevo confirmed these revisions: synced, attempts and error cleared."""
    entries = list(entries)
    # funnel_started_at may be set: the report's rollup counts these days again (a
    # superset: most have a start already, or are today's, dirty anyway).
    report_days_dirty_mark(times=[entry.entered_at for entry in entries])
    return _compare_and_set(
        entries,
        sync_status=SyncStatus.SYNCED,
        # The revision Brevo now holds: the one sent, which the compare-and-set kept.
        synced_revision=F("sync_revision"),
        synced_at=at,
        # The funnel starts for the person at Brevo's first confirmation.
        funnel_started_at=Coalesce(F("funnel_started_at"), Value(at)),
        sync_attempts=0,
        sync_last_error="",
        sync_next_attempt_at=None,
        updated_at=at,
    )


def entries_mark_failed(
    *, entries: Iterable[SentEntry], error: str, next_attempt_at: datetime | None, at: datetime
) -> int:
    """Brevo refused or failed: failed, one more attempt counted. `next_attempt_at` None is
    a permanent failure, never due again until an operator resets it."""
    return _compare_and_set(
        entries,
        sync_status=SyncStatus.FAILED,
        sync_attempts=F("sync_attempts") + 1,
        sync_last_error=error,
        sync_next_attempt_at=next_attempt_at,
        updated_at=at,
    )


def entries_defer(*, entries: Iterable[SentEntry], error: str, at: datetime) -> int:
    """Sent but not confirmed (an import that failed or ran out of time): still pending,
    due again at the next run, with the attempt and the error recorded."""
    return _compare_and_set(
        entries,
        sync_status=SyncStatus.PENDING,
        sync_attempts=F("sync_attempts") + 1,
        sync_last_error=error,
        sync_next_attempt_at=None,
        updated_at=at,
    )

