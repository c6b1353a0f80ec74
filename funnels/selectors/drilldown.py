"""The admin's date drill-down (year / month / day) without Django's DISTINCT over every
row: the bounds come from the first and last row (two index look-ups on the field), and
every year, month or day between them is offered. A link may lead to an empty page, which
is cheaper than finding out in advance."""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field as dataclass_field

from django.db.models import QuerySet
from django.utils import formats, timezone
from django.utils.translation import gettext


@dataclass(frozen=True)
class DateLink:
    params: dict[str, int]  # the drill-down's query parameters for this choice
    title: str


@dataclass(frozen=True)
class DateDrilldown:
    show: bool
    choices: list[DateLink] = dataclass_field(default_factory=list)
    back: DateLink | None = None
    # The chosen day: shown as a title, not a link.
    current: str | None = None


def date_bounds_get(*, queryset: QuerySet, field: str) -> tuple[dt.date, dt.date] | None:
    """The local dates of the first and last row by `field` (two index look-ups)."""
    values = queryset.values_list(field, flat=True)
    first = values.order_by(field).first()
    last = values.order_by(f"-{field}").first()
    if first is None or last is None:
        return None
    return timezone.localtime(first).date(), timezone.localtime(last).date()


def date_drilldown_get(
    *, queryset: QuerySet, field: str, params: Mapping[str, str]
) -> DateDrilldown:
    """The choices for the level the request's `<field>__year/month/day` parameters chose."""
    bounds = date_bounds_get(queryset=queryset, field=field)
    if bounds is None:
        return DateDrilldown(show=False)
    first, last = bounds
    y, m, d = f"{field}__year", f"{field}__month", f"{field}__day"
    try:
        year = int(params[y]) if params.get(y) else None
        month = int(params[m]) if params.get(m) else None
        day = int(params[d]) if params.get(d) else None
        if year and month and day:
            chosen = dt.date(year, month, day)
            return DateDrilldown(
                show=True,
                back=DateLink({y: year, m: month},
                              formats.date_format(chosen, "YEAR_MONTH_FORMAT")),
                current=formats.date_format(chosen, "MONTH_DAY_FORMAT"),
            )
        if year and month:
            days_in_month = calendar.monthrange(year, month)[1]
            days = [dt.date(year, month, n) for n in range(1, days_in_month + 1)]
            return DateDrilldown(
                show=True,
                back=DateLink({y: year}, str(year)),
                choices=[
                    DateLink({y: year, m: month, d: day.day},
                             formats.date_format(day, "MONTH_DAY_FORMAT"))
                    for day in days if first <= day <= last
                ],
            )
        if year is None and first.year == last.year:
            year = first.year
        if year:
            months = [
                dt.date(year, n, 1) for n in range(1, 13)
                if (first.year, first.month) <= (year, n) <= (last.year, last.month)
            ]
            return DateDrilldown(
                show=True,
                back=DateLink({}, gettext("All dates")),
                choices=[
                    DateLink({y: year, m: month_start.month},
                             formats.date_format(month_start, "YEAR_MONTH_FORMAT"))
                    for month_start in months
                ],
            )
    except (ValueError, OverflowError):
        return DateDrilldown(show=False)
    return DateDrilldown(
        show=True,
        choices=[DateLink({y: year_n}, str(year_n))
                 for year_n in range(first.year, last.year + 1)],
    )
