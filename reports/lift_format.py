"""The lift (reports/lift.py) as JSON, CSV, a terminal table and the page's chart data.

Only formatting: the command, the page and the downloads show the same numbers.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from django.utils.formats import number_format
from django.utils.translation import gettext as _

from funnels.csv_cells import csv_cell
from reports.lift import (
    DETECTABLE_LIFT,
    NOT_ENOUGH_NO_CONTROL,
    NOT_ENOUGH_SPANS_ZERO,
    NOT_ENOUGH_WINDOW_OPEN,
    GroupNumbers,
    LiftReport,
    LiftRow,
)
from reports.selectors import ORIGIN_START

CSV_BOM = "\ufeff"
NO_VALUE = "—"
LIFT_CSV_COLUMNS = (
    "funnel", "period", "control_share", "day",
    "treatment_entered", "treatment_converted", "treatment_rate",
    "control_entered", "control_converted", "control_rate",
    "lift_points", "lift_low_points", "lift_high_points", "relative_lift",
    "incremental_purchases", "srm_p_value", "not_enough",
)


def _round(value: float | None, places: int) -> float | None:
    return None if value is None else round(value, places)


def _points(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 2)


def not_enough_text(code: str) -> str:
    return {
        NOT_ENOUGH_NO_CONTROL: _("one of the groups has nobody yet"),
        NOT_ENOUGH_WINDOW_OPEN: _("the conversion window has not elapsed for the whole "
                                  "cohort"),
        NOT_ENOUGH_SPANS_ZERO: _("the interval still includes zero"),
    }.get(code, code)


def _group(numbers: GroupNumbers) -> dict[str, Any]:
    return {
        "entered": numbers.entered,
        "converted": numbers.converted,
        "rate": _round(numbers.rate, 4),
        "bought_before_start": numbers.bought_before_start,
        "not_started": numbers.not_started,
    }


def lift_row_data(row: LiftRow) -> dict[str, Any]:
    d = row.difference
    incremental = row.incremental_purchases
    return {
        "funnel": row.funnel,
        "period": row.period,
        "control_share": row.share,
        "period_started_at": row.period_started_at.isoformat() if row.period_started_at
        else None,
        "treatment": _group(row.treatment),
        "control": _group(row.control),
        "lift_points": _points(d.difference) if d else None,
        "lift_interval_points": [_points(d.low), _points(d.high)] if d else None,
        "relative_lift": _round(row.relative_lift, 4),
        "incremental_purchases": _round(incremental, 1),
        "incremental_interval": (
            [round(d.low * row.treatment.entered, 1), round(d.high * row.treatment.entered, 1)]
            if d else None
        ),
        "sample_ratio": None if row.sample_ratio is None else {
            "statistic": round(row.sample_ratio.statistic, 4),
            "p_value": float(f"{row.sample_ratio.p_value:.4g}"),
            "warning": row.srm_warning,
        },
        "not_enough": list(row.not_enough),
        "detectable_lift_points": round(DETECTABLE_LIFT * 100, 1),
        "people_needed": row.people_needed,
        "days_more": row.days_more,
        "curve": [
            {
                "day": p.day,
                "treatment_converted": p.treatment_converted,
                "treatment_rate": _round(p.treatment_rate, 4),
                "control_converted": p.control_converted,
                "control_rate": _round(p.control_rate, 4),
            }
            for p in row.curve
        ],
    }


def lift_data(lift: LiftReport | None) -> dict[str, Any]:
    """The report JSON's additions: its origin, the before-start counts and the lift."""
    if lift is None:
        return {}
    return {
        "origin": lift.origin,
        "bought_before_start": dict(lift.bought_before_start),
        "funnel_not_started": dict(lift.not_started),
        "lift": [lift_row_data(row) for row in lift.rows],
    }


def lift_csv(lift: LiftReport) -> str:
    """One line per funnel, period and day of the cumulative curve; the period's summary
    numbers repeated on each of its lines, so that one sheet holds everything."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(LIFT_CSV_COLUMNS)
    for row in lift.rows:
        data = lift_row_data(row)
        low, high = data["lift_interval_points"] or (None, None)
        summary = [
            data["lift_points"], low, high, data["relative_lift"],
            data["incremental_purchases"],
            data["sample_ratio"]["p_value"] if data["sample_ratio"] else None,
            " ".join(data["not_enough"]),
        ]
        for point in data["curve"]:
            cells = [
                row.funnel, row.period, row.share, point["day"],
                row.treatment.entered, point["treatment_converted"], point["treatment_rate"],
                row.control.entered, point["control_converted"], point["control_rate"],
                *summary,
            ]
            writer.writerow([csv_cell(c) for c in cells])
    return CSV_BOM + out.getvalue()


def _signed(points: float | None) -> str:
    if points is None:
        return NO_VALUE
    value = round(points, 1)
    sign = "+" if value > 0 else ("−" if value < 0 else "")
    return f"{sign}{number_format(abs(value), decimal_pos=1)}"


def _percent(rate: float | None) -> str:
    if rate is None:
        return NO_VALUE
    return f"{number_format(round(rate * 100, 1), decimal_pos=1)}%"


def lift_summary(row: LiftRow) -> str:
    """One sentence with the lift, its interval and what it means in purchases."""
    d = row.difference
    if d is None:
        return _("No lift yet: one of the groups has nobody.")
    return _(
        "Lift %(lift)s points (95%% CI %(low)s to %(high)s), relative %(relative)s, "
        "about %(incremental)s purchases the emails added (%(inc_low)s to %(inc_high)s)."
    ) % {
        "lift": _signed(d.difference * 100),
        "low": _signed(d.low * 100),
        "high": _signed(d.high * 100),
        "relative": _signed(row.relative_lift * 100) + "%" if row.relative_lift is not None
        else NO_VALUE,
        "incremental": number_format(round(row.incremental_purchases, 1), decimal_pos=1),
        "inc_low": number_format(round(d.low * row.treatment.entered, 1), decimal_pos=1),
        "inc_high": number_format(round(d.high * row.treatment.entered, 1), decimal_pos=1),
    }


def lift_verdict(row: LiftRow) -> str:
    """What a reader may conclude, in words: the warning first, then the waiting."""
    if row.srm_warning:
        return _(
            "Warning: the split between the groups differs from the configured share beyond "
            "chance (p = %(p)s): the assignment is broken and this lift must not be trusted."
        ) % {"p": f"{row.sample_ratio.p_value:.2g}"}
    if row.not_enough:
        text = _("Not enough data yet: %(why)s.") % {
            "why": "; ".join(not_enough_text(code) for code in row.not_enough)
        }
        if row.days_more:
            text += " " + _(
                "A %(lift)s-point lift becomes detectable with about %(people)s people in "
                "this period, about %(days)s more days at the current volume (and the "
                "window after that)."
            ) % {"lift": round(DETECTABLE_LIFT * 100), "people": row.people_needed,
                 "days": row.days_more}
        return text
    if row.difference.difference > 0:
        return _("The emails sell: the treated convert more than the held-out people.")
    return _("The treated convert less than the held-out people.")


def lift_table_lines(lift: LiftReport | None, *, funnel_names: dict[str, str] | None = None
                     ) -> list[str]:
    """The lift for a terminal, under the report's table."""
    if lift is None:
        return []
    names = funnel_names or {}
    lines = [
        "",
        _("Counted from: %(origin)s.") % {"origin": origin_label(lift.origin)},
        _("Bought before the funnel started: %(counts)s.") % {
            "counts": ", ".join(f"{names.get(f, f)} {n}"
                                for f, n in lift.bought_before_start.items()) or NO_VALUE
        },
    ]
    for row in lift.rows:
        lines.append("")
        lines.append(
            _("Lift of %(funnel)s, control period %(period)s (%(share)s%% held out, since "
              "%(since)s):") % {
                "funnel": names.get(row.funnel, row.funnel), "period": row.period,
                "share": row.share,
                "since": row.period_started_at.date().isoformat() if row.period_started_at
                else NO_VALUE,
            }
        )
        header = [_("Group"), _("Entered"), _("Converted"), _("Rate"),
                  _("Bought before start")]
        body = [
            [_("Treatment"), str(row.treatment.entered), str(row.treatment.converted),
             _percent(row.treatment.rate), str(row.treatment.bought_before_start)],
            [_("Control"), str(row.control.entered), str(row.control.converted),
             _percent(row.control.rate), str(row.control.bought_before_start)],
        ]
        lines.extend("  " + line for line in _grid(header, body))
        lines.append("  " + lift_summary(row))
        if row.sample_ratio is not None:
            lines.append("  " + _(
                "Sample ratio: %(control)s held out of %(total)s, %(expected)s expected; "
                "p = %(p)s."
            ) % {"control": row.control.entered,
                 "total": row.control.entered + row.treatment.entered,
                 "expected": number_format(round(row.sample_ratio.expected_control, 1),
                                           decimal_pos=1),
                 "p": f"{row.sample_ratio.p_value:.4g}"})
        lines.append("  " + lift_verdict(row))
        lines.append("  " + (
            _("Cumulative conversion by day since the funnel's start:")
            if lift.origin == ORIGIN_START
            else _("Cumulative conversion by day since the test's completion:")
        ))
        header = [_("Day"), _("Treatment"), _("Rate"), _("Control"), _("Rate")]
        body = [
            [str(p.day), str(p.treatment_converted), _percent(p.treatment_rate),
             str(p.control_converted), _percent(p.control_rate)]
            for p in row.curve
        ]
        lines.extend("  " + line for line in _grid(header, body))
    return lines


def _grid(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]

    def render(cells):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [render(header), "  ".join("-" * w for w in widths), *[render(b) for b in body]]


def origin_label(origin: str) -> str:
    if origin == ORIGIN_START:
        return _("the funnel's start (Brevo's first confirmation, or the hold-out)")
    return _("the test's completion")


def lift_chart_data(lift: LiftReport | None, *, funnel_names: dict[str, str] | None = None
                    ) -> list[dict[str, Any]]:
    """One chart per funnel and period: cumulative conversion, treatment and control."""
    if lift is None:
        return []
    names = funnel_names or {}
    charts = []
    for row in lift.rows:
        def percent(rate):
            return None if rate is None else round(rate * 100, 2)
        charts.append({
            "id": f"lift-chart-{row.funnel}-{row.period}",
            "title": _("%(funnel)s, period %(period)s") % {
                "funnel": names.get(row.funnel, row.funnel), "period": row.period},
            "labels": [str(p.day) for p in row.curve],
            "datasets": [
                {"label": _("Treatment, %"), "data": [percent(p.treatment_rate)
                                                      for p in row.curve]},
                {"label": _("Control, %"), "data": [percent(p.control_rate)
                                                    for p in row.curve]},
            ],
            "x_axis": (_("Days since the funnel's start") if lift.origin == ORIGIN_START
                       else _("Days since the test's completion")),
            "y_axis": _("Converted, cumulative %"),
        })
    return charts
