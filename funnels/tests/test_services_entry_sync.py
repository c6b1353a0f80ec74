import datetime as dt

import pytest
from django.db.models import F

from funnels.models import FunnelEntry, SyncStatus
from funnels.selectors.outbox import outbox_due_chunk
from funnels.services import entry_sync
from funnels.services.entry_sync import entries_defer, entries_mark_failed, entries_mark_synced
from funnels.tests.factories import FunnelEntryFactory

pytestmark = pytest.mark.django_db


def _sent(now):
    """The entries as the outbox read them (with the revision it is about to send)."""
    return outbox_due_chunk(now=now, after_id=0, limit=100)


def _bump(entry):
    # What a purchase recorded during the send does to the row.
    FunnelEntry.objects.filter(id=entry.id).update(sync_revision=F("sync_revision") + 1)


def test_synced_marks_only_the_revisions_that_were_sent(now):
    kept, moved = FunnelEntryFactory(), FunnelEntryFactory()
    sent = _sent(now)
    _bump(moved)
    assert entries_mark_synced(entries=sent, at=now) == 1
    kept.refresh_from_db()
    moved.refresh_from_db()
    assert kept.sync_status == SyncStatus.SYNCED
    assert kept.synced_revision == kept.sync_revision
    assert kept.synced_at == now and kept.sync_attempts == 0
    assert moved.sync_status == SyncStatus.PENDING and moved.synced_at is None


def test_failed_counts_the_attempt_and_keeps_a_moved_revision_due(now):
    kept, moved = FunnelEntryFactory(sync_attempts=2), FunnelEntryFactory()
    sent = _sent(now)
    _bump(moved)
    later = now + dt.timedelta(minutes=20)
    assert entries_mark_failed(entries=sent, error="http_503", next_attempt_at=later, at=now) == 1
    kept.refresh_from_db()
    moved.refresh_from_db()
    assert (kept.sync_status, kept.sync_attempts, kept.sync_last_error) == (
        SyncStatus.FAILED, 3, "http_503",
    )
    assert kept.sync_next_attempt_at == later
    assert moved.sync_status == SyncStatus.PENDING and moved.sync_attempts == 0


def test_deferred_stays_pending_with_the_attempt_recorded(now):
    entry = FunnelEntryFactory()
    assert entries_defer(entries=_sent(now), error="import failed", at=now) == 1
    entry.refresh_from_db()
    assert entry.sync_status == SyncStatus.PENDING
    assert (entry.sync_attempts, entry.sync_last_error) == (1, "import failed")


def test_many_entries_are_updated_in_chunks_of_one_revision(now, monkeypatch):
    monkeypatch.setattr(entry_sync, "_CHUNK", 2)
    entries = [FunnelEntryFactory() for _ in range(5)]
    assert entries_mark_synced(entries=_sent(now), at=now) == 5
    assert FunnelEntry.objects.filter(
        id__in=[e.id for e in entries], sync_status=SyncStatus.SYNCED
    ).count() == 5
