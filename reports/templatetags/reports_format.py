"""Template filters that show report numbers the way the table formatter does."""

from django import template

from reports.formatters import (
    group_label,
    hours_display,
    points_display,
    rate_display,
    rate_value,
)

register = template.Library()


@register.filter
def rate(value):
    return rate_display(value)


@register.filter
def rate_raw(value):
    """The machine value (a fraction, 4 places) for data attributes; empty for none."""
    number = rate_value(value)
    return "" if number is None else repr(number)


@register.filter
def hours(value):
    return hours_display(value)


@register.filter
def points(value):
    return points_display(value)


@register.filter
def funnel_name(slug, names):
    """A funnel's name from the page's {slug: name}; the slug when unknown."""
    return (names or {}).get(slug, slug)


@register.simple_tag
def group_shown(group, group_by):
    return group_label(group, group_by=group_by)


# --- Control groups (reports/lift_format.py) --------------------------------------------


@register.simple_tag
def lift_summary_text(row):
    from reports.lift_format import lift_summary

    return lift_summary(row)


@register.simple_tag
def lift_verdict_text(row):
    from reports.lift_format import lift_verdict

    return lift_verdict(row)
