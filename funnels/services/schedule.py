"""The schedule's pause switch: "turn the schedule off, run by hand, look at the log,
turn it back on" without shell access.

While paused, a scheduled run (`run_funnels --trigger cron`) records a run with status
`paused` and stops at once (exit 6); a run by hand works with `--ignore-pause`. Who
paused or resumed, and when, is in the admin log next to the mode switches.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import transaction

from funnels.models import RuntimeSettings, SyncRun
from funnels.services.runtime import runtime_settings_get

PAUSED_LOG = "schedule: paused"
RESUMED_LOG = "schedule: resumed"


@transaction.atomic
def schedule_pause_set(*, user, paused: bool, now: dt.datetime) -> RuntimeSettings:
    """Pause or resume; record who did it in the admin log. Idempotent."""
    runtime_settings_get()
    row = RuntimeSettings.objects.select_for_update().get(id=RuntimeSettings.SINGLETON_ID)
    if row.schedule_paused == paused:
        return row
    row.schedule_paused = paused
    row.schedule_paused_at = now if paused else None
    row.updated_by = user
    row.save(update_fields=["schedule_paused", "schedule_paused_at", "updated_by",
                            "updated_at"])
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=[row],
        action_flag=CHANGE,
        change_message=PAUSED_LOG if paused else RESUMED_LOG,
        single_object=True,
    )
    return row


def schedule_pause_blocks(*, trigger: str) -> bool:
    """Does the pause stop a run started by this trigger? Only the schedule's runs."""
    return trigger == SyncRun.Trigger.CRON and runtime_settings_get().schedule_paused


def run_record_paused(*, now: dt.datetime, trigger: str, dry_run: bool | None) -> SyncRun:
    """The record of a scheduled run that found the schedule paused and did nothing."""
    effective = runtime_settings_get().dry_run if dry_run is None else dry_run
    return SyncRun.objects.create(
        started_at=now, finished_at=now, heartbeat_at=now, status=SyncRun.Status.PAUSED,
        dry_run=effective, trigger=trigger, hostname=socket.gethostname()[:255],
        pid=os.getpid(), as_of=now,
    )
