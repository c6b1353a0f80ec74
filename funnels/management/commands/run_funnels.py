"""cron / by hand: one run of the funnel job. Thin: parse, call the service, one line."""

from __future__ import annotations

import sys
from datetime import date, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from funnels.logging_filters import redact
from funnels.models import SyncRun
from funnels.selectors.plan import run_items_iter
from funnels.services.runtime import runtime_settings_get
from funnels.services.runs import RunBusy, RunConfigError, run_funnels

# What cron and monitoring see; README "Commands" documents the same table.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BUSY = 3
EXIT_PARTIAL = 4  # finished, but some contacts are left for a later run
EXIT_HELD = 5  # the flood guard held new contacts back from Brevo
EXIT_PAUSED = 6  # a scheduled run found the schedule paused
EXIT_CONFIG = 78

EXIT_BY_STATUS = {
    SyncRun.Status.SUCCESS: EXIT_OK,
    SyncRun.Status.PARTIAL: EXIT_PARTIAL,
    SyncRun.Status.FAILED: EXIT_FAILED,
    SyncRun.Status.CRASHED: EXIT_FAILED,
    SyncRun.Status.HELD: EXIT_HELD,
    SyncRun.Status.PAUSED: EXIT_PAUSED,
}


def _parse_since(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(_("--since must be a date like 2026-11-01")) from None


def _parse_as_of(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(_("--as-of must be an ISO date-time like 2026-11-28T18:30")) from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def summary_line(run: SyncRun) -> str:
    mode = _("dry run") if run.dry_run else _("live")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted((run.skipped_by_reason or {}).items()))
    seconds = run.duration.total_seconds() if run.duration else 0.0
    parts = [
        _("run #%(id)s %(status)s (%(mode)s)") % {"id": run.pk, "status": run.status, "mode": mode},
        _("%(n)s results read") % {"n": run.results_read},
        (_("%(n)s entries would be added") if run.dry_run else _("%(n)s entries added"))
        % {"n": run.entries_added},
        _("%(n)s skipped") % {"n": run.skipped} + (f" ({reasons})" if reasons else ""),
        _("%(n)s payments read, %(f)s purchases found, %(r)s revoked")
        % {"n": run.payments_read, "f": run.purchases_found, "r": run.purchases_revoked},
    ]
    if not run.dry_run:
        parts.append(
            _("%(s)s contacts sent, %(f)s failed, %(r)s Brevo requests")
            % {"s": run.contacts_sent, "f": run.contacts_failed, "r": run.brevo_requests}
        )
    parts.append(_("%(s).1fs") % {"s": seconds})
    line = "; ".join(parts)
    if run.error:
        line += " - " + _("error: %(e)s") % {"e": run.error}
    return line


_HELP = gettext_lazy(
    "Run the funnel job once: read new MODX test results, add people to the funnels, "
    "detect certificate purchases and push the changes to Brevo. The mode (dry run or "
    "live) comes from the runtime settings row unless --dry-run or --live is given. "
    "On the very first run the job starts from the results completed since --since "
    "(default: FUNNELS_INITIAL_LOOKBACK_DAYS days back, 7 unless configured); later "
    "runs continue from the watermark. Exit codes: 0 success, 1 failure, 3 another run "
    "holds the lock, 4 partial (some contacts left for a later run: see the run), 5 new "
    "contacts held back by the flood guard, 6 schedule paused, 78 configuration error."
)


class Command(BaseCommand):
    @property
    def help(self) -> str:
        # argparse needs a real str for the description; translate when asked.
        return str(_HELP)

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--dry-run", action="store_true",
            help=gettext_lazy("force a dry run for this run: read everything, write nothing "
                              "but the run's own record and plan"),
        )
        mode.add_argument(
            "--live", action="store_true",
            help=gettext_lazy("force live mode for this run (refused when the Brevo API key "
                              "or a funnel's list id is missing)"),
        )
        parser.add_argument(
            "--since", type=_parse_since, default=None, metavar="YYYY-MM-DD",
            help=gettext_lazy("first run only: start from the results completed on or after "
                              "this day (default: FUNNELS_INITIAL_LOOKBACK_DAYS days back)"),
        )
        parser.add_argument(
            "--as-of", type=_parse_as_of, default=None, metavar="DATETIME",
            help=gettext_lazy("the time the run acts as of (ISO 8601; naive means TIME_ZONE); "
                              "default: now"),
        )
        parser.add_argument(
            "--chunk-size", type=int, default=None,
            help=gettext_lazy("rows per chunk (default FUNNELS_CHUNK_SIZE)"),
        )
        parser.add_argument(
            "--plan", action="store_true",
            help=gettext_lazy("print every item of the run: would add / added / skipped with "
                              "the reason"),
        )
        parser.add_argument(
            "--ignore-pause", action="store_true",
            help=gettext_lazy("run by hand although the schedule is paused in the admin "
                              "(scheduled runs never ignore the pause)"),
        )
        parser.add_argument(
            "--trigger", choices=[SyncRun.Trigger.CRON, SyncRun.Trigger.MANUAL],
            default=SyncRun.Trigger.MANUAL,
            help=gettext_lazy("who started the run (recorded on it)"),
        )

    def handle(self, *args, dry_run, live, since, as_of, chunk_size, plan, trigger,
               ignore_pause=False, **options):
        if chunk_size is not None and chunk_size < 1:
            raise CommandError(_("--chunk-size must be at least 1"))
        forced = True if dry_run else (False if live else None)
        try:
            if (trigger != SyncRun.Trigger.CRON and not ignore_pause
                    and runtime_settings_get().schedule_paused):
                self.stderr.write(_("the schedule is paused in the admin; to run by hand "
                                    "anyway, add --ignore-pause"))
                sys.exit(EXIT_PAUSED)
            run = run_funnels(
                now=as_of or timezone.now(),
                dry_run=forced,
                trigger=trigger,
                since=since,
                chunk_size=chunk_size or settings.FUNNELS_CHUNK_SIZE,
            )
        except RunBusy as exc:
            self.stderr.write(str(exc))
            sys.exit(EXIT_BUSY)
        except RunConfigError as exc:
            self.stderr.write(_("configuration error: %(e)s") % {"e": exc})
            sys.exit(EXIT_CONFIG)
        except OperationalError as exc:
            self.stderr.write(
                _("database unavailable: %(e)s") % {"e": redact(str(exc)).splitlines()[0][:300]}
            )
            sys.exit(EXIT_FAILED)
        if plan:
            for item in run_items_iter(run=run):
                self.stdout.write(_plan_line(item))
        self.stdout.write(summary_line(run))
        code = EXIT_BY_STATUS.get(run.status, EXIT_FAILED)
        if code != EXIT_OK:
            sys.exit(code)


def _plan_line(item) -> str:
    where = f"result #{item.source_id}" if item.source_id else ""
    test = f"test {item.test_id}" if item.test_id is not None else ""
    fields = [
        item.get_action_display(),
        item.reason,
        item.funnel_type or "-",
        test,
        where,
        item.email,
        item.detail,
    ]
    return "  ".join(f for f in fields if f)
