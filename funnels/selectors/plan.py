"""A run's plan (dry run) or outcome (live run), item by item, streamed."""

from __future__ import annotations

from collections.abc import Iterator

from funnels.models import SyncRun, SyncRunItem


def run_items_iter(*, run: SyncRun, chunk_size: int = 2000) -> Iterator[SyncRunItem]:
    return SyncRunItem.objects.filter(run=run).order_by("id").iterator(chunk_size=chunk_size)
