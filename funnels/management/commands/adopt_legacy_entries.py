"""Adopt the earlier tool's funnel_entries table; run instead of the first `migrate`."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.translation import gettext as _

from funnels.services.legacy import (
    SOURCES,
    AdoptionReport,
    LegacyAdoptionRefused,
    TestIdSource,
    legacy_entries_adopt,
)

# Enough to see what happened; the CSV files have every group.
SHOWN = 20


class Command(BaseCommand):
    help = _(
        "Set the earlier tool's funnel_entries table aside as funnel_entries_legacy, run "
        "the migrations, and copy its rows into the new table (normalised, merged, with "
        "test ids resolved where possible). Idempotent. See docs/legacy-adoption.md."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true",
            help=_("read and report only: rename nothing, migrate nothing, copy nothing"),
        )
        sync = parser.add_mutually_exclusive_group()
        sync.add_argument(
            "--mark-synced", dest="resync", action="store_false",
            help=_("adopted entries count as already in Brevo (the default)"),
        )
        sync.add_argument(
            "--resync", dest="resync", action="store_true",
            help=_("adopted entries are sent to Brevo again by the next run"),
        )
        parser.set_defaults(resync=False)
        parser.add_argument(
            "--source", choices=SOURCES, default="default",
            help=_("where the legacy table is: our database (renamed aside) or the MODX "
                   "database (only read)"),
        )
        parser.add_argument(
            "--report-dir", type=Path, default=None,
            help=_("folder for the CSV reports (default: the log folder)"),
        )

    def handle(self, *args, dry_run: bool, resync: bool, source: str,
               report_dir: Path | None, verbosity: int, **options):
        def migrate() -> None:
            call_command("migrate", database="default", interactive=False,
                         verbosity=max(0, verbosity - 1), stdout=self.stdout)

        try:
            report = legacy_entries_adopt(
                source=source, dry_run=dry_run, resync=resync, now=timezone.now(),
                migrate=migrate, report_dir=report_dir or settings.LOG_FILE.parent,
            )
        except LegacyAdoptionRefused as exc:
            raise CommandError(str(exc)) from None
        for line in report_lines(report):
            self.stdout.write(line)


def report_lines(report: AdoptionReport) -> list[str]:
    mode = _("dry run") if report.dry_run else _("done")
    if report.table is None:
        return [_(
            "legacy adoption (%(mode)s): no earlier funnel_entries table found%(migrated)s"
        ) % {"mode": mode, "migrated": _("; migrations up to date") if report.migrated else ""}]
    plan = report.plan
    verb = _("would adopt") if report.dry_run else _("adopted")
    lines = [_(
        "legacy adoption (%(mode)s) from %(alias)s.%(table)s: %(read)d rows read, "
        "%(verb)s %(adopted)d entries as %(status)s, %(present)d already present, "
        "%(dups)d duplicate groups merged, %(rejected)d rows kept only in the legacy table"
    ) % {
        "mode": mode, "alias": report.alias, "table": report.table, "read": plan.rows_read,
        "verb": verb, "adopted": report.adopted, "status": report.sync_status,
        "present": report.already_present, "dups": len(plan.duplicate_groups),
        "rejected": len(plan.rejected),
    }]
    if report.renamed:
        lines.append(_("funnel_entries renamed to funnel_entries_legacy (kept unchanged)"))
    if report.migrated:
        lines.append(_("migrations up to date"))
    sources = plan.test_id_sources
    unknown = {how: count for how, count in sorted(sources.items())
               if how not in (TestIdSource.RESOLVED, TestIdSource.LEGACY)}
    lines.append(_(
        "test ids: %(resolved)d resolved from simpletest_users, %(legacy)d written by the "
        "earlier tool, %(unknown)d unknown and stored as 0 (%(why)s)"
    ) % {
        "resolved": sources.get(TestIdSource.RESOLVED, 0),
        "legacy": sources.get(TestIdSource.LEGACY, 0),
        "unknown": sum(unknown.values()),
        "why": ", ".join(f"{how} {count}" for how, count in unknown.items()) or "-",
    })
    duplicates = plan.duplicate_groups
    if duplicates:
        shown = "; ".join(" ".join(str(i) for i in g.legacy_ids) for g in duplicates[:SHOWN])
        more = len(duplicates) - SHOWN
        lines.append(_("duplicate groups (legacy ids): %(groups)s") % {"groups": shown}
                     + (_(" ... and %(more)d more") % {"more": more} if more > 0 else ""))
    if plan.rejected:
        shown = ", ".join(f"{legacy_id} ({reason})" for legacy_id, reason in plan.rejected[:SHOWN])
        more = len(plan.rejected) - SHOWN
        lines.append(_("not adopted (legacy ids): %(rows)s") % {"rows": shown}
                     + (_(" ... and %(more)d more") % {"more": more} if more > 0 else ""))
    if report.outbox_pending is None:
        lines.append(_("earlier outbox: no brevo_sync_outbox table"))
    else:
        lines.append(_(
            "earlier outbox: %(count)d pending jobs left in brevo_sync_outbox "
            "(not migrated: superseded by the entries' own sync state)"
        ) % {"count": report.outbox_pending})
    if report.duplicates_csv and report.rows_csv:
        lines.append(_("reports: %(dups)s, %(rows)s") % {
            "dups": report.duplicates_csv, "rows": report.rows_csv})
    return lines
