"""A run's items page: counts of every action whatever the filter, one page, and the entry
a duplicate duplicates."""

from __future__ import annotations

import pytest

from funnels.models import SyncRunItem
from funnels.selectors.run_items import run_items_page_get
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory, SyncRunItemFactory

pytestmark = pytest.mark.django_db
A = SyncRunItem.Action


def test_counts_page_filter_and_duplicates_in_three_queries(django_assert_num_queries):
    run = SyncRunFactory()
    entry = FunnelEntryFactory(email="dup@example.com", funnel_type="language")
    SyncRunItemFactory(run=run, action=A.ADDED, email="dup@example.com", entry=entry)
    dup = SyncRunItemFactory(run=run, action=A.SKIPPED, reason="duplicate_in_batch",
                             email="dup@example.com", funnel_type="language")
    SyncRunItemFactory(run=run, action=A.SKIPPED, reason="invalid_email", email="zed@x")
    SyncRunItemFactory(action=A.ADDED)  # another run's

    with django_assert_num_queries(4):  # counts, page count, page rows, duplicated
        found = run_items_page_get(run_id=run.pk, action=A.SKIPPED, email_prefixes=["dup@"],
                                   page_number=None, per_page=10)
    assert found.action_counts == {A.ADDED: 1, A.SKIPPED: 2}
    assert [item.pk for item in found.page.object_list] == [dup.pk]
    assert found.entry_id_of(dup) == entry.pk


def test_pages_and_no_duplicate_lookup_without_duplicates(django_assert_num_queries):
    run = SyncRunFactory()
    items = [SyncRunItemFactory(run=run, action=A.WOULD_ADD) for _ in range(5)]
    with django_assert_num_queries(3):
        found = run_items_page_get(run_id=run.pk, action=None, email_prefixes=[],
                                   page_number="2", per_page=2)
    assert [i.pk for i in found.page.object_list] == [items[2].pk, items[3].pk]
    assert found.entry_id_of(found.page.object_list[0]) is None
