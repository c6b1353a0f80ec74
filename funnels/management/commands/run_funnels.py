"""cron / by hand: one run of the funnel job. Thin: parse, call the service, one line."""

from __future__ import annotations

import sys
from datetime import date, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from funnels.codes import SkipReason
from funnels.emails import Reason as EmailReason
from funnels.logging_filters import redact
from funnels.models import SyncRun, SyncRunItem
from funnels.selectors.plan import run_items_iter
from funnels.services import alerts
from funnels.services.runs import RunBusy, RunConfigError, run_funnels
from funnels.services.runtime import live_needs_dry_run_first, runtime_settings_get

# What cron and monitoring see; README "Commands" documents the same table.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BUSY = 3
EXIT_PARTIAL = 4  # finished, but some contacts are left for a later run
EXIT_HELD = 5  # the flood guard held new contacts back from Brevo
EXIT_PAUSED = 6  # a scheduled run found the schedule paused
EXIT_CONFIG = 78
# sysexits.h EX_TEMPFAIL, as manage.py answers when the database is unreachable at start:
# our database or MODX refused or dropped the connection (worth retrying, no bug).
EXIT_DATABASE_UNAVAILABLE = 75

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
        _("%(n)s payments read") % {"n": run.payments_read},
        _purchase_part(run),
    ]
    waiting = sum((run.waiting_by_reason or {}).values())
    if waiting:
        parts.append(_("%(n)s rows put on the recheck list") % {"n": waiting})
    if run.contacts_held:
        parts.append(
            (_("%(n)s new contacts would be held back (flood guard)") if run.dry_run
             else _("%(n)s new contacts held back (flood guard)"))
            % {"n": run.contacts_held}
        )
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
    "(default: FUNNELS_INITIAL_LOOKBACK_DAYS days back, 30 unless configured); later "
    "runs continue from the watermark. Exit codes: 0 success, 1 failure, 3 another run "
    "holds the lock, 4 partial (some contacts left for a later run: see the run), 5 new "
    "contacts held back by the flood guard, 6 schedule paused, 75 a database unavailable "
    "(ours or MODX; try again later), 78 configuration error."
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
            "--release-held", action="store_true",
            help=gettext_lazy("first let the new contacts held back by the flood guard go to "
                              "Brevo (live runs), then run as usual"),
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
               release_held, ignore_pause=False, **options):
        if chunk_size is not None and chunk_size < 1:
            raise CommandError(_("--chunk-size must be at least 1"))
        forced = True if dry_run else (False if live else None)
        held_back = forced is None and live_needs_dry_run_first()
        now = as_of or timezone.now()
        try:
            if (trigger != SyncRun.Trigger.CRON and not ignore_pause
                    and runtime_settings_get().schedule_paused):
                self.stderr.write(_("the schedule is paused in the admin; to run by hand "
                                    "anyway, add --ignore-pause"))
                sys.exit(EXIT_PAUSED)
            run = run_funnels(
                now=now,
                dry_run=forced,
                trigger=trigger,
                since=since,
                chunk_size=chunk_size or settings.FUNNELS_CHUNK_SIZE,
                release_held=release_held,
            )
        except RunBusy as exc:
            self._end(alerts.BUSY, str(exc), EXIT_BUSY)
        except RunConfigError as exc:
            self._end(alerts.CONFIG, _("configuration error: %(e)s") % {"e": exc}, EXIT_CONFIG)
        except (OperationalError, InterfaceError) as exc:
            line = _("database unavailable: %(e)s") % {"e": _first_line(redact(str(exc)))}
            self._end(alerts.DATABASE, line, EXIT_DATABASE_UNAVAILABLE)
        except Exception as exc:  # noqa: BLE001 - a bug: the traceback is in the log
            line = _("run failed unexpectedly: %(e)s (traceback in the log)") % {
                "e": _first_line(f"{type(exc).__name__}: {redact(str(exc))}")
            }
            self._end(SyncRun.Status.FAILED, line, EXIT_FAILED, error=exc)
        if plan:
            for item in run_items_iter(run=run):
                self.stdout.write(_plan_line(item))
        if held_back and run.dry_run:
            self.stdout.write(_(
                "the mode is live, but no dry run had completed on this database and "
                "nobody switched to live in the admin (APP_DRY_RUN=false copied into "
                ".env?): this run was a dry run; the next one is live. Check this run "
                "first; use --live to skip the dry run."
            ))
        line = summary_line(run)
        self.stdout.write(line)
        alerts.alerts_send(status=run.status, line=line, now=timezone.now(), run_id=run.pk)
        code = EXIT_BY_STATUS.get(run.status, EXIT_FAILED)
        if code != EXIT_OK:
            sys.exit(code)

    def _end(self, status: str, line: str, code: int, *, error: BaseException | None = None):
        """A run that ended without a summary: its one line, the alerts, the exit code."""
        self.stderr.write(line)
        alerts.alerts_send(status=status, line=line, now=timezone.now(), error=error)
        sys.exit(code)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return (lines[0] if lines else "")[:300]


def _purchase_part(run: SyncRun) -> str:
    """Purchases marked, counted as the --plan lines are (one per entry changed): new ones
    and purchases moved to another payment or time (e.g. the earlier tool's purchases
    that had no payment id), which `purchases_found` alone does not count."""
    actions = (SyncRunItem.Action.WOULD_PURCHASE if run.dry_run else SyncRunItem.Action.PURCHASE,)
    marked = SyncRunItem.objects.filter(run=run, action__in=actions).count()
    updated = max(0, marked - run.purchases_found)
    text = (
        ngettext("%(n)s purchase would be marked", "%(n)s purchases would be marked", marked)
        if run.dry_run
        else ngettext("%(n)s purchase marked", "%(n)s purchases marked", marked)
    ) % {"n": marked}
    return text + " " + _("(%(new)s new, %(updated)s updated), %(r)s revoked") % {
        "new": run.purchases_found, "updated": updated, "r": run.purchases_revoked,
    }


_PAYMENT_ACTIONS = frozenset({
    SyncRunItem.Action.PURCHASE, SyncRunItem.Action.WOULD_PURCHASE,
    SyncRunItem.Action.PURCHASE_REVOKED,
})


def _source_label(item) -> str:
    """What the item's MODX row id is: a test result or a payment (ids overlap)."""
    if not item.source_id:
        return ""
    if (
        item.action in _PAYMENT_ACTIONS or item.reason in SkipReason.OF_PAYMENTS
        or (item.action == SyncRunItem.Action.SKIPPED and item.detail.startswith("paid at"))
    ):
        return _("payment #%(id)s") % {"id": item.source_id}
    if item.test_id is None and item.reason in _EMAIL_REASONS:
        # A payment with an unusable email that was never paid looks like a result
        # without a test: say only that it is a MODX row.
        return _("MODX row #%(id)s") % {"id": item.source_id}
    return _("result #%(id)s") % {"id": item.source_id}


_EMAIL_REASONS = frozenset({EmailReason.EMPTY, EmailReason.INVALID, EmailReason.TOO_LONG})


def _plan_line(item) -> str:
    where = _source_label(item)
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
