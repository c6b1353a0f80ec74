"""Migration 0014: the funnel's start of existing entries, from their first confirmation."""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.apps import apps

from funnels.models import ExperimentGroup, FunnelEntry, SyncStatus
from funnels.tests.factories import FunnelEntryFactory


@pytest.mark.django_db
def test_0014_takes_the_start_from_the_only_confirmation_and_guesses_nothing_else():
    fill = importlib.import_module(
        "funnels.migrations.0014_control_groups"
    ).funnel_started_from_first_sync
    t = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    once = FunnelEntryFactory(sync_status=SyncStatus.SYNCED, sync_revision=1,
                              synced_revision=1, synced_at=t)
    # Bought since: pending again, but revision 1 is still the last one Brevo confirmed.
    pending_again = FunnelEntryFactory(sync_status=SyncStatus.PENDING, sync_revision=2,
                                       synced_revision=1, synced_at=t)
    resent = FunnelEntryFactory(sync_status=SyncStatus.SYNCED, sync_revision=2,
                                synced_revision=2, synced_at=t + dt.timedelta(days=3))
    never = FunnelEntryFactory(sync_status=SyncStatus.PENDING)
    adopted = FunnelEntryFactory(sync_status=SyncStatus.SYNCED, synced_revision=1,
                                 synced_at=None)
    FunnelEntry.objects.update(funnel_started_at=None)

    fill(apps, None)

    started = dict(FunnelEntry.objects.values_list("id", "funnel_started_at"))
    assert started == {once.id: t, pending_again.id: t, resent.id: None, never.id: None,
                       adopted.id: None}
    assert set(FunnelEntry.objects.values_list("experiment_group", "control_period")) == {
        (ExperimentGroup.TREATMENT, 0)
    }


@pytest.mark.django_db
def test_a_row_written_without_the_new_columns_is_treatment_in_period_0():
    from django.db import connection

    table = connection.ops.quote_name(FunnelEntry._meta.db_table)
    with connection.cursor() as cursor:
        # Only the columns a writer that predates control groups knows.
        cursor.execute(
            f"INSERT INTO {table} (email, funnel_type, user_id, test_id, entered_at, "
            "certificate_purchased, sync_status, sync_revision, synced_revision, "
            "sync_attempts, sync_last_error, created_at, updated_at) VALUES (%s, %s, 1, 5, "
            "%s, %s, %s, 1, 0, 0, '', %s, %s)",
            ["old@example.com", "language", "2026-11-01 12:00:00", False, "pending",
             "2026-11-01 12:00:00", "2026-11-01 12:00:00"],
        )
    row = FunnelEntry.objects.get(email="old@example.com")
    assert (row.experiment_group, row.control_period, row.funnel_started_at) == (
        ExperimentGroup.TREATMENT, 0, None
    )
