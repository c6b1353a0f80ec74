"""Adopt the earlier tool's funnel_entries table; run instead of the first `migrate`."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.translation import gettext as _

from funnels.adoption.legacy import (
    JOB_FAILED,
    JOB_PENDING,
    JOB_SUCCESS,
    SOURCE_AUTO,
    SOURCE_DEFAULT,
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
        "Find the earlier tool's funnel_entries table (in our database or the MODX "
        "database), set it aside as funnel_entries_legacy when it is in ours, run the "
        "migrations, and copy its rows into the new table (normalised, merged, with test "
        "ids resolved where possible). Only people whose earlier outbox job succeeded "
        "count as in Brevo; everyone else is sent again by the next live run. Idempotent. "
        "See docs/switch-over.md."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true",
            help=_("read and report only: rename nothing, migrate nothing, copy nothing"),
        )
        parser.add_argument(
            "--resync", action="store_true",
            help=_("send every adopted entry to Brevo again, even those the earlier "
                   "outbox shows as sent (default: only those it does not)"),
        )
        parser.add_argument(
            "--source", choices=SOURCES, default=SOURCE_AUTO,
            help=_("where the legacy table is: auto (the default: our database, else the "
                   "MODX database), default (our database: renamed aside) or modx (only "
                   "read)"),
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
        lines = [_(
            "legacy adoption (%(mode)s): no earlier funnel_entries table found%(migrated)s"
        ) % {"mode": mode, "migrated": _("; migrations up to date") if report.migrated else ""}]
        if report.source == SOURCE_DEFAULT:
            lines.append(_(
                "looked only in our database; the earlier tool created its table in the "
                "MODX schema: run again without --source (or with --source modx)"
            ))
        else:
            lines.append(_("looked in our database and in the MODX database"))
        return lines
    plan = report.plan
    verb = _("would adopt") if report.dry_run else _("adopted")
    lines = [_(
        "legacy adoption (%(mode)s) from %(alias)s.%(table)s: %(read)d rows read, "
        "%(verb)s %(adopted)d entries (%(synced)d synced, %(pending)d pending), "
        "%(present)d already present, %(dups)d duplicate groups merged, %(rejected)d rows "
        "kept only in the legacy table"
    ) % {
        "mode": mode, "alias": report.alias, "table": report.table, "read": plan.rows_read,
        "verb": verb, "adopted": report.adopted, "synced": report.adopted_synced,
        "pending": report.adopted_pending,
        "present": report.already_present, "dups": len(plan.duplicate_groups),
        "rejected": len(plan.rejected),
    }]
    if report.found_by_search:
        lines.append(_("the earlier table was found in the MODX database (only read there)"))
    if report.renamed:
        lines.append(_("funnel_entries renamed to funnel_entries_legacy (kept unchanged)"))
    if report.migrated:
        lines.append(_("migrations up to date"))
    sources = plan.test_id_sources
    unknown = {how: count for how, count in sorted(sources.items())
               if how not in (TestIdSource.RESOLVED, TestIdSource.RESOLVED_BY_EMAIL,
                              TestIdSource.LEGACY)}
    lines.append(_(
        "test ids, counted in legacy rows (%(rows)d rows became %(entries)d entries): "
        "%(resolved)d from the simpletest_users row user_id names, %(by_email)d from the "
        "person's latest result in the 30 days before the row, %(legacy)d written by the "
        "earlier tool, %(unknown)d unknown and stored as 0 (%(why)s)"
    ) % {
        "rows": plan.rows_planned, "entries": len(plan.groups),
        "resolved": sources.get(TestIdSource.RESOLVED, 0),
        "by_email": sources.get(TestIdSource.RESOLVED_BY_EMAIL, 0),
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
    outbox = report.outbox
    if not outbox.present:
        lines.append(_(
            "earlier outbox: no brevo_sync_outbox table, so nothing is known to be in "
            "Brevo: every adopted entry is pending"
        ))
    else:
        by_status = outbox.by_status
        other = sum(n for status, n in by_status.items()
                    if status not in (JOB_SUCCESS, JOB_PENDING, JOB_FAILED))
        lines.append(_(
            "earlier outbox: %(success)d jobs succeeded, %(pending)d pending, %(failed)d "
            "failed, %(other)d with another status; only a success counts as in Brevo, "
            "the people behind the others are sent again by our outbox (the table is "
            "left as it was)"
        ) % {"success": by_status.get(JOB_SUCCESS, 0), "pending": by_status.get(JOB_PENDING, 0),
             "failed": by_status.get(JOB_FAILED, 0), "other": other})
    if report.resync:
        lines.append(_("--resync: every adopted entry is pending, whatever the outbox says"))
    if report.duplicates_csv and report.rows_csv:
        lines.append(_("reports: %(dups)s, %(rows)s") % {
            "dups": report.duplicates_csv, "rows": report.rows_csv})
    return lines
