"""Adopting the earlier tool's funnel_entries: the plan (pure) and the command (MariaDB).

The command tests run `manage.py adopt_legacy_entries` in a child process against scratch
databases built from the shared DDL, so the rename and the migrate happen for real and the
pytest-django test databases are never touched.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest

from funnels.adoption.legacy import (
    UNKNOWN_TEST_ID,
    LegacyOutbox,
    LegacyRow,
    ModxResult,
    TestIdSource,
    legacy_groups_plan,
)
from funnels.tests.manage_subprocess import (
    LEGACY_DDL,
    MODX_DDL,
    manage_run,
    mariadb_connect,
    mariadb_query,
    mariadb_scratch,
    mariadb_url,
    sql_script_run,
)

UTC = dt.timezone.utc


def _row(id, email, *, funnel="language", user_id=None, test_id=None,
         entered="2024-03-01 12:00", purchased=False, purchased_at=None) -> LegacyRow:
    return LegacyRow(
        id=id, email=email, funnel_type=funnel, user_id=user_id, test_id=test_id,
        entered_at=dt.datetime.fromisoformat(entered),
        purchased=purchased,
        purchased_at=dt.datetime.fromisoformat(purchased_at) if purchased_at else None,
    )


# --- The plan: no database ---------------------------------------------------------------

def test_variants_of_one_email_merge_into_the_earliest_entry_with_the_earliest_purchase():
    plan = legacy_groups_plan(
        rows=[
            _row(1, "Anna@Example.com", entered="2024-03-01 12:00"),
            _row(2, " anna@example.com", entered="2024-03-01 11:00", purchased=True,
                 purchased_at="2024-03-09 10:00"),
            _row(3, "ANNA@EXAMPLE.COM ", entered="2024-03-02 08:00", purchased=True,
                 purchased_at="2024-03-05 10:00"),
            _row(4, "anna@example.com", funnel="non_language"),
        ],
        modx_results={}, time_zone="Europe/Moscow",
    )
    [merged, other_funnel] = plan.groups
    assert merged.key == ("anna@example.com", "language", UNKNOWN_TEST_ID)
    assert merged.legacy_ids == [1, 2, 3]
    assert merged.survivor_id == 2
    assert merged.entered_at == dt.datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert merged.purchased is True
    assert merged.purchased_at == dt.datetime(2024, 3, 5, 7, 0, tzinfo=UTC)
    assert other_funnel.legacy_ids == [4] and other_funnel.purchased is False
    assert [g.legacy_ids for g in plan.duplicate_groups] == [[1, 2, 3]]


def test_naive_times_are_read_in_the_configured_modx_zone():
    rows = [_row(1, "a@example.com", entered="2024-07-01 12:00")]
    berlin = legacy_groups_plan(rows=rows, modx_results={}, time_zone="Europe/Berlin")
    moscow = legacy_groups_plan(rows=rows, modx_results={}, time_zone="Europe/Moscow")
    assert berlin.groups[0].entered_at == dt.datetime(2024, 7, 1, 10, 0, tzinfo=UTC)
    assert moscow.groups[0].entered_at == dt.datetime(2024, 7, 1, 9, 0, tzinfo=UTC)


def test_rows_without_a_usable_email_are_rejected_with_the_reason():
    plan = legacy_groups_plan(
        rows=[_row(1, ""), _row(2, "not-an-email"), _row(3, None), _row(4, "ok@example.com")],
        modx_results={}, time_zone="UTC",
    )
    assert plan.rejected == [(1, "empty_email"), (2, "invalid_email"), (3, "empty_email")]
    assert [g.legacy_ids for g in plan.groups] == [[4]]
    assert plan.rows_read == 4


def test_test_ids_come_from_the_modx_row_of_the_same_person_only():
    completed = dt.datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    results = {
        10: ModxResult(email=" Anna@example.com", test_id=5, completed_at=completed),
        11: ModxResult(email="someone.else@example.com", test_id=6, completed_at=completed),
        12: ModxResult(email="carl@example.com", test_id=None, completed_at=None),
    }
    plan = legacy_groups_plan(
        rows=[
            _row(1, "anna@example.com", user_id=10),
            _row(2, "bob@example.com", user_id=11),
            _row(3, "carl@example.com", user_id=12),
            _row(4, "dora@example.com", user_id=404),
            _row(5, "eve@example.com"),
            _row(6, "fay@example.com", test_id=42),
        ],
        modx_results=results, time_zone="UTC",
    )
    by_id = {g.survivor_id: g for g in plan.groups}
    assert by_id[1].test_id == 5 and by_id[1].test_completed_at == completed
    assert [by_id[i].test_id for i in (2, 3, 4, 5)] == [UNKNOWN_TEST_ID] * 4
    assert by_id[6].test_id == 42
    assert plan.test_id_sources == {
        TestIdSource.RESOLVED: 1, TestIdSource.EMAIL_DIFFERS: 1,
        TestIdSource.USER_ROW_NO_TEST: 1, TestIdSource.USER_ROW_MISSING: 1,
        TestIdSource.NO_USER_ID: 1, TestIdSource.LEGACY: 1,
    }


def test_without_a_user_id_the_latest_result_of_the_funnels_kind_in_30_days_is_taken():
    def result(pk, test_id, completed, kind="language"):
        return ModxResult(email="Ann@Example.com", test_id=test_id, result_id=pk, kind=kind,
                          completed_at=dt.datetime.fromisoformat(completed).replace(tzinfo=UTC))
    by_email = {"ann@example.com": [
        result(1, 5, "2024-01-01 10:00"),   # more than 30 days before the row
        result(2, 6, "2024-02-20 10:00"),
        result(3, 7, "2024-02-25 10:00", kind="non_language"),  # not the funnel's kind
        result(4, 8, "2024-03-02 10:00"),   # after the row was written
    ]}
    plan = legacy_groups_plan(
        rows=[_row(1, "ann@example.com", entered="2024-03-01 12:00"),
              _row(2, "bo@example.com", entered="2024-03-01 12:00")],
        modx_results={}, time_zone="UTC", email_results=by_email,
    )
    by_id = {g.survivor_id: g for g in plan.groups}
    assert (by_id[1].test_id, by_id[1].user_id) == (6, 2)
    assert by_id[1].test_completed_at == dt.datetime(2024, 2, 20, 10, 0, tzinfo=UTC)
    assert by_id[2].test_id == UNKNOWN_TEST_ID
    assert plan.test_id_sources == {TestIdSource.RESOLVED_BY_EMAIL: 1, TestIdSource.NO_USER_ID: 1}


def test_only_a_successful_job_with_nothing_pending_or_failed_counts_as_in_brevo():
    outbox = LegacyOutbox(present=True, jobs={
        1: {("upsert_contact", "success")},
        2: {("upsert_contact", "success")}, 3: {("upsert_contact", "pending")},
        4: {("upsert_contact", "failed")},
        5: {("upsert_contact", "success")},  # purchased, but no purchase update sent
        6: {("upsert_contact", "success"), ("update_after_purchase", "success")},
        7: {("upsert_contact", "completed")},  # not a status the earlier tool documents
    })
    plan = legacy_groups_plan(
        rows=[
            _row(1, "a@example.com"),
            _row(2, "b@example.com"), _row(3, "B@example.com"),
            _row(4, "c@example.com"),
            _row(5, "d@example.com", purchased=True, purchased_at="2024-03-02 10:00"),
            _row(6, "e@example.com", purchased=True, purchased_at="2024-03-02 10:00"),
            _row(7, "f@example.com"),
            _row(8, "g@example.com"),  # no job at all
        ],
        modx_results={}, time_zone="UTC", outbox=outbox,
    )
    assert {g.email: g.confirmed for g in plan.groups} == {
        "a@example.com": True, "b@example.com": False, "c@example.com": False,
        "d@example.com": False, "e@example.com": True, "f@example.com": False,
        "g@example.com": False,
    }
    assert plan.confirmed_groups == 2


# --- The command on MariaDB ----------------------------------------------------------------

# (id, email, funnel_type, user_id, test_id, entered_at, purchased, purchased_at): naive
# Moscow times, NULL test ids, case and space variants of one address, invalid addresses.
LEGACY_ROWS = [
    (1, "Anna@Example.com", "language", 10, None, "2024-03-01 12:00:00", 0, None),
    (2, " anna@example.com", "language", 11, None, "2024-03-01 11:00:00", 1, "2024-03-05 10:00:00"),
    (3, "ANNA@EXAMPLE.COM ", "language", None, None, "2024-02-01 09:00:00", 0, None),
    (4, "anna@example.com", "language", None, None, "2024-02-02 09:00:00", 1, "2024-02-10 09:00:00"),
    (5, "anna@example.com", "non_language", None, None, "2024-02-03 09:00:00", 0, None),
    (6, "bob@example.com", "language", 12, None, "2024-03-02 10:05:00", 0, None),
    (7, "not-an-email", "language", None, None, "2024-03-02 10:05:00", 0, None),
    (8, "", "language", None, None, "2024-03-02 10:05:00", 0, None),
    (9, "carol@example.com", "language", 999, None, "2024-03-02 10:05:00", 0, None),
    (10, "dave@example.com", "language", 13, None, "2024-03-02 10:05:00", 0, None),
    (11, "eve@example.com", "language", None, 42, "2024-03-02 10:05:00", 0, None),
]
MODX_RESULTS = [
    (10, "Anna@Example.com", 5, "2024-03-01 11:00:00"),
    (11, "anna@example.com ", 5, "2024-03-01 12:00:00"),
    (12, "bob@example.com", 7, "2024-03-02 10:00:00"),
    (13, "other@example.com", 9, "2024-03-02 10:00:00"),  # not dave: test id not trusted
    # Carol's row names no existing result: her language result the day before is found
    # by email.
    (14, "Carol@Example.com ", 8, "2024-03-01 10:00:00"),
]
# Brevo jobs of the earlier outbox: (legacy row, operation, status). Only bob, anna's
# non-language entry and dave were confirmed (success, nothing pending or failed).
OUTBOX_JOBS = [
    (1, "upsert_contact", "success"), (2, "upsert_contact", "pending"),
    (3, "upsert_contact", "success"), (4, "upsert_contact", "success"),  # bought, not sent
    (5, "upsert_contact", "success"), (6, "upsert_contact", "success"),
    (9, "upsert_contact", "failed"), (10, "upsert_contact", "success"),
]
SYNCED_IDS = {5, 6, 10}
# What the adoption must produce: id -> (email, funnel, test id, entered UTC, purchased at).
EXPECTED_ENTRIES = {
    2: ("anna@example.com", "language", 5, dt.datetime(2024, 3, 1, 8, 0),
        dt.datetime(2024, 3, 5, 7, 0)),
    3: ("anna@example.com", "language", 0, dt.datetime(2024, 2, 1, 6, 0),
        dt.datetime(2024, 2, 10, 6, 0)),
    5: ("anna@example.com", "non_language", 0, dt.datetime(2024, 2, 3, 6, 0), None),
    6: ("bob@example.com", "language", 7, dt.datetime(2024, 3, 2, 7, 5), None),
    9: ("carol@example.com", "language", 8, dt.datetime(2024, 3, 2, 7, 5), None),
    10: ("dave@example.com", "language", 0, dt.datetime(2024, 3, 2, 7, 5), None),
    11: ("eve@example.com", "language", 42, dt.datetime(2024, 3, 2, 7, 5), None),
}
INVALID_IDS = {7, 8}


def _fill_modx_and_legacy(name: str) -> None:
    connection = mariadb_connect(name)
    try:
        sql_script_run(connection, MODX_DDL)
        sql_script_run(connection, LEGACY_DDL)
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO simpletest_lang (Id) VALUES (1)")
            cursor.execute("INSERT INTO simpletest_test (newid, Id, LangId) VALUES (1, 8, 1)")
            cursor.executemany(
                "INSERT INTO simpletest_users (Id, Email, TestId, Datep) VALUES (%s,%s,%s,%s)",
                MODX_RESULTS,
            )
            cursor.executemany(
                "INSERT INTO funnel_entries (id, email, funnel_type, user_id, test_id, "
                "entered_at, certificate_purchased, certificate_purchased_at) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                LEGACY_ROWS,
            )
            cursor.executemany(
                "INSERT INTO brevo_sync_outbox (funnel_entry_id, operation_type, payload, "
                "status) VALUES (%s, %s, '{}', %s)",
                OUTBOX_JOBS,
            )
    finally:
        connection.close()


def _tables(name: str) -> set[str]:
    return {row[0] for row in mariadb_query(name, "SHOW TABLES")}


def _adopt(tmp_path: Path, *args: str, default: str, modx: str):
    return manage_run(
        "adopt_legacy_entries", "--report-dir", str(tmp_path / "reports"), *args,
        env={
            "DATABASE_URL": mariadb_url(default),
            "MODX_DATABASE_URL": mariadb_url(modx),
            "MODX_TIME_ZONE": "Europe/Moscow",
            "LOG_FILE": str(tmp_path / "app.log"),
        },
    )


def _csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _latest(tmp_path: Path, suffix: str) -> Path:
    files = sorted((tmp_path / "reports").glob(f"legacy-adoption-2*{suffix}"),
                   key=lambda p: p.stat().st_mtime_ns)
    return files[-1]


def _entries(name: str) -> dict[int, tuple]:
    return {
        row[0]: row[1:]
        for row in mariadb_query(
            name,
            "SELECT id, email, funnel_type, test_id, entered_at, certificate_purchased_at, "
            "certificate_purchased, sync_status, sync_revision, synced_revision "
            "FROM funnel_entries ORDER BY id",
        )
    }


LEGACY_SELECT = "SELECT * FROM {table} ORDER BY id"


@pytest.fixture
def same_schema():
    """The usual installation: MODX tables and the earlier tool's tables in one schema."""
    with mariadb_scratch("fnd_legacy") as name:
        _fill_modx_and_legacy(name)
        yield name


@pytest.mark.mariadb_only
def test_adoption_sets_the_table_aside_migrates_and_loses_no_row(same_schema, tmp_path):
    legacy_before = mariadb_query(same_schema, LEGACY_SELECT.format(table="funnel_entries"))
    outbox_before = mariadb_query(same_schema, "SELECT * FROM brevo_sync_outbox ORDER BY id")

    done = _adopt(tmp_path, default=same_schema, modx=same_schema)

    assert done.returncode == 0, done.stderr
    assert ("adopted 7 entries (3 synced, 4 pending), 0 already present, 2 duplicate "
            "groups") in done.stdout
    assert "duplicate groups (legacy ids): 1 2; 3 4" in done.stdout
    assert "7 (invalid_email), 8 (empty_email)" in done.stdout
    assert "earlier outbox: 6 jobs succeeded, 1 pending, 1 failed, 0 with another" in done.stdout
    assert ("test ids, counted in legacy rows (9 rows became 7 entries): 3 from the "
            "simpletest_users row user_id names, 1 from the person's latest result") in done.stdout
    assert "funnel_entries renamed to funnel_entries_legacy" in done.stdout
    # Set aside, untouched; the old outbox stays as it was.
    assert mariadb_query(same_schema, LEGACY_SELECT.format(table="funnel_entries_legacy")) == (
        legacy_before
    )
    assert mariadb_query(same_schema, "SELECT * FROM brevo_sync_outbox ORDER BY id") == outbox_before
    assert ("funnels", "0001_initial") in set(
        mariadb_query(same_schema, "SELECT app, name FROM django_migrations")
    )

    entries = _entries(same_schema)
    assert {pk: values[:5] for pk, values in entries.items()} == EXPECTED_ENTRIES
    assert {pk for pk, values in entries.items() if values[6] == "synced"} == SYNCED_IDS
    for pk, values in entries.items():
        expected = ("synced", 1, 1) if pk in SYNCED_IDS else ("pending", 1, 0)
        assert values[6:] == expected, pk
    assert entries[2][5] == 1 and entries[5][5] == 0  # purchased if any row of it was
    # Anna's two language entries are linked for the reports, the rest are first entries.
    assert dict(mariadb_query(
        same_schema, "SELECT id, previous_entered_at FROM funnel_entries"
    )) == {2: dt.datetime(2024, 2, 1, 6, 0), 3: None, 5: None, 6: None, 9: None, 10: None,
           11: None}
    # The report's rollup is built over the adopted entries, nothing left dirty.
    assert mariadb_query(same_schema, "SELECT time_zone FROM report_rollup_state") == [
        ("Europe/Moscow",)
    ]
    assert mariadb_query(same_schema, "SELECT SUM(entries) FROM report_rollup")[0][0] == len(
        entries
    )
    assert mariadb_query(same_schema, "SELECT COUNT(*) FROM report_rollup_dirty") == [(0,)]

    # No row lost: every legacy id maps to exactly one entry, itself or its survivor.
    survivors = {
        int(legacy_id): int(group["survivor_legacy_id"])
        for group in _csv(_latest(tmp_path, "-duplicates.csv"))
        for legacy_id in group["legacy_ids"].split()
    }
    assert survivors == {1: 2, 2: 2, 3: 3, 4: 3}
    mapping = {int(r["legacy_id"]): r for r in _csv(_latest(tmp_path, "-rows.csv"))}
    assert set(mapping) == {row[0] for row in LEGACY_ROWS}
    legacy_by_id = {row[0]: row for row in LEGACY_ROWS}
    for legacy_id, line in mapping.items():
        if legacy_id in INVALID_IDS:
            assert line["entry_id"] == "" and line["outcome"].endswith("email")
            continue
        entry_id = int(line["entry_id"])
        assert entry_id == survivors.get(legacy_id, legacy_id)
        email, funnel = entries[entry_id][0], entries[entry_id][1]
        assert email == legacy_by_id[legacy_id][1].strip().lower()
        assert funnel == legacy_by_id[legacy_id][2]
    assert {r["outcome"] for r in mapping.values()} == {
        "adopted", "merged", "invalid_email", "empty_email"
    }


@pytest.mark.mariadb_only
def test_running_the_adoption_again_adopts_nothing_twice(same_schema, tmp_path):
    first = _adopt(tmp_path, default=same_schema, modx=same_schema)
    assert first.returncode == 0, first.stderr
    entries = _entries(same_schema)

    again = _adopt(tmp_path, default=same_schema, modx=same_schema)

    assert again.returncode == 0, again.stderr
    assert "adopted 0 entries (0 synced, 0 pending), 7 already present" in again.stdout
    assert "renamed" not in again.stdout
    assert _entries(same_schema) == entries
    rows = _csv(_latest(tmp_path, "-rows.csv"))
    assert {r["outcome"] for r in rows if int(r["legacy_id"]) not in INVALID_IDS} == {
        "already_present"
    }
    assert {int(r["legacy_id"]): int(r["entry_id"]) for r in rows if r["entry_id"]} == {
        1: 2, 2: 2, 3: 3, 4: 3, 5: 5, 6: 6, 9: 9, 10: 10, 11: 11
    }


@pytest.mark.mariadb_only
def test_dry_run_reports_the_plan_and_changes_nothing(same_schema, tmp_path):
    tables_before = _tables(same_schema)
    legacy_before = mariadb_query(same_schema, LEGACY_SELECT.format(table="funnel_entries"))

    dry = _adopt(tmp_path, "--dry-run", default=same_schema, modx=same_schema)

    assert dry.returncode == 0, dry.stderr
    assert "(dry run)" in dry.stdout and "would adopt 7 entries" in dry.stdout
    assert "duplicate groups (legacy ids): 1 2; 3 4" in dry.stdout
    assert _tables(same_schema) == tables_before
    assert "django_migrations" not in tables_before
    assert mariadb_query(same_schema, LEGACY_SELECT.format(table="funnel_entries")) == legacy_before
    assert list((tmp_path / "reports").glob("legacy-adoption-dry-run-*-duplicates.csv"))


@pytest.mark.mariadb_only
def test_resync_leaves_adopted_entries_pending_for_the_next_run(same_schema, tmp_path):
    done = _adopt(tmp_path, "--resync", default=same_schema, modx=same_schema)

    assert done.returncode == 0, done.stderr
    assert "adopted 7 entries (0 synced, 7 pending)" in done.stdout
    rows = mariadb_query(
        same_schema,
        "SELECT sync_status, synced_revision, sync_next_attempt_at IS NOT NULL "
        "FROM funnel_entries",
    )
    assert len(rows) == 7 and set(rows) == {("pending", 0, 1)}


@pytest.mark.mariadb_only
def test_legacy_table_in_the_modx_database_is_only_read(tmp_path):
    with mariadb_scratch("fnd_legacy_modx") as modx, mariadb_scratch("fnd_legacy_ours") as ours:
        _fill_modx_and_legacy(modx)
        modx_tables = _tables(modx)
        checksums = mariadb_query(modx, "CHECKSUM TABLE " + ", ".join(sorted(modx_tables)))

        looked_in_ours_only = _adopt(tmp_path, "--dry-run", "--source", "default",
                                     default=ours, modx=modx)
        # No option: the table is found where the earlier tool created it.
        done = _adopt(tmp_path, default=ours, modx=modx)
        again = _adopt(tmp_path, "--source", "modx", default=ours, modx=modx)

        assert looked_in_ours_only.returncode == 0, looked_in_ours_only.stderr
        assert "run again without --source (or with --source modx)" in looked_in_ours_only.stdout
        assert done.returncode == 0, done.stderr
        assert "from modx.funnel_entries" in done.stdout
        assert "found in the MODX database" in done.stdout
        assert "adopted 7 entries" in done.stdout and "renamed" not in done.stdout
        assert again.returncode == 0, again.stderr
        assert "adopted 0 entries (0 synced, 0 pending), 7 already present" in again.stdout
        assert _tables(modx) == modx_tables
        assert mariadb_query(modx, "CHECKSUM TABLE " + ", ".join(sorted(modx_tables))) == checksums
        assert "funnel_entries_legacy" not in _tables(ours)
        assert {pk: v[:5] for pk, v in _entries(ours).items()} == EXPECTED_ENTRIES


@pytest.mark.mariadb_only
def test_a_half_migrated_database_is_refused_untouched(same_schema, tmp_path):
    # What a plain `migrate` leaves when it stops at the earlier tool's funnel_entries.
    connection = mariadb_connect(same_schema)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE funnels_funnel (id BIGINT PRIMARY KEY)")
    connection.close()

    refused = _adopt(tmp_path, default=same_schema, modx=same_schema)

    assert refused.returncode == 1
    assert "funnels_funnel" in refused.stderr and "drop them" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "funnel_entries_legacy" not in _tables(same_schema)


@pytest.mark.mariadb_only
def test_without_a_legacy_table_it_is_a_plain_migrate(tmp_path):
    with mariadb_scratch("fnd_legacy_none") as name:
        done = _adopt(tmp_path, default=name, modx=name)

        assert done.returncode == 0, done.stderr
        assert "no earlier funnel_entries table found; migrations up to date" in done.stdout
        assert {"funnel_entries", "django_migrations"} <= _tables(name)
