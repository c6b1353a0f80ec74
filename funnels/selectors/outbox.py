"""What is due for Brevo: the outbox is the funnel_entries rows themselves.

Due means pending (new, changed, or reset by the admin's retry), or failed with a next
attempt time that has come. Permanent failures have no next attempt time and are never
due until an operator resets them. Both branches are ranges on idx_fe_outbox
(sync_status, sync_next_attempt_at, id); only due rows are sorted, so the cost follows
the backlog, not the size of the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q

from funnels.models import FunnelEntry, SyncStatus

_FIELDS = (
    "id",
    "email",
    "funnel_type",
    "certificate_purchased",
    "certificate_purchased_at",
    "sync_revision",
    "sync_attempts",
)


@dataclass(frozen=True, slots=True)
class DueEntry:
    id: int
    email: str
    funnel_type: str
    certificate_purchased: bool
    certificate_purchased_at: datetime | None
    sync_revision: int
    sync_attempts: int


def outbox_due_q(*, now: datetime) -> Q:
    return Q(sync_status=SyncStatus.PENDING) | Q(
        sync_status=SyncStatus.FAILED, sync_next_attempt_at__lte=now
    )


def outbox_due_chunk(*, now: datetime, after_id: int, limit: int) -> list[DueEntry]:
    rows = (
        FunnelEntry.objects.filter(outbox_due_q(now=now), id__gt=after_id)
        .order_by("id")
        .values_list(*_FIELDS)[:limit]
    )
    return [DueEntry(*row) for row in rows]


def outbox_due_count(*, now: datetime) -> int:
    return FunnelEntry.objects.filter(outbox_due_q(now=now)).count()
