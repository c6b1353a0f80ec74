"""Create and fill the demo MODX tables with deterministic synthetic data."""

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from funnels.demo import DemoRefused, demo_generate, demo_load


class Command(BaseCommand):
    help = (
        "Create the MODX tables in the demo database (MODX_DATABASE_URL, by default a "
        "SQLite file) and fill them with synthetic test takers and certificate payments. "
        "Refuses a database whose MODX tables it did not create."
    )

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--size", type=int, default=2000, help="test results to create")
        parser.add_argument("--weeks", type=int, default=8, help="spread results over N weeks")

    def handle(self, *args, seed: int, size: int, weeks: int, **options):
        if size < 1 or weeks < 1:
            raise CommandError("--size and --weeks must be positive")
        data = demo_generate(seed=seed, size=size, now=timezone.now(), weeks=weeks)
        try:
            demo_load(data=data)
        except DemoRefused as exc:
            raise CommandError(str(exc)) from None
        paid = sum(1 for p in data.payments if p["status_id"] == 2 and p["paid_at"])
        self.stdout.write(
            f"demo MODX data: {len(data.results)} test results, {len(data.cert_users)} buyers, "
            f"{len(data.payments)} payments ({paid} paid), seed {seed}"
        )
