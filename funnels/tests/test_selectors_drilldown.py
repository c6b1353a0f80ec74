"""The admin's date drill-down: choices between the first and last row, in local days."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import translation

from funnels.models import FunnelEntry
from funnels.selectors.drilldown import date_drilldown_get
from funnels.tests.factories import FunnelEntryFactory

pytestmark = pytest.mark.django_db
UTC = dt.UTC
F = "entered_at"


def drill(**params):
    with translation.override("en"):
        return date_drilldown_get(queryset=FunnelEntry.objects.all(), field=F,
                                  params={f"{F}__{k}": str(v) for k, v in params.items()})


def test_nothing_to_drill_into_without_rows():
    assert drill().show is False


def test_levels_offer_only_what_lies_between_the_first_and_last_row(django_assert_num_queries):
    # 21:30 UTC on 9 October is 10 October in Moscow: days are local.
    FunnelEntryFactory(entered_at=dt.datetime(2025, 12, 30, 12, 0, tzinfo=UTC))
    FunnelEntryFactory(entered_at=dt.datetime(2026, 10, 9, 21, 30, tzinfo=UTC))
    with django_assert_num_queries(2):
        years = drill()
    assert [c.params for c in years.choices] == [{f"{F}__year": 2025}, {f"{F}__year": 2026}]
    months = drill(year=2026)
    assert [c.params[f"{F}__month"] for c in months.choices] == list(range(1, 11))
    assert months.back.params == {}
    days = drill(year=2026, month=10)
    assert [c.params[f"{F}__day"] for c in days.choices] == list(range(1, 11))
    assert days.back.params == {f"{F}__year": 2026}
    day = drill(year=2026, month=10, day=10)
    assert day.choices == [] and day.current and day.back.params[f"{F}__month"] == 10


def test_one_year_of_rows_opens_at_its_months():
    FunnelEntryFactory(entered_at=dt.datetime(2026, 3, 5, 12, 0, tzinfo=UTC))
    FunnelEntryFactory(entered_at=dt.datetime(2026, 5, 5, 12, 0, tzinfo=UTC))
    assert [c.params[f"{F}__month"] for c in drill().choices] == [3, 4, 5]


@pytest.mark.parametrize("params", [{"year": "x"}, {"year": 2026, "month": 13},
                                    {"year": 2026, "month": 2, "day": 30}])
def test_a_hand_made_bad_date_hides_the_drill_down(params):
    FunnelEntryFactory(entered_at=dt.datetime(2026, 3, 5, 12, 0, tzinfo=UTC))
    assert drill(**params).show is False
