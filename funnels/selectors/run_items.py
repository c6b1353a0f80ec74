"""A run's items as the admin's run page shows them: counts by action, one page of items
(filtered by action and by the start of an email), and the entries they link to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.core.paginator import Page, Paginator
from django.db.models import Count, Q

from funnels.codes import SkipReason
from funnels.models import FunnelEntry, SyncRunItem


@dataclass(frozen=True)
class RunItemsPage:
    action_counts: dict[str, int]  # every action of the run, whatever the filter
    page: Page
    # (email, funnel) -> the entry a `duplicate_in_batch` item duplicates (the earliest).
    duplicated: dict[tuple[str, str], int]

    def entry_id_of(self, item: SyncRunItem) -> int | None:
        if item.entry_id is None and item.reason == SkipReason.DUPLICATE_IN_BATCH:
            return self.duplicated.get((item.email, item.funnel_type))
        return item.entry_id


def run_items_page_get(
    *, run_id: int, action: str | None, email_prefixes: Iterable[str],
    page_number: str | int | None, per_page: int,
) -> RunItemsPage:
    """Three queries: the counts, the page (and Paginator's count), the duplicated entries
    (only when the page has duplicates). `email_prefixes`: stored (normalised) forms of
    what the operator typed (admin.email_search_prefixes)."""
    items = SyncRunItem.objects.filter(run_id=run_id)
    action_counts = dict(items.values_list("action").annotate(n=Count("id")).order_by())
    shown = items.filter(action=action) if action else items
    prefixes = list(email_prefixes)
    if prefixes:
        condition = Q()
        for prefix in prefixes:
            condition |= Q(email__istartswith=prefix)
        shown = shown.filter(condition)
    page = Paginator(shown.order_by("id"), per_page).get_page(page_number)
    page.object_list = list(page.object_list)
    duplicates = {
        (row.email, row.funnel_type) for row in page.object_list
        if row.reason == SkipReason.DUPLICATE_IN_BATCH and row.email
    }
    duplicated: dict[tuple[str, str], int] = {}
    if duplicates:
        for entry_id, email, funnel_type in (
            FunnelEntry.objects.filter(email__in={email for email, _f in duplicates})
            .order_by("entered_at", "id")
            .values_list("id", "email", "funnel_type")
        ):
            duplicated.setdefault((email, funnel_type), entry_id)
    return RunItemsPage(action_counts=action_counts, page=page, duplicated=duplicated)
