"""The flood guard: a run that would send more new contacts than usual sends none of them.

One bad date, a re-imported table or a first run pointed at the wrong day can turn into
tens of thousands of "you just finished a test" emails. Careful sync tools put a row-change
threshold before their destination; ours is FUNNELS_MAX_NEW_CONTACTS_PER_RUN (0: off).
A run whose new entries belong to more distinct emails than that still records every
entry, but with sync status `held`: the outbox never picks them up, the run ends `held`
(exit code 5), funnels_health is CRITICAL and the admin dashboard shows what is held and
why, until somebody with the permission releases them (dashboard button, or
`run_funnels --release-held`). A legitimate backfill is one release away.

The count is per run: entries committed by an earlier chunk of the same run are switched
to held in the transaction of the chunk that crosses the limit, and later chunks create
theirs held. A run that dies before crossing it leaves at most the limit pending.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import transaction

from funnels.models import FunnelEntry, SyncRun, SyncStatus
from funnels.services.runtime import runtime_settings_get

logger = logging.getLogger("funnels.sync")


class FloodGuard:
    """Counts the distinct emails a run adds; trips once past `limit` (0: never)."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.emails: set[str] = set()
        self.tripped = False

    def admit(self, emails: list[str]) -> bool:
        """Count a chunk's new contacts; True when this chunk is the one that trips it."""
        self.emails.update(emails)
        if self.tripped or not self.limit or len(self.emails) <= self.limit:
            return False
        self.tripped = True
        return True

    @property
    def held(self) -> int:
        return len(self.emails) if self.tripped else 0


def entries_hold_run(*, run: SyncRun) -> int:
    """Hold back the run's new entries not yet sent (inside the chunk's transaction)."""
    return FunnelEntry.objects.filter(
        run=run, sync_status=SyncStatus.PENDING, synced_revision=0
    ).update(sync_status=SyncStatus.HELD)


def held_entries_release(*, now: dt.datetime, user=None, source: str) -> int:
    """Let every held entry go to Brevo with the next push; returns how many. Audited: in
    the admin log when a user did it, and in the application log always."""
    with transaction.atomic():
        released = FunnelEntry.objects.filter(sync_status=SyncStatus.HELD).update(
            sync_status=SyncStatus.PENDING, sync_next_attempt_at=now, updated_at=now
        )
        if released and user is not None:
            LogEntry.objects.log_actions(
                user_id=user.pk,
                queryset=[runtime_settings_get()],
                action_flag=CHANGE,
                change_message=f"released {released} entries held by the flood guard",
                single_object=True,
            )
    if released:
        logger.warning(
            "%s released %s entries held by the flood guard (%s); the next push sends them",
            getattr(user, "username", None) or "somebody", released, source,
        )
    return released
