"""Pre-flight of the switch-over from the earlier tool: one line per check, an exit code."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand
from django.utils import timezone
from django.utils.translation import gettext_lazy

from funnels.selectors.switch_over import EXIT_CODES, switch_over_checks

_HELP = gettext_lazy(
    "Before the first live run after the earlier tool: checks the configuration (.env "
    "byte-order mark), both databases, strict SQL mode, that our tables have a database "
    "of their own, that the earlier tool's table is adopted and its cron stopped, the "
    "first run's look-back and how many contacts it would send, and the Brevo key and "
    "lists. One line per check (OK, WARN, FAIL); exit 0 all OK, 1 a warning, 2 a failure. "
    "See docs/switch-over.md."
)


class Command(BaseCommand):
    @property
    def help(self) -> str:
        return str(_HELP)

    def handle(self, *args, **options):
        checks = switch_over_checks(now=timezone.now())
        for check in checks:
            self.stdout.write(check.line)
        code = max(EXIT_CODES[check.level] for check in checks)
        if code:
            sys.exit(code)
