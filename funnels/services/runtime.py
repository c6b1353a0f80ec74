"""The runtime settings row: the dry-run switch the admin flips while cron runs the job."""

from __future__ import annotations

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from funnels.models import RuntimeSettings, SyncRun


def runtime_settings_get() -> RuntimeSettings:
    # The row is created by migration 0002; get_or_create covers a database that was
    # flushed (tests) and never races harmfully: the primary key is fixed.
    row, _ = RuntimeSettings.objects.get_or_create(
        id=RuntimeSettings.SINGLETON_ID, defaults={"dry_run": settings.APP_DRY_RUN}
    )
    return row


def live_needs_dry_run_first() -> bool:
    """Is the settings row live although nobody chose live here and no dry run has
    completed on this database?

    The row's first value comes from APP_DRY_RUN, and a .env copied from the earlier tool
    says false: without this the very first scheduled run would send. The state is what
    the database already records, so nothing new is stored: a completed dry run is a
    SyncRun row, and a person's switch in the admin is a LogEntry on the settings row
    (dry_run_set). `run_funnels --live` is the other explicit choice; it never asks this.
    """
    if runtime_settings_get().dry_run:
        return False
    completed = (SyncRun.Status.SUCCESS, SyncRun.Status.PARTIAL)
    if SyncRun.objects.filter(dry_run=True, status__in=completed).exists():
        return False
    return not dry_run_changes(limit=1)


def run_mode_resolve(*, forced: bool | None) -> bool:
    """The mode of a run: `forced` (--dry-run / --live) when given, else the settings
    row, except that a live row runs dry until a first dry run has completed here (see
    live_needs_dry_run_first)."""
    if forced is not None:
        return forced
    return runtime_settings_get().dry_run or live_needs_dry_run_first()


def mode_label(*, dry_run: bool) -> str:
    return "DRY RUN" if dry_run else "LIVE"


@transaction.atomic
def dry_run_set(*, user, value: bool) -> RuntimeSettings:
    """Switch the mode and record who did it, from what to what, in the admin log."""
    runtime_settings_get()
    row = RuntimeSettings.objects.select_for_update().get(id=RuntimeSettings.SINGLETON_ID)
    previous = row.dry_run
    if previous == value:
        return row
    row.dry_run = value
    row.updated_by = user
    row.save(update_fields=["dry_run", "updated_by", "updated_at"])
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=[row],
        action_flag=CHANGE,
        change_message=(
            f"mode: {mode_label(dry_run=previous)} -> {mode_label(dry_run=value)}"
        ),
        single_object=True,
    )
    return row


def dry_run_changes(*, limit: int = 10) -> list[LogEntry]:
    content_type = ContentType.objects.get_for_model(RuntimeSettings)
    return list(
        LogEntry.objects.filter(content_type=content_type)
        .select_related("user")
        .order_by("-action_time")[:limit]
    )
