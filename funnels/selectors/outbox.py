"""What is due for Brevo: the outbox is the funnel_entries rows themselves.

Due means pending (new, changed, or reset by the admin's retry), or failed with a next
attempt time that has come. Permanent failures have no next attempt time and are never
due until an operator resets them. Pending rows are a range on idx_fe_due (sync_status,
id), failed ones a range on idx_fe_outbox (sync_status, sync_next_attempt_at, id); only
due rows are sorted, so the cost follows the backlog, not the size of the table.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q

from funnels.models import FunnelEntry, SyncStatus
from funnels.selectors.funnels import funnel_entry_usable_q

_FIELDS = (
    "id",
    "email",
    "funnel_type",
    "certificate_purchased",
    "certificate_purchased_at",
    "sync_revision",
    "sync_attempts",
    "entered_at",
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
    entered_at: datetime


def outbox_due_q(*, now: datetime) -> Q:
    return Q(sync_status=SyncStatus.PENDING) | Q(
        sync_status=SyncStatus.FAILED, sync_next_attempt_at__lte=now
    )


def outbox_due_chunk(*, now: datetime, after_id: int, limit: int) -> list[DueEntry]:
    # Two range reads merged here rather than one OR: MariaDB answers the OR with a scan
    # of the primary key once many rows have just changed status (1.4 s on a million
    # entries, against 2 ms for the two ranges).
    # Rows another writer left in the table are not sent (funnel_entry_usable_q).
    pending = (
        FunnelEntry.objects.filter(funnel_entry_usable_q(), sync_status=SyncStatus.PENDING,
                                   id__gt=after_id)
        .order_by("id")
        .values_list(*_FIELDS)[:limit]
    )
    failed = (
        FunnelEntry.objects.filter(
            funnel_entry_usable_q(), sync_status=SyncStatus.FAILED,
            sync_next_attempt_at__lte=now, id__gt=after_id,
        )
        .order_by("id")
        .values_list(*_FIELDS)[:limit]
    )
    rows = heapq.merge(pending, failed, key=lambda row: row[0])
    return [DueEntry(*row) for row in itertools.islice(rows, limit)]


@dataclass(frozen=True, slots=True)
class PersonEntry:
    """One of a person's entries, as far as their Brevo contact's attributes go."""

    id: int
    email: str
    funnel_type: str
    entered_at: datetime
    certificate_purchased: bool
    certificate_purchased_at: datetime | None


def outbox_people(*, emails: Iterable[str]) -> dict[str, list[PersonEntry]]:
    """Every entry of these people, whatever its funnel or sync state: ONE query on
    idx_email_funnel (its leading column), for a chunk of the outbox. Brevo keeps one
    contact per email, so its attributes are built from all of them."""
    wanted = sorted(set(emails))
    if not wanted:
        return {}
    people: dict[str, list[PersonEntry]] = {}
    # A control entry is not in Brevo's list and must not shape the contact either.
    rows = FunnelEntry.objects.filter(
        funnel_entry_usable_q(), email__in=wanted
    ).exclude(sync_status=SyncStatus.CONTROL).order_by().values_list(
        "id", "email", "funnel_type", "entered_at", "certificate_purchased",
        "certificate_purchased_at",
    )
    for row in rows:
        entry = PersonEntry(*row)
        people.setdefault(entry.email, []).append(entry)
    return people

