"""Migration 0013: the funnel's start of existing entries, from their first confirmation."""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.apps import apps

from funnels.models import ExperimentGroup, FunnelEntry, SyncStatus
from funnels.tests.factories import FunnelEntryFactory


@pytest.mark.django_db
def test_0013_takes_the_start_from_the_only_confirmation_and_guesses_nothing_else():
    fill = importlib.import_module(
        "funnels.migrations.0013_control_groups"
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
