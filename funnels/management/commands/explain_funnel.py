"""Why is this person (not) in each funnel? Reads only; prints one line per funnel."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from funnels.selectors.explain import funnel_explain


_HELP = gettext_lazy(
    "Explain, funnel by funnel, whether EMAIL is in it and since when, or why not "
    "(no test result, invalid email, test of the other kind, funnel inactive, not yet "
    "read, waiting for a recheck and until when, skipped by a run and why). Scans MODX "
    "results by email: a by-hand tool."
)


class Command(BaseCommand):
    @property
    def help(self) -> str:
        # argparse needs a real str for the description; translate when asked.
        return str(_HELP)

    def add_arguments(self, parser):
        parser.add_argument("email")

    def handle(self, *args, email, **options):
        explanation = funnel_explain(raw_email=email)
        shown = explanation.email or email.strip()
        self.stdout.write(
            _("%(email)s: %(n)s test result(s) in MODX")
            % {"email": shown, "n": len(explanation.results)}
        )
        for verdict in explanation.verdicts:
            for line in verdict.lines:
                self.stdout.write(f"{verdict.funnel.slug}: {line}")
        for line in explanation.waiting_lines():
            self.stdout.write(_("waiting: %(line)s") % {"line": line})
