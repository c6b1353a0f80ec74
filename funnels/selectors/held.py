"""What the flood guard holds back (services/flood_guard.py), for the dashboard, the
command line and funnels_health."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, Max, Min

from funnels.models import FunnelEntry, SyncRun, SyncStatus


@dataclass(frozen=True)
class HeldSummary:
    entries: int = 0
    contacts: int = 0
    by_funnel: dict[str, int] = field(default_factory=dict)
    runs: list[SyncRun] = field(default_factory=list)  # the runs that held them, newest first


def held_summary_get() -> HeldSummary:
    """Three queries when something is held (grouped on idx_fe_due, distinct emails, the
    runs), one when nothing is."""
    rows = list(
        FunnelEntry.objects.filter(sync_status=SyncStatus.HELD)
        .order_by()
        .values("funnel_type")
        .annotate(entries=Count("id"), first_run=Min("run_id"), last_run=Max("run_id"))
    )
    if not rows:
        return HeldSummary()
    run_ids = {r["first_run"] for r in rows} | {r["last_run"] for r in rows}
    runs = list(
        SyncRun.objects.filter(id__in=run_ids - {None}, contacts_held__gt=0).order_by("-id")
    )
    return HeldSummary(
        entries=sum(r["entries"] for r in rows),
        contacts=FunnelEntry.objects.filter(sync_status=SyncStatus.HELD)
        .aggregate(n=Count("email", distinct=True))["n"],
        by_funnel={r["funnel_type"]: r["entries"] for r in rows},
        runs=runs,
    )
