"""Adopt the earlier script-based tool's `funnel_entries` rows into ours.

The earlier tool created `funnel_entries` in the MODX schema with fewer columns than our
migration 0001. Where it exists in our database it is set aside as `funnel_entries_legacy`
(renamed, never changed, so no row can be lost), our migrations run, and every legacy row
is copied into the new table. Where it exists in the MODX database it is only read.

Copying normalises emails with the one email check, resolves the NULL test ids through
`simpletest_users` (the row `user_id` names when it is the same person's, otherwise the
person's latest qualifying result in the earlier tool's 30 days before the row was
written), reads the naive datetimes in MODX_TIME_ZONE, and merges rows that turn out to be
the same (email, funnel, test). An adopted entry keeps the id of the row it came from (the
earliest of a merged group) when that id is free, so ids quoted by the old tool keep
meaning.

Only a job of the earlier outbox with status `success` means Brevo holds the contact: an
entry is adopted as synced only when its rows have such a job (and, when purchased, a
successful purchase update) and no job still pending or failed; everyone else is adopted
pending and sent again by our outbox (an idempotent upsert).

The copy is idempotent: a group whose (email, funnel_type, test_id) already has an entry is
not copied again. See docs/legacy-adoption.md for the operator's side.
"""

from __future__ import annotations

import csv
import datetime as dt
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import connections, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.utils.translation import gettext as _

from funnels.csv_cells import csv_row
from funnels.emails import email_check
from funnels.models import FunnelEntry, SyncStatus
from funnels.modx.models import TestResult
from funnels.selectors.candidates import KIND_LANGUAGE, KIND_NON_LANGUAGE, KindResolver
from funnels.services.entries import entries_previous_refresh
from funnels.services.report_rollup import report_days_dirty_mark, report_rollup_refresh
from funnels.routers import MODX_ALIAS

LEGACY_TABLE = "funnel_entries"
SET_ASIDE_TABLE = "funnel_entries_legacy"
LEGACY_OUTBOX_TABLE = "brevo_sync_outbox"
LEGACY_COLUMNS = frozenset({
    "id", "email", "funnel_type", "user_id", "test_id", "entered_at",
    "certificate_purchased", "certificate_purchased_at",
})
# A column only our table has: its presence tells our table from the earlier tool's.
OUR_COLUMN = "sync_status"
UNKNOWN_TEST_ID = 0
FIRST_MIGRATION = ("funnels", "0001_initial")

SOURCE_AUTO = "auto"
SOURCE_DEFAULT = "default"
SOURCE_MODX = "modx"
SOURCES = (SOURCE_AUTO, SOURCE_DEFAULT, SOURCE_MODX)

# The earlier tool re-selected the results of the last 30 days on every run, so the
# result that made it write a row was completed at most this long before the row.
LEGACY_WINDOW = dt.timedelta(days=30)

# brevo_sync_outbox.status values; only SUCCESS means Brevo accepted the call.
JOB_SUCCESS = "success"
JOB_PENDING = "pending"
JOB_FAILED = "failed"
JOB_PURCHASE = "update_after_purchase"


class LegacyAdoptionRefused(Exception):
    """The databases are in a state the adoption will not guess about."""


class TestIdSource:
    """How an adopted entry got its test id (counted in the report)."""

    LEGACY = "legacy"              # the earlier tool did write one
    RESOLVED = "resolved"          # simpletest_users row of the same person
    # No usable user_id: the person's latest qualifying result in the 30 days before the
    # earlier tool wrote the row (it worked through that window on every run).
    RESOLVED_BY_EMAIL = "resolved_by_email"
    NO_USER_ID = "no_user_id"      # and no result of the person in that window
    USER_ROW_MISSING = "user_row_missing"
    EMAIL_DIFFERS = "email_differs"  # user_id points at someone else's result: not trusted
    USER_ROW_NO_TEST = "user_row_no_test"


@dataclass(frozen=True, slots=True)
class LegacyRow:
    id: int
    email: str | None
    funnel_type: str
    user_id: int | None
    test_id: int | None
    entered_at: dt.datetime | None  # naive, MODX server zone
    purchased: bool
    purchased_at: dt.datetime | None  # naive, MODX server zone


@dataclass(frozen=True, slots=True)
class ModxResult:
    email: str | None
    test_id: int | None
    completed_at: dt.datetime | None  # aware
    result_id: int | None = None
    kind: str | None = None  # candidates.KIND_*, when known


@dataclass
class LegacyOutbox:
    """What the earlier tool's brevo_sync_outbox says about each legacy row."""

    present: bool = False
    by_status: dict[str, int] = field(default_factory=dict)
    # legacy funnel_entries id -> {(operation_type, status)}
    jobs: dict[int, set[tuple[str, str]]] = field(default_factory=dict)

    def confirms(self, *, legacy_ids: Iterable[int], purchased: bool) -> bool:
        """Does Brevo hold these rows' contact as the earlier tool meant to send it?"""
        jobs = set().union(*(self.jobs.get(i, set()) for i in legacy_ids))
        statuses = {status for _, status in jobs}
        if JOB_SUCCESS not in statuses or statuses & {JOB_PENDING, JOB_FAILED}:
            return False
        if purchased and (JOB_PURCHASE, JOB_SUCCESS) not in jobs:
            return False
        # Any other status (a value the earlier tool never documented) is not a success.
        return statuses == {JOB_SUCCESS}


@dataclass
class LegacyGroup:
    """Legacy rows that become one entry: same normalised email, funnel and test."""

    email: str
    funnel_type: str
    test_id: int
    rows: list[LegacyRow]
    entered_at: dt.datetime
    purchased: bool
    purchased_at: dt.datetime | None
    user_id: int | None
    test_completed_at: dt.datetime | None
    survivor_id: int
    # Brevo confirmed it through the earlier outbox: adopted synced, not sent again.
    confirmed: bool = False

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.email, self.funnel_type, self.test_id)

    @property
    def legacy_ids(self) -> list[int]:
        return sorted(row.id for row in self.rows)


@dataclass
class LegacyPlan:
    groups: list[LegacyGroup] = field(default_factory=list)
    # (legacy id, reason) of rows that cannot become an entry; they stay in the legacy table.
    rejected: list[tuple[int, str]] = field(default_factory=list)
    # How each planned legacy ROW got its test id (rows, not entries: merged rows count
    # once each).
    test_id_sources: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0

    @property
    def rows_planned(self) -> int:
        return sum(len(group.rows) for group in self.groups)

    @property
    def confirmed_groups(self) -> int:
        return sum(1 for group in self.groups if group.confirmed)

    @property
    def duplicate_groups(self) -> list[LegacyGroup]:
        return [group for group in self.groups if len(group.rows) > 1]


@dataclass
class LegacySource:
    alias: str
    table: str | None  # None: no legacy table to adopt
    # funnel_entries is the earlier tool's and must be renamed aside before migrate.
    needs_rename: bool = False


@dataclass
class AdoptionReport:
    source: str
    alias: str
    table: str | None
    dry_run: bool
    resync: bool = False
    renamed: bool = False
    migrated: bool = False
    plan: LegacyPlan = field(default_factory=LegacyPlan)
    adopted: int = 0
    already_present: int = 0
    # Keys of the groups this run created (the others were there before it).
    created: set[tuple[str, str, int]] = field(default_factory=set)
    # legacy id -> id of the entry that now stands for it (itself or its group's survivor).
    mapping: dict[int, int] = field(default_factory=dict)
    outbox: LegacyOutbox = field(default_factory=LegacyOutbox)
    # Entries this run adopted as synced / pending (dry run: would adopt).
    adopted_synced: int = 0
    adopted_pending: int = 0
    # --source auto found no table in our database but one in the MODX database, or the
    # other way round: said in the output.
    found_by_search: bool = False
    duplicates_csv: Path | None = None
    rows_csv: Path | None = None


# --- Inspecting the databases --------------------------------------------------------

def _tables(alias: str) -> set[str]:
    connection = connections[alias]
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


def _columns(alias: str, table: str) -> set[str]:
    connection = connections[alias]
    with connection.cursor() as cursor:
        description = connection.introspection.get_table_description(cursor, table)
    return {column.name.lower() for column in description}


def _first_migration_applied(alias: str) -> bool:
    recorder = MigrationRecorder(connections[alias])
    return recorder.has_table() and FIRST_MIGRATION in recorder.applied_migrations()


def _same_database(alias_a: str, alias_b: str) -> bool:
    a, b = connections[alias_a].settings_dict, connections[alias_b].settings_dict
    keys = ("ENGINE", "HOST", "PORT", "NAME")
    return all(str(a.get(k) or "") == str(b.get(k) or "") for k in keys)


def _is_legacy_shape(columns: set[str]) -> bool:
    return LEGACY_COLUMNS <= columns and OUR_COLUMN not in columns


def legacy_source_inspect(*, source: str) -> LegacySource:
    """Find the legacy table and decide what must happen before copying, or refuse."""
    if source == SOURCE_AUTO:
        return _auto_source_inspect()
    if source == SOURCE_MODX:
        return _modx_source_inspect()
    if source != SOURCE_DEFAULT:
        raise LegacyAdoptionRefused(_("unknown source %(source)s") % {"source": source})
    return _default_source_inspect()


def _legacy_table_in(alias: str, table: str = LEGACY_TABLE) -> bool:
    return table in _tables(alias) and _is_legacy_shape(_columns(alias, table))


def _auto_source_inspect() -> LegacySource:
    """Wherever the earlier tool's table is: our database first, then the MODX database
    (where the earlier tool created it when our tables live in a database of their own)."""
    ours = _default_source_inspect()
    separate = not _same_database(MODX_ALIAS, "default")
    in_modx = separate and _legacy_table_in(MODX_ALIAS)
    if ours.table is not None and in_modx:
        raise LegacyAdoptionRefused(_(
            "the earlier tool's table is in both databases (%(ours)s in ours, "
            "funnel_entries in the MODX database); say which to adopt with --source "
            "default or --source modx"
        ) % {"ours": ours.table})
    if in_modx:
        return LegacySource(alias=MODX_ALIAS, table=LEGACY_TABLE)
    return ours


def _default_source_inspect() -> LegacySource:
    alias = "default"
    tables = _tables(alias)
    applied = _first_migration_applied(alias)
    current = _columns(alias, LEGACY_TABLE) if LEGACY_TABLE in tables else None
    set_aside = SET_ASIDE_TABLE in tables

    if current is not None and _is_legacy_shape(current):
        if applied:
            raise LegacyAdoptionRefused(_(
                "funnel_entries has the earlier tool's columns but django_migrations says "
                "funnels 0001 is applied; the migration history is not trustworthy, "
                "refusing to guess"
            ))
        if set_aside:
            raise LegacyAdoptionRefused(_(
                "both funnel_entries (earlier tool's) and funnel_entries_legacy exist; "
                "refusing to guess which one to adopt"
            ))
        _refuse_half_migrated(alias=alias, tables=tables)
        if connections[alias].vendor != "mysql":
            # The earlier tool only ever ran on MySQL/MariaDB, whose index names are per
            # table; elsewhere the set-aside table's index names would block migrate.
            raise LegacyAdoptionRefused(_(
                "the earlier tool's table can only be set aside on MySQL/MariaDB"
            ))
        return LegacySource(alias=alias, table=LEGACY_TABLE, needs_rename=True)
    if current is not None and OUR_COLUMN in current and not applied:
        raise LegacyAdoptionRefused(_(
            "funnel_entries has our columns but funnels 0001 is not recorded as applied "
            "(an interrupted migrate?); see docs/legacy-adoption.md"
        ))
    if current is not None and OUR_COLUMN not in current:
        raise LegacyAdoptionRefused(_(
            "funnel_entries has neither the earlier tool's columns nor ours; refusing to "
            "touch it"
        ))
    if set_aside:
        if not _is_legacy_shape(_columns(alias, SET_ASIDE_TABLE)):
            raise LegacyAdoptionRefused(_(
                "funnel_entries_legacy does not have the earlier tool's columns"
            ))
        if not applied:
            # Interrupted after the rename: our migrations still have to run.
            _refuse_half_migrated(alias=alias, tables=tables)
        return LegacySource(alias=alias, table=SET_ASIDE_TABLE)
    return LegacySource(alias=alias, table=None)


def _modx_source_inspect() -> LegacySource:
    if _same_database(MODX_ALIAS, "default"):
        raise LegacyAdoptionRefused(_(
            "the MODX database is also our database: use --source default"
        ))
    tables = _tables(MODX_ALIAS)
    if LEGACY_TABLE not in tables:
        raise LegacyAdoptionRefused(_(
            "the MODX database has no funnel_entries table to adopt"
        ))
    if not _is_legacy_shape(_columns(MODX_ALIAS, LEGACY_TABLE)):
        raise LegacyAdoptionRefused(_(
            "funnel_entries in the MODX database does not have the earlier tool's columns"
        ))
    return LegacySource(alias=MODX_ALIAS, table=LEGACY_TABLE)


def _refuse_half_migrated(*, alias: str, tables: set[str]) -> None:
    ours = {
        model._meta.db_table
        for model in apps.get_app_config("funnels").get_models()
        if model._meta.db_table != LEGACY_TABLE
    }
    present = sorted(ours & tables)
    if present:
        raise LegacyAdoptionRefused(
            _(
                "tables %(tables)s exist although funnels 0001 is not applied (a migrate "
                "that failed on the earlier tool's funnel_entries?); drop them, they are "
                "empty, and run adopt_legacy_entries again"
            ) % {"tables": ", ".join(present)}
        )


# --- Reading ---------------------------------------------------------------------------

def legacy_rows_read(*, alias: str, table: str, chunk_size: int = 5000) -> Iterator[LegacyRow]:
    """Stream the legacy rows in id order, a chunk at a time (keyset, not OFFSET)."""
    connection = connections[alias]
    quoted = connection.ops.quote_name(table)
    last_id = -1
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, email, funnel_type, user_id, test_id, entered_at, "
                "certificate_purchased, certificate_purchased_at "
                f"FROM {quoted} WHERE id > %s ORDER BY id LIMIT %s",
                [last_id, chunk_size],
            )
            chunk = cursor.fetchall()
        for row in chunk:
            yield LegacyRow(
                id=int(row[0]), email=row[1], funnel_type=(row[2] or "").strip(),
                user_id=row[3], test_id=row[4],
                entered_at=_naive(row[5]), purchased=bool(row[6]),
                purchased_at=_naive(row[7]),
            )
        if len(chunk) < chunk_size:
            return
        last_id = int(chunk[-1][0])


def _naive(value) -> dt.datetime | None:
    # The raw cursor gives MySQL DATETIMEs as naive datetimes; a zero date comes as None.
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def legacy_modx_results(*, user_ids: Iterable[int], chunk_size: int = 2000) -> dict[int, ModxResult]:
    """The simpletest_users rows the legacy user_ids point at (MODX, read only)."""
    ids = sorted(set(user_ids))
    found: dict[int, ModxResult] = {}
    if ids and TestResult._meta.db_table not in _tables(MODX_ALIAS):
        raise LegacyAdoptionRefused(
            _("the MODX database has no %(table)s table to resolve test ids from; "
              "check MODX_DATABASE_URL") % {"table": TestResult._meta.db_table}
        )
    for start in range(0, len(ids), chunk_size):
        for pk, email, test_id, completed_at in TestResult.objects.filter(
            id__in=ids[start:start + chunk_size]
        ).values_list("id", "email", "test_id", "completed_at"):
            found[pk] = ModxResult(email=email, test_id=test_id, completed_at=completed_at)
    return found


def legacy_email_results(
    *, rows: Iterable[LegacyRow], time_zone: str
) -> dict[str, list[ModxResult]]:
    """The MODX results of the people whose rows name no usable result, by normalised
    email: read once over the Datep range the earlier tool could have seen (its 30 days
    before the first such row, up to the last), streamed, only the people's rows kept.

    simpletest_users has no index on Email and stores it as typed, so the range is read
    through idx_datep and the emails compared here, normalised.
    """
    zone = zoneinfo.ZoneInfo(time_zone)
    wanted: set[str] = set()
    times: list[dt.datetime] = []
    for row in rows:
        checked = email_check(row.email)
        if checked.ok and row.entered_at is not None:
            wanted.add(checked.email)
            times.append(_utc(row.entered_at, zone))
    if not wanted:
        return {}
    if TestResult._meta.db_table not in _tables(MODX_ALIAS):
        raise LegacyAdoptionRefused(
            _("the MODX database has no %(table)s table to resolve test ids from; "
              "check MODX_DATABASE_URL") % {"table": TestResult._meta.db_table}
        )
    found: dict[str, list[tuple]] = {}
    for pk, email, test_id, completed_at in (
        TestResult.objects.filter(
            completed_at__gte=min(times) - LEGACY_WINDOW, completed_at__lte=max(times),
            test_id__isnull=False,
        ).values_list("id", "email", "test_id", "completed_at").iterator(chunk_size=5000)
    ):
        normalised = email_check(email).email
        if normalised in wanted:
            found.setdefault(normalised, []).append((pk, email, test_id, completed_at))
    kinds = KindResolver().kinds_for(r[2] for rs in found.values() for r in rs)
    return {
        email: [
            ModxResult(email=raw, test_id=test_id, completed_at=completed_at,
                       result_id=pk, kind=kinds.get(test_id))
            for pk, raw, test_id, completed_at in sorted(results, key=lambda r: r[0])
        ]
        for email, results in found.items()
    }


def legacy_outbox_read(*, alias: str, chunk_size: int = 10000) -> LegacyOutbox:
    """Every job of the earlier outbox, by the legacy row it was for (keyset chunks)."""
    outbox = LegacyOutbox()
    if LEGACY_OUTBOX_TABLE not in _tables(alias):
        return outbox
    outbox.present = True
    connection = connections[alias]
    quoted = connection.ops.quote_name(LEGACY_OUTBOX_TABLE)
    last_id = -1
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, funnel_entry_id, operation_type, status FROM {quoted} "
                "WHERE id > %s ORDER BY id LIMIT %s",
                [last_id, chunk_size],
            )
            chunk = cursor.fetchall()
        for _id, entry_id, operation, status in chunk:
            status = (status or "").strip().lower()
            outbox.by_status[status] = outbox.by_status.get(status, 0) + 1
            outbox.jobs.setdefault(int(entry_id), set()).add(
                ((operation or "").strip().lower(), status)
            )
        if len(chunk) < chunk_size:
            return outbox
        last_id = int(chunk[-1][0])


# --- Planning (pure) -------------------------------------------------------------------

def legacy_groups_plan(
    *, rows: Iterable[LegacyRow], modx_results: dict[int, ModxResult], time_zone: str,
    email_results: dict[str, list[ModxResult]] | None = None,
    outbox: LegacyOutbox | None = None,
) -> LegacyPlan:
    """Normalise, resolve test ids and merge rows into the entries they become; an entry
    is `confirmed` when the earlier outbox shows Brevo accepted it (see LegacyOutbox)."""
    zone = zoneinfo.ZoneInfo(time_zone)
    email_results = email_results or {}
    outbox = outbox or LegacyOutbox()
    plan = LegacyPlan()
    by_key: dict[tuple[str, str, int], list[tuple[LegacyRow, ModxResult | None]]] = {}
    for row in rows:
        plan.rows_read += 1
        checked = email_check(row.email)
        if not checked.ok:
            plan.rejected.append((row.id, checked.reason))
            continue
        if row.entered_at is None:
            plan.rejected.append((row.id, "no_entered_at"))
            continue
        if not row.funnel_type:
            plan.rejected.append((row.id, "no_funnel_type"))
            continue
        test_id, how, result = _test_id_resolve(
            row=row, email=checked.email, modx_results=modx_results,
            email_results=email_results.get(checked.email, ()),
            entered_at=_utc(row.entered_at, zone),
        )
        plan.test_id_sources[how] = plan.test_id_sources.get(how, 0) + 1
        by_key.setdefault((checked.email, row.funnel_type, test_id), []).append((row, result))

    for (email, funnel_type, test_id), members in by_key.items():
        # The earliest entry survives (ties: the lowest id), as the person entered then.
        members.sort(key=lambda m: (m[0].entered_at, m[0].id))
        survivor, survivor_result = members[0]
        purchase_times = [m[0].purchased_at for m in members
                          if m[0].purchased and m[0].purchased_at is not None]
        purchased = any(m[0].purchased for m in members)
        plan.groups.append(LegacyGroup(
            email=email, funnel_type=funnel_type, test_id=test_id,
            rows=[m[0] for m in members],
            entered_at=_utc(survivor.entered_at, zone),
            purchased=purchased,
            purchased_at=_utc(min(purchase_times), zone) if purchase_times else None,
            user_id=(survivor_result.result_id if survivor_result and survivor_result.result_id
                     else survivor.user_id),
            test_completed_at=survivor_result.completed_at if survivor_result else None,
            survivor_id=survivor.id,
            confirmed=outbox.confirms(legacy_ids=(m[0].id for m in members),
                                      purchased=purchased),
        ))
    plan.groups.sort(key=lambda g: g.survivor_id)
    plan.rejected.sort()
    return plan


def _test_id_resolve(
    *, row: LegacyRow, email: str, modx_results: dict[int, ModxResult],
    email_results: Iterable[ModxResult], entered_at: dt.datetime,
) -> tuple[int, str, ModxResult | None]:
    if row.test_id is not None:
        return row.test_id, TestIdSource.LEGACY, modx_results.get(row.user_id or -1)
    if row.user_id is None:
        why = TestIdSource.NO_USER_ID
    else:
        result = modx_results.get(row.user_id)
        if result is None:
            why = TestIdSource.USER_ROW_MISSING
        elif email_check(result.email).email != email:
            why = TestIdSource.EMAIL_DIFFERS
        elif result.test_id is None:
            why = TestIdSource.USER_ROW_NO_TEST
        else:
            return result.test_id, TestIdSource.RESOLVED, result
    # The earlier tool worked newest first through the last 30 days: the person's latest
    # result of the funnel's kind before the row was written is the one it acted on.
    window = [
        r for r in email_results
        if r.test_id is not None and r.completed_at is not None
        and entered_at - LEGACY_WINDOW <= r.completed_at <= entered_at
        and (row.funnel_type not in _KINDS or r.kind == row.funnel_type)
    ]
    if window:
        best = max(window, key=lambda r: (r.completed_at, r.result_id or 0))
        return best.test_id, TestIdSource.RESOLVED_BY_EMAIL, best
    return UNKNOWN_TEST_ID, why, None


# Funnel slugs that name a test kind (the two standard funnels).
_KINDS = frozenset({KIND_LANGUAGE, KIND_NON_LANGUAGE})


def _utc(naive: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return naive.replace(tzinfo=zone).astimezone(dt.timezone.utc)


# --- Writing ---------------------------------------------------------------------------

def _existing_ids(
    groups: list[LegacyGroup], *, chunk_size: int = 1000
) -> dict[tuple[str, str, int], int]:
    """Entries that already exist for the groups' keys (found through idx_email_funnel)."""
    found: dict[tuple[str, str, int], int] = {}
    emails = sorted({g.email for g in groups})
    for start in range(0, len(emails), chunk_size):
        for email, funnel_type, test_id, pk in FunnelEntry.objects.filter(
            email__in=emails[start:start + chunk_size]
        ).values_list("email", "funnel_type", "test_id", "id"):
            found[(email, funnel_type, test_id)] = pk
    return found


def legacy_entries_copy(
    *, plan: LegacyPlan, now: dt.datetime, resync: bool, chunk_size: int = 1000
) -> tuple[set[tuple[str, str, int]], dict[int, int]]:
    """Create the entries of the plan that do not exist yet, in one transaction.

    Returns the keys of the groups created and, for every planned legacy row, the id of
    the entry that stands for it.
    """
    created: set[tuple[str, str, int]] = set()
    mapping: dict[int, int] = {}
    with transaction.atomic(using="default"):
        for start in range(0, len(plan.groups), chunk_size):
            chunk = plan.groups[start:start + chunk_size]
            existing = _existing_ids(chunk)
            new = [g for g in chunk if g.key not in existing]
            taken = set(FunnelEntry.objects.filter(
                id__in=[g.survivor_id for g in new]
            ).values_list("id", flat=True))
            FunnelEntry.objects.bulk_create(
                _entry_build(group=g, keep_id=g.survivor_id not in taken, now=now,
                             resync=resync)
                for g in new
            )
            created.update(g.key for g in new)
            # The report's rollup counts these days again (services/report_rollup.py).
            report_days_dirty_mark(times=[g.entered_at for g in new])
            # Read the ids back by the natural key rather than trusting bulk_create to
            # return them: MySQL only reports the ids it assigned on MariaDB 10.5+.
            existing = _existing_ids(chunk)
            for group in chunk:
                for row in group.rows:
                    mapping[row.id] = existing[group.key]
        # Adopted rows join the people's other entries in previous_entered_at, which the
        # reports count people by; per person, as migration 0008 fills it.
        entries_previous_refresh(
            keys={(g.funnel_type, g.email) for g in plan.groups if g.key in created},
            chunk_size=chunk_size,
        )
    return created, mapping


def _entry_build(*, group: LegacyGroup, keep_id: bool, now: dt.datetime,
                 resync: bool) -> FunnelEntry:
    """Synced only when the earlier outbox shows Brevo accepted it (and `resync` is not
    asked); everyone else pending, due now."""
    entry = FunnelEntry(
        id=group.survivor_id if keep_id else None,
        email=group.email,
        funnel_type=group.funnel_type,
        user_id=group.user_id,
        test_id=group.test_id,
        entered_at=group.entered_at,
        certificate_purchased=group.purchased,
        certificate_purchased_at=group.purchased_at,
        test_completed_at=group.test_completed_at,
        sync_revision=1,
    )
    if resync or not group.confirmed:
        # Brevo writes are idempotent upserts: sending what it may already have is safe,
        # and a pending or failed job of the earlier tool may never have reached it.
        entry.sync_status = SyncStatus.PENDING
        entry.synced_revision = 0
        entry.sync_next_attempt_at = now
    else:
        # A `success` job: Brevo holds the contact. When exactly is not worth guessing
        # from the job's updated_at (the earlier tool's clock), so synced_at stays empty.
        entry.sync_status = SyncStatus.SYNCED
        entry.synced_revision = 1
    return entry


def legacy_table_set_aside(*, alias: str = "default") -> None:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(
            f"RENAME TABLE {connection.ops.quote_name(LEGACY_TABLE)} "
            f"TO {connection.ops.quote_name(SET_ASIDE_TABLE)}"
        )


# --- Report files ----------------------------------------------------------------------

def legacy_report_write(*, report: AdoptionReport, directory: Path, now: dt.datetime) -> None:
    """Two CSV files: the duplicate groups, and every legacy row with what became of it.

    Only ids, funnel and test: the legacy table keeps the emails, a log folder need not.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix = "legacy-adoption-dry-run" if report.dry_run else "legacy-adoption"
    base, attempt = f"{prefix}-{stamp}", 1
    # Two runs within a second must not overwrite each other's evidence.
    while (directory / f"{base}-rows.csv").exists():
        attempt += 1
        base = f"{prefix}-{stamp}-{attempt}"
    report.duplicates_csv = directory / f"{base}-duplicates.csv"
    report.rows_csv = directory / f"{base}-rows.csv"
    with report.duplicates_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["survivor_legacy_id", "funnel_type", "test_id", "rows", "legacy_ids"])
        for group in report.plan.duplicate_groups:
            writer.writerow(csv_row([
                group.survivor_id, group.funnel_type, group.test_id, len(group.rows),
                " ".join(str(i) for i in group.legacy_ids),
            ]))
    with report.rows_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["legacy_id", "outcome", "entry_id", "survivor_legacy_id",
                         "funnel_type", "test_id"])
        lines: list[tuple] = []
        for group in report.plan.groups:
            for row in group.rows:
                if not report.dry_run and group.key not in report.created:
                    outcome = "already_present"
                elif row.id == group.survivor_id:
                    outcome = "adopted"
                else:
                    outcome = "merged"
                lines.append((row.id, outcome, report.mapping.get(row.id, ""),
                              group.survivor_id, group.funnel_type, group.test_id))
        for legacy_id, reason in report.plan.rejected:
            lines.append((legacy_id, reason, "", "", "", ""))
        writer.writerows(csv_row(line) for line in sorted(lines))


# --- The whole adoption ----------------------------------------------------------------

def legacy_entries_adopt(
    *,
    source: str,
    dry_run: bool,
    resync: bool,
    now: dt.datetime,
    migrate: Callable[[], None],
    report_dir: Path,
) -> AdoptionReport:
    """Set the legacy table aside if needed, migrate, and copy its rows (see module doc).

    `migrate` runs our migrations on the default database (the command passes Django's
    migrate); a dry run neither renames, migrates nor writes an entry.
    """
    found = legacy_source_inspect(source=source)
    report = AdoptionReport(
        source=source, alias=found.alias, table=found.table, dry_run=dry_run, resync=resync,
        found_by_search=source == SOURCE_AUTO and found.alias == MODX_ALIAS,
    )
    if not dry_run and found.needs_rename:
        legacy_table_set_aside(alias=found.alias)
        report.renamed = True
        report.table = SET_ASIDE_TABLE
    if not dry_run:
        # Always: a no-op when up to date, and the copy needs every column the models have.
        migrate()
        report.migrated = True
    if found.table is None:
        return report

    rows = list(legacy_rows_read(alias=found.alias, table=report.table))
    modx_results = legacy_modx_results(user_ids=(r.user_id for r in rows if r.user_id))
    report.outbox = legacy_outbox_read(alias=found.alias)
    report.plan = legacy_groups_plan(
        rows=rows, modx_results=modx_results, time_zone=settings.MODX_TIME_ZONE,
        email_results=legacy_email_results(
            rows=(r for r in rows if r.test_id is None), time_zone=settings.MODX_TIME_ZONE
        ),
        outbox=report.outbox,
    )
    if dry_run:
        new_keys = {g.key for g in report.plan.groups}
        if FunnelEntry._meta.db_table in _tables("default") and not found.needs_rename:
            existing = _existing_ids(report.plan.groups)
            new_keys -= existing.keys()
    else:
        report.created, report.mapping = legacy_entries_copy(
            plan=report.plan, now=now, resync=resync
        )
        new_keys = report.created
        # The report's rollup counts every entry, the adopted ones included: the runs keep
        # it from here (services/report_rollup.py).
        report_rollup_refresh(rebuild=True)
    new = [g for g in report.plan.groups if g.key in new_keys]
    report.adopted = len(new)
    report.already_present = len(report.plan.groups) - report.adopted
    report.adopted_synced = sum(1 for g in new if g.confirmed and not resync)
    report.adopted_pending = report.adopted - report.adopted_synced
    legacy_report_write(report=report, directory=report_dir, now=now)
    return report


# --- Where the switch-over stands (switch_over_check) ------------------------------------

@dataclass
class LegacyStatus:
    """The earlier tool's table as the pre-flight check sees it; nothing is written."""

    source: LegacySource | None = None  # None: no earlier table in either database
    rows: int = 0
    entries: int = 0  # entries its usable rows become
    missing: int = 0  # of them, not in funnel_entries
    adopted_at: dt.datetime | None = None  # the last adoption (its entries' created_at)
    rows_after: int = 0  # legacy rows the earlier tool wrote after that
    jobs_after: int = 0  # earlier outbox jobs created after that


def legacy_adoption_status() -> LegacyStatus:
    """Is the earlier table adopted, and is its writer still at work? Reads only; raises
    LegacyAdoptionRefused where the adoption itself would refuse."""
    found = legacy_source_inspect(source=SOURCE_AUTO)
    if found.table is None:
        return LegacyStatus()
    rows = list(legacy_rows_read(alias=found.alias, table=found.table))
    plan = legacy_groups_plan(
        rows=rows,
        modx_results=legacy_modx_results(user_ids=(r.user_id for r in rows if r.user_id)),
        time_zone=settings.MODX_TIME_ZONE,
        email_results=legacy_email_results(
            rows=(r for r in rows if r.test_id is None), time_zone=settings.MODX_TIME_ZONE
        ),
    )
    status = LegacyStatus(source=found, rows=len(rows), entries=len(plan.groups))
    ours = FunnelEntry._meta.db_table
    if found.needs_rename or ours not in _tables("default") or (
        OUR_COLUMN not in _columns("default", ours)
    ):
        # Our table does not exist yet: nothing is adopted.
        status.missing = status.entries
        return status
    existing = _existing_ids(plan.groups)
    status.missing = sum(1 for g in plan.groups if g.key not in existing)
    # Adopted entries are the only ones no run created.
    status.adopted_at = (
        FunnelEntry.objects.filter(run__isnull=True).order_by("-created_at")
        .values_list("created_at", flat=True).first()
    )
    if status.adopted_at is not None:
        status.rows_after, status.jobs_after = _written_after(
            alias=found.alias, table=found.table, moment=status.adopted_at
        )
    return status


def _written_after(*, alias: str, table: str, moment: dt.datetime) -> tuple[int, int]:
    """Rows of the legacy table and jobs of its outbox stamped after `moment`. The earlier
    tool stamps them with the MODX server's naive clock."""
    naive = moment.astimezone(zoneinfo.ZoneInfo(settings.MODX_TIME_ZONE)).replace(tzinfo=None)
    connection = connections[alias]
    counts = []
    for name, column in ((table, "entered_at"), (LEGACY_OUTBOX_TABLE, "created_at")):
        if name not in _tables(alias):
            counts.append(0)
            continue
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT COUNT(*) FROM {connection.ops.quote_name(name)} "
                f"WHERE {connection.ops.quote_name(column)} > %s",
                [naive],
            )
            counts.append(int(cursor.fetchone()[0]))
    return counts[0], counts[1]
