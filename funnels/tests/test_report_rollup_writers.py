"""Every writer of a column the report's rollup counts marks the entry's local day dirty in
its own transaction, and a live run leaves nothing dirty (services/report_rollup.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from funnels.models import FunnelEntry, ReportRollup, ReportRollupDirty, ReportRollupState
from funnels.purchase_rules import Change
from funnels.selectors.outbox import outbox_due_chunk
from funnels.services.entries import ChunkOutcome, entries_previous_refresh, entries_write
from funnels.services.entry_sync import entries_mark_synced
from funnels.services.purchase_writes import entries_purchase_write
from funnels.local_days import day_number
from funnels.services.report_rollup import (
    report_days_dirty_mark,
    report_rollup_refresh,
)
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory

UTC = dt.timezone.utc
# 22:30 UTC is 01:30 the next day in Moscow (the site's zone in the tests).
LATE = dt.datetime(2026, 11, 10, 22, 30, tzinfo=UTC)
LATE_DAY = day_number(day=dt.date(2026, 11, 11))
EARLY = dt.datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
EARLY_DAY = day_number(day=dt.date(2026, 11, 3))


def dirty() -> set[int]:
    return set(ReportRollupDirty.objects.values_list("day", flat=True))


@pytest.fixture
def clean(db, settings):
    settings.TIME_ZONE = "Europe/Moscow"


@pytest.mark.django_db
def test_new_entries_and_relinked_ones_mark_their_days(clean):
    later = FunnelEntryFactory(email="anna@example.com", entered_at=LATE, test_id=1)
    ReportRollupDirty.objects.all().delete()
    earlier = FunnelEntry(email="anna@example.com", funnel_type="language", test_id=2,
                          entered_at=EARLY, test_completed_at=EARLY)
    # A late result enters Anna before her entry: that entry's previous link changes.
    outcome = ChunkOutcome(previous_updates={later.id: EARLY})
    entries_write(entries=[earlier], items=[], outcome=outcome, run=SyncRunFactory())
    assert dirty() == {EARLY_DAY, LATE_DAY}


@pytest.mark.django_db
def test_the_previous_link_refresh_marks_the_days_it_changes(clean):
    FunnelEntryFactory(email="boris@example.com", entered_at=EARLY, test_id=1)
    late = FunnelEntryFactory(email="boris@example.com", entered_at=LATE, test_id=2)
    FunnelEntry.objects.filter(id=late.id).update(previous_entered_at=None)
    ReportRollupDirty.objects.all().delete()
    assert entries_previous_refresh(keys=[("language", "boris@example.com")]) == 1
    assert dirty() == {LATE_DAY}


@pytest.mark.django_db
def test_a_purchase_write_marks_its_entries_days(clean):
    entry = FunnelEntryFactory(entered_at=LATE, certificate_purchased=True,
                               certificate_purchased_at=LATE + dt.timedelta(hours=2))
    ReportRollupDirty.objects.all().delete()
    entries_purchase_write(changes=[Change(entry=entry, payment=None, kind="revoked")],
                           now=LATE + dt.timedelta(days=1))
    assert FunnelEntry.objects.get(id=entry.id).certificate_purchased_at is None
    assert dirty() == {LATE_DAY}


@pytest.mark.django_db
def test_the_first_confirmation_marks_the_days_whose_funnel_starts(clean):
    FunnelEntryFactory(entered_at=LATE, sync_status="pending")
    ReportRollupDirty.objects.all().delete()
    sent = outbox_due_chunk(now=LATE + dt.timedelta(hours=1), after_id=0, limit=10)
    assert entries_mark_synced(entries=sent, at=LATE + dt.timedelta(hours=1)) == 1
    assert dirty() == {LATE_DAY}


@pytest.mark.django_db
def test_a_refresh_recounts_only_the_dirty_days_and_clears_them(clean):
    FunnelEntryFactory(entered_at=EARLY)
    report_rollup_refresh(rebuild=True)
    assert ReportRollupState.objects.get().time_zone == "Europe/Moscow"
    assert list(ReportRollup.objects.values_list("day", "entries")) == [(EARLY_DAY, 1)]
    entry = FunnelEntryFactory(entered_at=LATE)
    # Created by the factory (not a writer of the job): marked here as entries_write does.
    report_days_dirty_mark(times=[entry.entered_at])
    result = report_rollup_refresh()
    assert (result.full, result.days) == (False, 1)
    assert sorted(ReportRollup.objects.values_list("day", "entries")) == [
        (EARLY_DAY, 1), (LATE_DAY, 1),
    ]
    assert dirty() == set()


@pytest.mark.mariadb_only
@pytest.mark.django_db
def test_a_recount_leaves_the_sessions_temporary_table_limits_as_they_were(clean):
    FunnelEntryFactory(entered_at=EARLY)
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.tmp_table_size, @@SESSION.max_heap_table_size")
        before = cursor.fetchone()
        report_rollup_refresh(rebuild=True)
        cursor.execute("SELECT @@SESSION.tmp_table_size, @@SESSION.max_heap_table_size")
        assert cursor.fetchone() == before
    assert list(ReportRollup.objects.values_list("day", "entries")) == [(EARLY_DAY, 1)]


@pytest.mark.django_db
def test_a_rebuild_clears_years_of_marks_left_while_no_rollup_was_built(clean):
    ReportRollupDirty.objects.bulk_create([ReportRollupDirty(day=d) for d in range(1200)])
    FunnelEntryFactory(entered_at=EARLY)
    result = report_rollup_refresh(rebuild=True)
    assert (result.full, result.rows) == (True, 1)
    assert dirty() == set()
