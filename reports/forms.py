"""The report page's filter form: the same filters as `report_conversions`."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.utils.translation import gettext_lazy as _

from reports.selectors import (
    DEFAULT_WINDOW_DAYS,
    GROUP_BY_DAY,
    GROUP_BY_FUNNEL,
    GROUP_BY_MONTH,
    GROUP_BY_TEST,
    GROUP_BY_WEEK,
    MAX_PERIOD_DAYS,
    MAX_WINDOW_DAYS,
    ORIGIN_COMPLETION,
    ORIGIN_START,
)

DEFAULT_PERIOD_DAYS = 30
GROUP_BY_AUTO = ""


def group_by_auto(*, date_from: dt.date, date_to: dt.date) -> str:
    """Days for up to two weeks, weeks for up to a year, months beyond: a trend a manager
    reads at a glance. By day, a month's rates jump between 0 and 50 % on a few dozen
    people a day; a week has enough people for its rate to mean something."""
    days = (date_to - date_from).days + 1
    if days <= 14:
        return GROUP_BY_DAY
    if days <= 366:
        return GROUP_BY_WEEK
    return GROUP_BY_MONTH


class ConversionReportForm(forms.Form):
    from_date = forms.DateField(label=_("From"), widget=forms.DateInput(attrs={"type": "date"}))
    to_date = forms.DateField(label=_("To"), widget=forms.DateInput(attrs={"type": "date"}))
    funnel = forms.ChoiceField(label=_("Funnel"), required=False)
    test = forms.IntegerField(label=_("Test id"), required=False)
    group_by = forms.ChoiceField(
        label=_("Group by"),
        required=False,
        choices=[
            (GROUP_BY_AUTO, _("Automatic (day, week or month)")),
            (GROUP_BY_DAY, _("Day of entry")),
            (GROUP_BY_WEEK, _("Week of entry")),
            (GROUP_BY_MONTH, _("Month of entry")),
            (GROUP_BY_FUNNEL, _("Funnel")),
            (GROUP_BY_TEST, _("Test")),
        ],
    )
    window = forms.IntegerField(
        label=_("Conversion window, days"),
        required=False,
        min_value=1,
        max_value=MAX_WINDOW_DAYS,
    )

    origin = forms.ChoiceField(
        label=_("Count from"),
        required=False,
        choices=[
            (ORIGIN_COMPLETION, _("the test's completion")),
            (ORIGIN_START, _("the funnel's start")),
        ],
    )

    def __init__(self, *args, funnel_slugs: list[str],
                 funnel_names: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        names = funnel_names or {}
        self.fields["funnel"].choices = [("", _("All funnels"))] + [
            (slug, names.get(slug, slug)) for slug in funnel_slugs
        ]

    @classmethod
    def defaults(cls, *, today: dt.date) -> dict[str, str]:
        return {
            "from_date": (today - dt.timedelta(days=DEFAULT_PERIOD_DAYS - 1)).isoformat(),
            "to_date": today.isoformat(),
        }

    def clean(self):
        data = super().clean()
        start, end = data.get("from_date"), data.get("to_date")
        if start and end:
            if start > end:
                raise forms.ValidationError(_("The start date is after the end date."))
            if (end - start).days + 1 > MAX_PERIOD_DAYS:
                raise forms.ValidationError(
                    _("The period is longer than %(days)s days."),
                    params={"days": MAX_PERIOD_DAYS},
                )
            if not data.get("group_by"):
                data["group_by"] = group_by_auto(date_from=start, date_to=end)
        if data.get("window") is None:
            data["window"] = DEFAULT_WINDOW_DAYS
        data["funnel"] = data.get("funnel") or None
        data["origin"] = data.get("origin") or ORIGIN_COMPLETION
        return data

    def report_filters(self) -> dict:
        """Keyword arguments for conversion_report (the form must be valid)."""
        data = self.cleaned_data
        return {
            "date_from": data["from_date"],
            "date_to": data["to_date"],
            "funnel": data["funnel"],
            "test_id": data["test"],
            "window_days": data["window"],
            "group_by": data["group_by"],
            "origin": data["origin"],
        }
