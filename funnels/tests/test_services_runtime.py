import pytest
from django.contrib.admin.models import LogEntry

from funnels.models import FunnelEntry, SyncStatus
from funnels.services.runtime import dry_run_changes, dry_run_set, runtime_settings_get
from funnels.services.sync_retry import entries_retry_sync
from funnels.tests.factories import FunnelEntryFactory

pytestmark = pytest.mark.django_db


def test_runtime_settings_row_exists_after_migrations():
    assert runtime_settings_get().dry_run is True  # APP_DRY_RUN defaults to dry


def test_dry_run_set_records_who_and_from_to(django_user_model):
    user = django_user_model.objects.create_user("op", password="x")
    dry_run_set(user=user, value=False)
    assert runtime_settings_get().dry_run is False
    [change] = dry_run_changes()
    assert change.user == user
    assert change.change_message == "mode: DRY RUN -> LIVE"


def test_setting_the_same_value_is_not_logged(django_user_model):
    user = django_user_model.objects.create_user("op", password="x")
    dry_run_set(user=user, value=True)
    assert LogEntry.objects.count() == 0


def test_retry_resets_only_failed_entries(now):
    failed = FunnelEntryFactory(sync_status=SyncStatus.FAILED, sync_attempts=5, sync_revision=3)
    synced = FunnelEntryFactory(sync_status=SyncStatus.SYNCED)
    assert entries_retry_sync(entry_ids=[failed.id, synced.id], now=now) == 1
    failed.refresh_from_db()
    synced.refresh_from_db()
    assert (failed.sync_status, failed.sync_attempts, failed.sync_revision) == ("pending", 0, 4)
    assert failed.sync_next_attempt_at == now
    assert synced.sync_status == "synced"
    assert FunnelEntry.objects.filter(sync_status="pending").count() == 1
