"""Views of one ConversionReport: a readable table, CSV, JSON and the page's chart data.

They only format: every number comes from reports.selectors.conversion_report, so the
command, the page and the download agree.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from django.utils.formats import number_format
from django.utils.translation import gettext as _

from funnels.csv_cells import csv_cell
from reports.lift_format import lift_data, lift_table_lines
from reports.selectors import GROUP_BY_TEST, PERIOD_GROUPINGS, ConversionReport, ReportRow

# Excel reads a UTF-8 file as UTF-8 only when it starts with a byte order mark.
CSV_BOM = "\ufeff"
CSV_COLUMNS = ("funnel", "group", "entered", "converted", "rate", "median_hours", "p90_hours")
NO_VALUE = "—"


# --- Shared pieces -----------------------------------------------------------------------


def rate_value(rate: float | None) -> float | None:
    """The rate as machines get it: a fraction rounded to 4 places."""
    return None if rate is None else round(rate, 4)


def rate_display(rate: float | None) -> str:
    """The rate as people read it: a percentage with one decimal, or a dash."""
    if rate is None:
        return NO_VALUE
    # number_format cuts digits off rather than rounding.
    return f"{number_format(round(rate * 100, 1), decimal_pos=1)}%"


def points_display(points: float | None) -> str:
    """A change of rate in percentage points, signed, in the page's number format
    ("+1,5", "−4,3" in Russian, beside "21,1%")."""
    if points is None:
        return NO_VALUE
    value = round(points, 1)
    sign = "+" if value > 0 else ("−" if value < 0 else "")
    return f"{sign}{number_format(abs(value), decimal_pos=1)}"


def hours_display(hours: int | None) -> str:
    return NO_VALUE if hours is None else str(hours)


def row_data(row: ReportRow) -> dict[str, Any]:
    return {
        "funnel": row.funnel,
        "group": row.group,
        "entered": row.entered,
        "converted": row.converted,
        "rate": rate_value(row.rate),
        "median_hours": row.median_hours,
        "p90_hours": row.p90_hours,
    }


def rate_change_points(report: ConversionReport) -> float | None:
    """Change in rate against the previous period, in percentage points."""
    now, before = report.totals.rate, report.previous_totals.rate
    if now is None or before is None:
        return None
    return round((now - before) * 100, 1)


# --- JSON --------------------------------------------------------------------------------


def report_data(report: ConversionReport, *, opt_outs: list | None = None) -> dict[str, Any]:
    """The JSON document (see docs/reports.md for the shape). `opt_outs`
    (reports.selectors.opt_out_counts) adds what the last Brevo audit read."""
    data = {
        "period": {
            "from": report.date_from.isoformat(),
            "to": report.date_to.isoformat(),
            "days": report.period_days,
            "time_zone": report.time_zone,
        },
        "filters": {
            "funnel": report.funnel,
            "test": report.test_id,
            "window_days": report.window_days,
            "group_by": report.group_by,
        },
        "rows": [row_data(row) for row in report.rows],
        "totals": row_data(report.totals),
        "histogram": [{"day": b.day, "converted": b.converted} for b in report.histogram],
        "previous": {
            "from": report.previous_from.isoformat(),
            "to": report.previous_to.isoformat(),
            "rows": [row_data(row) for row in report.previous_rows],
            "totals": row_data(report.previous_totals),
            "rate_change_points": rate_change_points(report),
        },
        "window_open_from": (
            report.window_open_from.isoformat() if report.window_open_from else None
        ),
        # Control groups: origin, bought before the funnel started, the lift.
        **lift_data(report.lift),
    }
    if opt_outs is not None:
        data["opt_outs"] = [opt_out_data(row) for row in opt_outs]
    return data


def report_json(report: ConversionReport, *, opt_outs: list | None = None) -> str:
    return json.dumps(report_data(report, opt_outs=opt_outs), ensure_ascii=False, indent=2) + "\n"


# --- CSV ---------------------------------------------------------------------------------


def report_csv(report: ConversionReport) -> str:
    """One line per row, the columns of the JSON rows; UTF-8 with a BOM for Excel."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        data = row_data(row)
        writer.writerow([csv_cell(data[column]) for column in CSV_COLUMNS])
    return CSV_BOM + out.getvalue()


def report_csv_people(report: ConversionReport, *, funnel_names: dict[str, str]) -> str:
    """The CSV for people: opens as a table in a Russian Excel by double-click.

    Excel takes the list separator from the system's regional settings, which is ";" in
    Russian (the decimal separator there is ","); "sep=;" on the first line would say so
    too, but Excel then ignores the BOM and garbles Cyrillic, so the BOM (UTF-8) and ";"
    it is. Headers in the page's language, rates as percentages with the page's decimal
    separator, the period on top and the totals at the bottom. The plain CSV stays the
    machine format (docs/reports.md). No spreadsheet library is needed for this.
    """
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow([
        _("Conversions from %(start)s to %(end)s (%(zone)s), converted within %(window)s days")
        % {"start": report.date_from.isoformat(), "end": report.date_to.isoformat(),
           "zone": report.time_zone, "window": report.window_days}
    ])
    writer.writerow([])
    writer.writerow([_("Funnel"), _("Group"), _("Entered"), _("Converted"), _("Rate"),
                     _("Median h"), _("P90 h")])

    def cells(row: ReportRow, funnel: str, group: str) -> list[str]:
        return [csv_cell(funnel), csv_cell(group), str(row.entered), str(row.converted),
                rate_display(row.rate), hours_display(row.median_hours),
                hours_display(row.p90_hours)]

    for row in report.rows:
        writer.writerow(cells(
            row, funnel_names.get(row.funnel or "", row.funnel or ""),
            group_label(row.group, group_by=report.group_by),
        ))
    writer.writerow(cells(report.totals, _("Total"), ""))
    return CSV_BOM + out.getvalue()


# --- Table -------------------------------------------------------------------------------


def _row_cells(row: ReportRow, *, funnel: str, group: str) -> list[str]:
    return [
        funnel,
        group,
        str(row.entered),
        str(row.converted),
        rate_display(row.rate),
        hours_display(row.median_hours),
        hours_display(row.p90_hours),
    ]


def _grid(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]

    def render(cells: list[str]) -> str:
        text = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "  ".join(text).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return [render(header), rule, *[render(line) for line in lines[:-1]], rule,
            render(lines[-1])]


def report_table(report: ConversionReport) -> str:
    """A readable table for a terminal, with the totals, the previous period and the
    days-to-purchase distribution under it."""
    lines = [
        _("Conversions from %(start)s to %(end)s (%(days)s days, %(zone)s); "
          "window %(window)s days; grouped by %(group_by)s.")
        % {
            "start": report.date_from.isoformat(),
            "end": report.date_to.isoformat(),
            "days": report.period_days,
            "zone": report.time_zone,
            "window": report.window_days,
            "group_by": report.group_by,
        }
    ]
    if report.funnel or report.test_id is not None:
        lines.append(
            _("Filters: funnel %(funnel)s, test %(test)s.")
            % {"funnel": report.funnel or _("all"),
               "test": report.test_id if report.test_id is not None else _("all")}
        )
    header = [_("Funnel"), _("Group"), _("Entered"), _("Converted"), _("Rate"),
              _("Median h"), _("P90 h")]
    body = [
        _row_cells(row, funnel=row.funnel or "", group=row.group or NO_VALUE)
        for row in report.rows
    ]
    body.append(_row_cells(report.totals, funnel=_("Total"), group=""))
    lines.append("")
    lines.extend(_grid(header, body))
    lines.append("")
    change = rate_change_points(report)
    lines.append(
        _("Previous period %(start)s to %(end)s: entered %(entered)s, converted "
          "%(converted)s, rate %(rate)s (change %(change)s points).")
        % {
            "start": report.previous_from.isoformat(),
            "end": report.previous_to.isoformat(),
            "entered": report.previous_totals.entered,
            "converted": report.previous_totals.converted,
            "rate": rate_display(report.previous_totals.rate),
            "change": points_display(change),
        }
    )
    lines.append(
        _("Converted by days after entry: %(days)s.")
        % {"days": ", ".join(f"{b.day}: {b.converted}" for b in report.histogram)}
    )
    if report.window_open_from:
        lines.append(
            _("Entries from %(day)s have not had the whole window yet.")
            % {"day": report.window_open_from.isoformat()}
        )
    lines.extend(lift_table_lines(report.lift))
    return "\n".join(lines) + "\n"


# --- Charts on the page ------------------------------------------------------------------


def group_label(group: str | None, *, group_by: str) -> str:
    """A row's group as people read it: "test 21" rather than "21"."""
    if group is None:
        return NO_VALUE
    if group_by == GROUP_BY_TEST:
        return _("test unknown") if group in ("0", "") else _("test %(id)s") % {"id": group}
    return group


def report_chart_data(
    report: ConversionReport, *, funnel_names: dict[str, str] | None = None
) -> dict[str, Any]:
    """What the page's charts draw, passed through json_script: the trend (or breakdown)
    and the days-to-purchase histogram. Periods are ordered: their rates are a line.
    Funnels and tests are not: their rates are points, never joined by a line."""
    names = funnel_names or {}

    def name(slug: str | None) -> str:
        return names.get(slug or "", slug or "")

    def percent(row: ReportRow) -> float | None:
        return None if row.rate is None else round(row.rate * 100, 2)

    datasets: list[dict[str, Any]] = []
    if report.group_by in PERIOD_GROUPINGS:
        labels: list[str] = []
        for row in report.rows:
            if row.group not in labels:
                labels.append(row.group)
        for funnel in report.funnels:
            rows = [row for row in report.rows if row.funnel == funnel]
            datasets.append({"type": "bar", "axis": "people", "data": [r.entered for r in rows],
                             "label": _("%(funnel)s: entered") % {"funnel": name(funnel)}})
            datasets.append({"type": "line", "axis": "rate", "data": [percent(r) for r in rows],
                             "label": _("%(funnel)s: rate, %%") % {"funnel": name(funnel)},
                             "line": True})
    else:
        labels = [
            name(row.funnel) if row.group is None
            else f"{name(row.funnel)} · {group_label(row.group, group_by=report.group_by)}"
            for row in report.rows
        ]
        rows = report.rows
        datasets = [
            {"type": "bar", "axis": "people", "label": _("Entered"),
             "data": [r.entered for r in rows]},
            {"type": "bar", "axis": "people", "label": _("Converted"),
             "data": [r.converted for r in rows]},
            {"type": "line", "axis": "rate", "label": _("Rate, %"),
             "data": [percent(r) for r in rows], "line": False},
        ]
    return {
        "trend": {
            "labels": labels,
            "datasets": datasets,
            "people_axis": _("People"),
            "rate_axis": _("Rate, %"),
        },
        "histogram": {
            "labels": [str(b.day) for b in report.histogram],
            "data": [b.converted for b in report.histogram],
            "label": _("Converted"),
            "axis": _("Days after entry"),
        },
    }


# --- Opt-outs beside the conversions ------------------------------------------------------


OPT_OUT_CSV_COLUMNS = ["funnel", "entered", "unsubscribed", "blacklisted", "opt_out_rate"]


def opt_out_data(row) -> dict[str, Any]:
    return {
        "funnel": row.funnel, "entered": row.entered, "unsubscribed": row.unsubscribed,
        "blacklisted": row.blacklisted, "opt_out_rate": rate_value(row.rate),
    }


def opt_outs_csv(rows: list) -> str:
    """The opt-out block as CSV, the columns of its JSON; UTF-8 with a BOM like the rest."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(OPT_OUT_CSV_COLUMNS)
    for row in rows:
        data = opt_out_data(row)
        writer.writerow([csv_cell(data[column]) for column in OPT_OUT_CSV_COLUMNS])
    return CSV_BOM + out.getvalue()


def opt_outs_table(rows: list) -> str:
    """The opt-out block under the conversion table (reports.selectors.opt_out_counts)."""
    header = [_("Funnel"), _("Entered"), _("Unsubscribed"), _("Blacklisted"),
              _("Opt-out rate")]
    lines = [
        [row.funnel, str(row.entered), str(row.unsubscribed), str(row.blacklisted),
         rate_display(row.rate)]
        for row in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]

    def render(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    text = [
        "",
        _("Opt-outs as the last Brevo audit read them (people who entered in the period):"),
        render(header), "  ".join("-" * width for width in widths),
        *[render(line) for line in lines],
    ]
    return "\n".join(text) + "\n"
