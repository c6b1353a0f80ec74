"""What waits on the recheck lists (services/recheck.py), for the dashboard."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, Min

from funnels.models import RecheckRow


@dataclass(frozen=True)
class WaitingCounts:
    # source (the reader's watermark key) -> reason -> rows
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    total: int = 0
    oldest: object = None  # first_seen_at of the row waiting longest

    def of(self, source: str) -> int:
        return sum(self.by_source.get(source, {}).values())


def recheck_counts_get() -> WaitingCounts:
    """One grouped query on idx_recheck_reason (source, reason)."""
    rows = list(
        RecheckRow.objects.order_by().values("source", "reason")
        .annotate(n=Count("id"), oldest=Min("first_seen_at"))
    )
    by_source: dict[str, dict[str, int]] = {}
    for row in rows:
        by_source.setdefault(row["source"], {})[row["reason"]] = row["n"]
    return WaitingCounts(
        by_source={s: dict(sorted(r.items())) for s, r in sorted(by_source.items())},
        total=sum(r["n"] for r in rows),
        oldest=min((r["oldest"] for r in rows), default=None),
    )
