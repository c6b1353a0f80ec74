"""Migrations create our tables only in our database, and match the models."""

from __future__ import annotations

import datetime as dt
import importlib
import io
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import connections

from funnels.models import FunnelEntry
from funnels.tests.factories import FunnelEntryFactory
from funnels.tests.manage_subprocess import (
    manage_run,
    mariadb_query,
    mariadb_scratch,
    mariadb_url,
)


def _tables_and_checksums(name: str) -> tuple[set[str], list[tuple]]:
    tables = {row[0] for row in mariadb_query(name, "SHOW TABLES")}
    checksums = mariadb_query(name, "CHECKSUM TABLE " + ", ".join(f"`{t}`" for t in sorted(tables)))
    return tables, checksums


@pytest.mark.mariadb_only
def test_migrate_creates_our_tables_and_nothing_in_the_modx_database(tmp_path):
    with mariadb_scratch("fnd_mig_ours") as ours, mariadb_scratch("fnd_mig_modx") as modx:
        env = {
            "DATABASE_URL": mariadb_url(ours),
            "MODX_DATABASE_URL": mariadb_url(modx),
            "LOG_FILE": str(tmp_path / "app.log"),
        }
        seeded = manage_run("demo_seed", "--size", "200", "--seed", "7", env=env)
        assert seeded.returncode == 0, seeded.stderr
        modx_before = _tables_and_checksums(modx)

        migrated = manage_run("migrate", "--no-input", env=env)

        assert migrated.returncode == 0, migrated.stderr
        assert _tables_and_checksums(modx) == modx_before
        assert "django_migrations" not in modx_before[0]
        assert {"simpletest_users", "modx_cert_payment", "testizer_demo_marker"} <= modx_before[0]
        ours_tables, _ = _tables_and_checksums(ours)
        assert {
            FunnelEntry._meta.db_table, "funnels_funnel", "funnels_syncrun",
            "funnels_syncrunitem", "funnels_syncstate", "funnels_runtimesettings",
            "funnels_paymentwatch", "django_migrations", "auth_user",
        } <= ours_tables
        assert not ours_tables & {"simpletest_users", "modx_cert_payment"}
        applied = {row[0] for row in mariadb_query(
            ours, "SELECT name FROM django_migrations WHERE app = 'funnels'"
        )}
        funnels = [row[0] for row in mariadb_query(
            ours, "SELECT slug FROM funnels_funnel ORDER BY slug"
        )]
        assert {"0001_initial", "0002_default_funnels"} <= applied
        assert funnels == ["language", "non_language"]


@pytest.mark.django_db(databases=["default", "modx"])
def test_no_model_change_lacks_a_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exc:  # --check exits 1 when a migration is missing
        pytest.fail(f"makemigrations --check found changes (exit {exc.code}):\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()


@pytest.mark.mariadb_only
def test_migrate_refuses_the_modx_database():
    with mariadb_scratch("mig_refuse_modx") as modx_db:
        result = manage_run(
            "migrate", "--database", "modx", "--no-input",
            env={
                "DATABASE_URL": mariadb_url(modx_db),
                "MODX_DATABASE_URL": mariadb_url(modx_db),
            },
        )
        tables = {row[0] for row in mariadb_query(modx_db, "SHOW TABLES")}
    assert result.returncode != 0
    assert "refusing to migrate the MODX database" in result.stderr
    assert tables == set()


@pytest.mark.django_db(databases=["default", "modx"])
def test_0008_fills_previous_entered_at_per_person_and_funnel():
    fill = importlib.import_module(
        "funnels.migrations.0008_entry_previous_entered_at"
    ).previous_fill
    t = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    rows = [
        FunnelEntryFactory(email="a@example.com", test_id=1, entered_at=t + dt.timedelta(days=2)),
        FunnelEntryFactory(email="a@example.com", test_id=2, entered_at=t),
        # Same time as the one before: the lower id comes first.
        FunnelEntryFactory(email="a@example.com", test_id=3, entered_at=t),
        FunnelEntryFactory(email="a@example.com", funnel_type="non_language", test_id=4,
                           entered_at=t + dt.timedelta(days=1)),
        FunnelEntryFactory(email="b@example.com", test_id=1, entered_at=t + dt.timedelta(days=1)),
    ]
    FunnelEntry.objects.update(previous_entered_at=None)

    fill(None, SimpleNamespace(connection=connections["default"]))

    stored = dict(FunnelEntry.objects.values_list("id", "previous_entered_at"))
    assert stored == {
        rows[0].id: t, rows[1].id: None, rows[2].id: t, rows[3].id: None, rows[4].id: None,
    }
