"""The runtime settings row: the dry-run switch the admin flips while cron runs the job."""

from __future__ import annotations

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from funnels.models import RuntimeSettings


def runtime_settings_get() -> RuntimeSettings:
    # The row is created by migration 0002; get_or_create covers a database that was
    # flushed (tests) and never races harmfully: the primary key is fixed.
    row, _ = RuntimeSettings.objects.get_or_create(
        id=RuntimeSettings.SINGLETON_ID, defaults={"dry_run": settings.APP_DRY_RUN}
    )
    return row


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
