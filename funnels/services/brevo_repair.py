"""Put people the Brevo audit found missing from their list back in it (an admin action).

The entries are put back in the outbox, due now, so the next run sends them the one way
every contact goes (upsert or import with the list, under the run lock, attributes built
from all of the person's entries); a deleted contact is created again. A person's opt-out
always wins: anyone the audit found blacklisted, or unsubscribed from that funnel's list,
is left alone here, and the outbox would skip them anyway. The state is cleared (not
audited since) so that the entry does not count as drift until the next audit reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import transaction
from django.db.models import F

from funnels.models import BrevoState, FunnelEntry, SyncStatus
from funnels.selectors.brevo_state import brevo_opted_out
from funnels.selectors.funnels import funnel_entry_usable_q

logger = logging.getLogger("funnels.brevo_audit")

RESTORE_PERMISSION = "funnels.restore_missing"


@dataclass(frozen=True)
class RestoreResult:
    requeued: int
    opted_out: int


def brevo_missing_restore(*, entry_ids: Iterable[int], now: datetime, user) -> RestoreResult:
    """Re-queue the given entries that are missing in Brevo; audited in the admin log."""
    rows = list(
        FunnelEntry.objects.filter(
            funnel_entry_usable_q(), id__in=list(entry_ids), brevo_state=BrevoState.MISSING,
            # Only what we hold as in Brevo: never a control entry (held out by design),
            # a held one (the flood guard decides) or one already on its way.
            sync_status=SyncStatus.SYNCED,
        ).order_by("id").values_list("id", "email", "funnel_type")
    )
    opted_out = brevo_opted_out(emails=(email for _, email, _ in rows))
    ids = [i for i, email, funnel in rows
           if not opted_out.covers(email=email, funnel_type=funnel)]
    with transaction.atomic():
        requeued = FunnelEntry.objects.filter(id__in=ids).update(
            sync_status=SyncStatus.PENDING, sync_next_attempt_at=now, sync_attempts=0,
            sync_revision=F("sync_revision") + 1, brevo_state="", updated_at=now,
        )
        if requeued:
            LogEntry.objects.log_actions(
                user_id=user.pk,
                queryset=list(FunnelEntry.objects.filter(id__in=ids)),
                action_flag=CHANGE,
                change_message="put back in its Brevo list (was missing there)",
            )
    logger.warning(
        "%s put %s entries missing in Brevo back in the outbox (%s left alone: opted out)",
        getattr(user, "username", None) or "somebody", requeued, len(rows) - len(ids),
    )
    return RestoreResult(requeued=requeued, opted_out=len(rows) - len(ids))
