"""cron (daily) / by hand: read the funnels' Brevo lists back (services/brevo_audit.py)."""

from __future__ import annotations

import sys
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from funnels.brevo.factory import BrevoNotConfigured
from funnels.models import BrevoAudit
from funnels.services.brevo_audit import AuditBusy, brevo_audit_run
from funnels.services.nobody_lost import ProofBusy, nobody_lost_check
from funnels.services.runtime import runtime_settings_get

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BUSY = 3
EXIT_PARTIAL = 4
EXIT_CONFIG = 78

EXIT_BY_STATUS = {
    BrevoAudit.Status.SUCCESS: EXIT_OK,
    BrevoAudit.Status.PARTIAL: EXIT_PARTIAL,
}

_HELP = gettext_lazy(
    "Read every funnel's Brevo list and record, per entry, whether the person is in the "
    "list, unsubscribed from it, blacklisted or missing. Only the changes since the last "
    "audit are read, unless a list's size disagrees with ours, the last full read is older "
    "than BREVO_AUDIT_FULL_EVERY_DAYS, or --full is given. Never at the same time as a "
    "run. Exit codes: 0 success, 1 failure, 3 a run or another audit holds the lock, 4 "
    "partial (Brevo stopped it: the next audit reads on), 78 configuration error."
)


def summary_line(audit: BrevoAudit) -> str:
    line = _(
        "audit #%(id)s %(status)s (%(kind)s): %(read)s contacts read, %(pages)s pages, "
        "%(changed)s states changed; in list %(in)s, unsubscribed %(unsub)s, blacklisted "
        "%(black)s, missing %(missing)s; %(strangers)s contacts we did not add; "
        "%(requests)s Brevo requests"
    ) % {
        "id": audit.pk, "status": audit.status, "kind": audit.kind,
        "read": audit.contacts_read, "pages": audit.pages, "changed": audit.states_changed,
        "in": audit.in_list, "unsub": audit.unsubscribed, "black": audit.blacklisted,
        "missing": audit.missing, "strangers": audit.strangers,
        "requests": audit.brevo_requests,
    }
    if audit.error:
        line += " - " + _("error: %(e)s") % {"e": audit.error}
    return line


def proof_line(proof) -> str:
    found = {kind: n for kind, n in (proof.counts or {}).items() if n}
    line = _(
        "proof #%(id)s %(status)s: %(results)s test results and %(entries)s entries of the "
        "last %(days)s days compared, %(n)s differences"
    ) % {
        "id": proof.pk, "status": proof.status, "results": proof.results_read,
        "entries": proof.entries_read, "n": sum(found.values()),
        "days": (proof.window_to - proof.window_from).days + 1,
    }
    if found:
        line += " (" + ", ".join(f"{k} {n}" for k, n in sorted(found.items())) + ")"
    if proof.error:
        line += " - " + _("error: %(e)s") % {"e": proof.error}
    return line


def _parse_as_of(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(_("--as-of must be an ISO date-time like 2026-11-28T18:30")) from None
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


class Command(BaseCommand):
    @property
    def help(self) -> str:
        return str(_HELP)

    def add_arguments(self, parser):
        parser.add_argument(
            "--full", action="store_true",
            help=gettext_lazy("read every list whole, not only what changed"),
        )
        parser.add_argument(
            "--as-of", type=_parse_as_of, default=None, metavar="DATETIME",
            help=gettext_lazy("the time the audit acts as of (ISO 8601); default: now"),
        )
        parser.add_argument(
            "--no-proof", action="store_true",
            help=gettext_lazy("skip the proof that nobody is lost that follows the audit"),
        )
        parser.add_argument(
            "--trigger", choices=["cron", "manual"], default="manual",
            help=gettext_lazy("who started the audit (recorded on it)"),
        )

    def handle(self, *args, full, as_of, trigger, no_proof=False, **options):
        now = as_of or timezone.now()
        try:
            audit = brevo_audit_run(now=now, full=True if full else None, trigger=trigger)
        except AuditBusy as exc:
            self.stderr.write(str(exc))
            sys.exit(EXIT_BUSY)
        except BrevoNotConfigured as exc:
            self.stderr.write(_("configuration error: %(e)s") % {"e": exc})
            sys.exit(EXIT_CONFIG)
        self.stdout.write(summary_line(audit))
        if not no_proof and runtime_settings_get().dry_run:
            # A dry run enters nobody: every eligible person would be "should be in".
            self.stdout.write(_("proof skipped: the job runs in dry run"))
        elif not no_proof:
            # After the audit, so that it compares with Brevo as it is today.
            try:
                proof = nobody_lost_check(now=now)
            except ProofBusy as exc:
                self.stderr.write(str(exc))
            else:
                self.stdout.write(proof_line(proof))
        code = EXIT_BY_STATUS.get(audit.status, EXIT_FAILED)
        if code != EXIT_OK:
            sys.exit(code)
