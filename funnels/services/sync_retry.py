"""Operator-initiated retries of entries Brevo refused."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db.models import F

from funnels.models import FunnelEntry, SyncStatus


def entries_retry_sync(*, entry_ids: Iterable[int], now: datetime) -> int:
    """Put failed entries back in the outbox, due now; returns how many were reset.

    The revision is bumped so that a send still in flight for the old state cannot mark
    the entry synced (the outbox compares revisions before marking).
    """
    return FunnelEntry.objects.filter(
        id__in=list(entry_ids), sync_status=SyncStatus.FAILED
    ).update(
        sync_status=SyncStatus.PENDING,
        sync_next_attempt_at=now,
        sync_attempts=0,
        sync_revision=F("sync_revision") + 1,
        updated_at=now,
    )
