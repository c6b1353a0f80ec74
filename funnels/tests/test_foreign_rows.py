"""Rows another writer put in funnel_entries (the earlier tool's forgotten cron): reported,
left alone, and never able to crash a run.

On MariaDB the rows are inserted as the earlier tool does it, on a session without strict
SQL mode: only its own columns, so ours take their implicit defaults (an empty
sync_status, zero dates) and `entered_at` is the zero date. SQLite enforces NOT NULL and
has no zero date, so there the same rows are written with every column, an empty sync
state and a real (1970) date.
"""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from funnels.models import FunnelEntry, SyncRun
from funnels.selectors.funnels import funnel_entries_unusable_count, funnel_entry_usable_q
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
    FunnelEntryFactory,
)
from funnels.tests.sync_support import (
    LANG_TEST,
    LANGUAGE_LIST,
    modx_result,
    run_live,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

ENTRIES_URL = reverse("admin:funnels_funnelentry_changelist")


def foreign_row(email: str, *, funnel: str = "language", zero_date: bool = True,
                entered: str = "2026-11-25 10:00:00", purchased: bool = False) -> None:
    """One row as the earlier tool writes it into whatever table is called funnel_entries."""
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute("SELECT @@SESSION.sql_mode")
            mode = cursor.fetchone()[0]
            cursor.execute("SET SESSION sql_mode = ''")
            try:
                cursor.execute(
                    "INSERT INTO funnel_entries (email, funnel_type, user_id, test_id, "
                    "entered_at, certificate_purchased) VALUES (%s, %s, NULL, NULL, %s, %s)",
                    [email, funnel, "0000-00-00 00:00:00" if zero_date else entered,
                     int(purchased)],
                )
            finally:
                cursor.execute("SET SESSION sql_mode = %s", [mode])
        else:
            cursor.execute(
                "INSERT INTO funnel_entries (email, funnel_type, user_id, test_id, entered_at, "
                "certificate_purchased, sync_status, sync_revision, synced_revision, "
                "sync_attempts, sync_last_error, created_at, updated_at) "
                "VALUES (%s, %s, NULL, NULL, %s, %s, '', 0, 0, 0, '', %s, %s)",
                [email, funnel, "1970-01-01 00:00:00" if zero_date else entered,
                 int(purchased), "1970-01-01 00:00:00", "1970-01-01 00:00:00"],
            )


def _plant() -> None:
    foreign_row("anna@example.com", purchased=True)  # zero date, empty sync state
    foreign_row("Dora@Example.com", zero_date=False)  # capitals
    foreign_row("boris@example.com ", zero_date=False)  # unnormalised email
    foreign_row("carl@example.com", zero_date=False)  # empty sync state only


def _raw_rows() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, email, sync_status, certificate_purchased FROM funnel_entries "
            "WHERE sync_status NOT IN ('pending', 'synced', 'failed') OR email <> LOWER(TRIM(email)) "
            "OR BINARY email <> BINARY LOWER(TRIM(email))"
            if connection.vendor == "mysql" else
            "SELECT id, email, sync_status, certificate_purchased FROM funnel_entries "
            "WHERE sync_status NOT IN ('pending', 'synced', 'failed') OR email <> LOWER(TRIM(email))"
        )
        return sorted(cursor.fetchall())


def test_the_definition_accepts_every_row_we_write_and_none_of_theirs():
    ours = [FunnelEntryFactory(email=f"p{i}@example.com") for i in range(3)]
    _plant()
    usable = set(FunnelEntry.objects.filter(funnel_entry_usable_q()).values_list("id", flat=True))
    assert usable == {e.id for e in ours}
    assert funnel_entries_unusable_count() == 4


def test_a_run_goes_on_past_their_rows_and_leaves_them_alone(
    configured, live_settings, client_factory, fake_brevo, now
):
    live_settings.LANGUAGE_CODE = "en"
    entered = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)
    anna = FunnelEntryFactory(email="anna@example.com", test_id=LANG_TEST, entered_at=entered)
    _plant()
    before = _raw_rows()
    assert len(before) == 4
    modx_result("carl@example.com", LANG_TEST)  # a new result of a person with a row of theirs
    CertPaymentFactory(
        result=CertResultFactory(user=CertUserFactory(email="ANNA@example.com"),
                                 test=CertTestFactory(type=1)),
        paid_at=entered + dt.timedelta(days=2),
    )

    run = run_live(client_factory, now=now)

    assert run.status == SyncRun.Status.SUCCESS, run.error
    anna.refresh_from_db()
    assert anna.certificate_purchased and anna.synced_revision == anna.sync_revision
    carl = FunnelEntry.objects.filter(funnel_entry_usable_q()).get(email="carl@example.com")
    assert carl.sync_status == "synced"
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com", "carl@example.com"}
    assert _raw_rows() == before  # theirs: not updated, not sent, not deleted

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("funnels_health", "--as-of", now.isoformat(), stdout=out)
    assert exit_.value.code == 1
    assert out.getvalue().startswith("WARNING: 4 rows in funnel_entries were not written")


def test_the_admin_lists_their_rows(admin_client, settings):
    settings.LANGUAGE_CODE = "en"
    FunnelEntryFactory(email="ours@example.com")
    _plant()
    everything = admin_client.get(ENTRIES_URL)
    theirs = admin_client.get(ENTRIES_URL + "?usable=no")
    assert everything.status_code == 200 and theirs.status_code == 200
    listed = theirs.content.decode()
    assert "carl@example.com" in listed and "ours@example.com" not in listed
    assert "Not usable (written by another tool)" in everything.content.decode()
