"""Paging for tables too big to count.

`COUNT(*)` over a million funnel entries costs a full index scan on every page view, and
the admin only needs to know whether there is a next page. This paginator fetches one row
more than a page holds: that row's presence says "there is more", its absence says "this
is the last page". The count it reports is therefore a lower bound (rows up to and
including the look-ahead row), which is all the admin's change list uses it for, and the
templates for these lists never show it as a total.
"""

from __future__ import annotations

from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.paginator import Paginator
from django.utils.functional import cached_property

# No table of ours comes near this many rows; a larger OFFSET overflows SQLite's and
# MariaDB's 64-bit integers (a 500 for `?p=1000000000000000000`), so such a page is
# answered as empty without a query, and Django's own validation takes it from there.
MAX_OFFSET = 2**53


def page_number_parse(*, raw: str | None) -> int:
    """The page the change list will ask for; it parses `?p=` the same way."""
    try:
        return int(raw) if raw is not None else 1
    except ValueError:
        return 1


class CountFreePaginator(Paginator):
    def __init__(self, object_list, per_page, *, page_number: int = 1, **kwargs) -> None:
        super().__init__(object_list, per_page, **kwargs)
        self.page_number = page_number
        self._rows: list | None = None

    def _offset(self, number: int) -> int:
        return (max(number, 1) - 1) * self.per_page

    def _rows_with_lookahead(self) -> list:
        if self._rows is None:
            offset = self._offset(self.page_number)
            if offset > MAX_OFFSET:
                self._rows = []
            else:
                self._rows = list(self.object_list[offset : offset + self.per_page + 1])
        return self._rows

    @cached_property
    def count(self) -> int:
        return self._offset(self.page_number) + len(self._rows_with_lookahead())

    @cached_property
    def num_pages(self) -> int:
        # Django divides in floating point, which rounds a page number near 10**18 up to
        # itself, so a page past the end would pass validation; whole numbers do not.
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        hits = max(1, self.count - self.orphans)
        return -(-hits // self.per_page)

    @property
    def has_more(self) -> bool:
        return len(self._rows_with_lookahead()) > self.per_page

    def page(self, number):
        number = self.validate_number(number)
        if number == self.page_number:
            # The rows were already read to learn whether a next page exists.
            return self._get_page(self._rows_with_lookahead()[: self.per_page], number, self)
        return super().page(number)


class CountFreeChangeList(ChangeList):
    """A change list whose pagination is "previous / page N / next", never "of M"."""

    @property
    def count_free_page(self) -> int:
        return max(self.page_num, 1)

    @property
    def previous_page_url(self) -> str | None:
        if self.count_free_page <= 1:
            return None
        return self.get_query_string({PAGE_VAR: self.count_free_page - 1})

    @property
    def first_page_url(self) -> str | None:
        if self.count_free_page <= 2:
            return None
        return self.get_query_string(remove=[PAGE_VAR])

    @property
    def next_page_url(self) -> str | None:
        paginator = getattr(self, "paginator", None)
        if not isinstance(paginator, CountFreePaginator) or not paginator.has_more:
            return None
        return self.get_query_string({PAGE_VAR: self.count_free_page + 1})


class CountFreePaginationMixin:
    """For a ModelAdmin over a huge table: no COUNT(*) for paging or for totals."""

    paginator = CountFreePaginator
    show_full_result_count = False
    # "Show all" on a million rows is never what anyone wants.
    list_max_show_all = 0

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        return self.paginator(
            queryset,
            per_page,
            orphans=orphans,
            allow_empty_first_page=allow_empty_first_page,
            page_number=page_number_parse(raw=request.GET.get(PAGE_VAR)),
        )

    def get_changelist(self, request, **kwargs):
        return CountFreeChangeList
