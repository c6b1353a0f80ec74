"""Monitoring probe: one line and a Nagios-style exit code (0 OK, 1 WARNING, 2 CRITICAL)."""

from __future__ import annotations

import sys
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from funnels.selectors.health import CRITICAL, EXIT_CODES, run_health


def _parse_as_of(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(_("--as-of must be an ISO date-time")) from None
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


_HELP = gettext_lazy(
    "Check the funnel job: OK (exit 0) when a run completed within twice "
    "FUNNELS_SCHEDULE_MINUTES and the recent runs did not fail; WARNING (exit 1) after "
    "recent failures or Brevo failures; CRITICAL (exit 2) when no run completed in time."
)


class Command(BaseCommand):
    @property
    def help(self) -> str:
        # argparse needs a real str for the description; translate when asked.
        return str(_HELP)

    def add_arguments(self, parser):
        parser.add_argument(
            "--as-of", type=_parse_as_of, default=None, metavar="DATETIME",
            help=gettext_lazy("judge as of this time (ISO 8601); default: now"),
        )

    def handle(self, *args, as_of, **options):
        try:
            health = run_health(now=as_of or timezone.now())
        except DatabaseError as exc:
            self.stdout.write(
                f"{CRITICAL}: " + _("database unavailable (%(e)s)") % {"e": type(exc).__name__}
            )
            sys.exit(EXIT_CODES[CRITICAL])
        self.stdout.write(health.line)
        if health.exit_code:
            sys.exit(health.exit_code)
