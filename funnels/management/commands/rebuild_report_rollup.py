"""Count every entry into the conversion report's rollup again (services/report_rollup.py).

Run it once after deploying the rollup on a database with entries (the migration does it
when it finds any), after adopting legacy entries, after writing funnel_entries by any other
way than the job, and after changing TIME_ZONE. The runs keep it up to date otherwise."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from funnels.services.report_rollup import report_rollup_refresh


class Command(BaseCommand):
    help = "Rebuild the conversion report's rollup from every funnel entry."

    def handle(self, *args, **options):
        started = time.perf_counter()
        result = report_rollup_refresh(rebuild=True)
        self.stdout.write(
            f"report rollup rebuilt: {result.rows} rows in "
            f"{time.perf_counter() - started:.1f} s"
        )
