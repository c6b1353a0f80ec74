"""Reads of what the Brevo audit stored (services/brevo_audit.py): opt-outs for the
outbox and the repair, drift for the dashboard, the per-funnel counts for the report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, Q

from funnels.models import OPTED_OUT_STATES, BrevoAudit, BrevoState, FunnelEntry, SyncStatus
from funnels.selectors.funnels import funnel_entry_usable_q


@dataclass(frozen=True)
class OptedOut:
    """People whose opt-out wins: blacklisted (every list) or unsubscribed from a list."""

    blacklisted: frozenset[str]
    unsubscribed: frozenset[tuple[str, str]]  # (email, funnel slug)

    def covers(self, *, email: str, funnel_type: str) -> bool:
        return email in self.blacklisted or (email, funnel_type) in self.unsubscribed


def brevo_opted_out(*, emails: Iterable[str]) -> OptedOut:
    """ONE query on idx_email_funnel: any entry of the person blacklisted, or any entry of
    the person in a funnel unsubscribed from that funnel's list. Per person and funnel,
    not per entry: a re-entry (a new test) has no state of its own yet."""
    wanted = sorted(set(emails))
    if not wanted:
        return OptedOut(frozenset(), frozenset())
    rows = (
        FunnelEntry.objects.filter(email__in=wanted, brevo_state__in=OPTED_OUT_STATES)
        .order_by().values_list("email", "funnel_type", "brevo_state").distinct()
    )
    blacklisted, unsubscribed = set(), set()
    for email, funnel_type, state in rows:
        if state == BrevoState.BLACKLISTED:
            blacklisted.add(email)
        else:
            unsubscribed.add((email, funnel_type))
    return OptedOut(frozenset(blacklisted), frozenset(unsubscribed))


def brevo_drift_q() -> Q:
    """Synced here, missing there: our row says Brevo has the person, the audit did not
    find them in the list."""
    return Q(sync_status=SyncStatus.SYNCED, brevo_state=BrevoState.MISSING)


def brevo_drift_by_funnel() -> dict[str, int]:
    """People per funnel whose entry is synced here and missing in Brevo."""
    rows = (
        FunnelEntry.objects.filter(funnel_entry_usable_q(), brevo_drift_q())
        .values("funnel_type").annotate(n=Count("email", distinct=True)).order_by()
    )
    return {row["funnel_type"]: row["n"] for row in rows}


def brevo_audit_latest() -> BrevoAudit | None:
    return BrevoAudit.objects.order_by("-started_at", "-id").first()
