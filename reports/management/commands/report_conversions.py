"""report_conversions: the conversion report as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from reports.formatters import (
    opt_outs_csv,
    opt_outs_table,
    report_csv,
    report_json,
    report_table,
)
from reports.lift_format import lift_csv
from reports.selectors import (
    DEFAULT_WINDOW_DAYS,
    GROUP_BY_CHOICES,
    GROUP_BY_FUNNEL,
    ORIGIN_CHOICES,
    ORIGIN_COMPLETION,
    ReportError,
    conversion_report,
    opt_out_counts,
)

FORMATS = {
    "table": report_table, "csv": report_csv,
    # The JSON and the opt-outs' CSV also hold what the last Brevo audit read.
    "json": lambda report: report_json(report, opt_outs=opt_out_counts(report=report)),
    "csv_lift": lambda report: lift_csv(report.lift),
    "csv_opt_outs": lambda report: opt_outs_csv(opt_out_counts(report=report)),
}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Exit code for bad input, the same as argparse uses for its own errors.
USAGE_ERROR = 2

EPILOG = gettext_lazy("""\
Definitions:
  Entered    people (one email in one funnel) whose first entry in the period falls
             between --from-date and --to-date inclusive, in local days of the site
             time zone (settings.TIME_ZONE).
  Converted  a paid certificate of the funnel's type bought at or after entry and at
             most --window days after the first entry in the period; the earliest such
             purchase counts. A purchase before entry never counts.
  Rate       converted / entered; "—" (null in JSON, empty in CSV) when nobody entered.
  Hours      whole hours from entry to purchase, rounded down; median and 90th
             percentile by nearest rank, exact to the hour.
  By test    each person counts under the test of their first entry.
  Weeks      start on Monday; the first and last week or month may be partial.
  Origin     --origin start counts the window from the funnel's start (Brevo's first
             confirmation, or the run that held the person out); purchases between
             the test and the start are "bought before the funnel started".

Formats:
  table  a readable table with totals, the previous period of the same length and the
         number converted on each day after entry (day 0 = the first 24 hours).
  csv    UTF-8 with a byte order mark (for Excel), one line per row, columns:
         funnel,group,entered,converted,rate,median_hours,p90_hours
         (rate as a fraction with 4 decimals; text cells starting with = + - @ are
         prefixed with an apostrophe). The admin page's download is the same file.
  json   one object:
         {"period": {"from", "to", "days", "time_zone"},
          "filters": {"funnel", "test", "window_days", "group_by"},
          "rows": [{"funnel", "group", "entered", "converted", "rate",
                    "median_hours", "p90_hours"}, ...],
          "totals": {same keys as a row, funnel and group null},
          "histogram": [{"day", "converted"}, ...],
          "previous": {"from", "to", "rows": [by funnel], "totals", "rate_change_points"},
          "window_open_from": date or null}
         "group" is the day (YYYY-MM-DD), the week's Monday (YYYY-MM-DD), the month
         (YYYY-MM), the test id (text), or null when grouped by funnel.
         With control groups (docs/reports.md, "Does the funnel sell?") it also has
         "origin", "bought_before_start" and "funnel_not_started" by funnel, and
         "lift": one object per funnel and control period (treatment and control
         numbers, lift in points with its 95 % interval, relative lift, incremental
         purchases, sample-ratio check, "not_enough" reasons, days until a 2-point
         lift is detectable, and the cumulative "curve" by day).
         Its "opt_outs" (by funnel: entered, unsubscribed, blacklisted,
         opt_out_rate) are what the last Brevo audit read of the period's people.
  csv_opt_outs  those opt-outs as CSV: funnel,entered,unsubscribed,blacklisted,
         opt_out_rate
  csv_lift  the lift as CSV: one line per funnel, period and day of the curve:
         funnel,period,control_share,day,treatment_entered,treatment_converted,
         treatment_rate,control_entered,control_converted,control_rate,lift_points,
         lift_low_points,lift_high_points,relative_lift,incremental_purchases,
         srm_p_value,not_enough

Bad dates or options print one line and exit with status 2.""")


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, with the definitions kept as written."""


def _date(value: str, *, option: str) -> dt.date:
    if _ISO_DATE.match(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise CommandError(
        _("%(option)s: %(value)r is not a date in the form YYYY-MM-DD.")
        % {"option": option, "value": value},
        returncode=USAGE_ERROR,
    )


class Command(BaseCommand):
    help = gettext_lazy(
        "Conversion report: how many people who entered a funnel in a period bought a "
        "certificate within the conversion window, and how fast."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("epilog", str(EPILOG))
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument(
            "--from-date", required=True, metavar="YYYY-MM-DD",
            help=gettext_lazy("First day of the period (local date, inclusive)."),
        )
        parser.add_argument(
            "--to-date", metavar="YYYY-MM-DD",
            help=gettext_lazy("Last day of the period (inclusive); default today."),
        )
        parser.add_argument(
            "--funnel", metavar="SLUG", help=gettext_lazy("Only this funnel (its slug).")
        )
        parser.add_argument(
            "--test", type=int, metavar="ID", help=gettext_lazy("Only entries from this test id.")
        )
        parser.add_argument(
            "--group-by", choices=GROUP_BY_CHOICES, default=GROUP_BY_FUNNEL,
            help=gettext_lazy("Rows by funnel (default), test, or day, week or month of entry."),
        )
        parser.add_argument(
            "--window", type=int, default=DEFAULT_WINDOW_DAYS, metavar="DAYS",
            help=gettext_lazy("Conversion window in days (default %(default)s)."),
        )
        parser.add_argument(
            "--origin", choices=ORIGIN_CHOICES, default=ORIGIN_COMPLETION,
            help=gettext_lazy("Count the window from the test's completion (default) or "
                              "from the funnel's start."),
        )
        parser.add_argument(
            "--format", choices=sorted(FORMATS), default="table",
            help=gettext_lazy("Output format (default table)."),
        )

    def handle(self, *args, **options):
        now = timezone.now()
        date_from = _date(options["from_date"], option="--from-date")
        date_to = (
            _date(options["to_date"], option="--to-date")
            if options["to_date"]
            else timezone.localdate(now)
        )
        try:
            report = conversion_report(
                date_from=date_from,
                date_to=date_to,
                funnel=options["funnel"],
                test_id=options["test"],
                window_days=options["window"],
                group_by=options["group_by"],
                as_of=now,
                origin=options["origin"],
            )
        except ReportError as error:
            raise CommandError(str(error), returncode=USAGE_ERROR) from None
        self.stdout.write(FORMATS[options["format"]](report), ending="")
        if options["format"] == "table":
            self.stdout.write(opt_outs_table(opt_out_counts(report=report)), ending="")
