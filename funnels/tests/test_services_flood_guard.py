"""The flood guard: a run that would send more new contacts than the limit records their
entries and holds them back from Brevo until somebody releases them."""

import datetime as dt

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User

from funnels.models import FunnelEntry, SyncRun, SyncRunItem, SyncStatus
from funnels.selectors.held import held_summary_get
from funnels.services.flood_guard import FloodGuard, held_entries_release
from funnels.tests.sync_support import (
    LANG_TEST,
    LANGUAGE_LIST,
    OTHER_LIST,
    OTHER_TEST,
    modx_result,
    run_live,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def limit_3(live_settings):
    live_settings.FUNNELS_MAX_NEW_CONTACTS_PER_RUN = 3
    return live_settings


def people(n, *, test=OTHER_TEST, prefix="p"):
    return [modx_result(f"{prefix}{i}@example.com", test) for i in range(n)]


def test_a_run_within_the_limit_sends_as_usual(configured, limit_3, client_factory, fake_brevo,
                                                now):
    people(3)
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.SUCCESS and run.contacts_held == 0
    assert len(fake_brevo.list_members(OTHER_LIST)) == 3


def test_past_the_limit_every_new_contact_of_the_run_is_recorded_and_held(
    configured, limit_3, client_factory, fake_brevo, now
):
    # Chunks of 2: the first two chunks commit pending entries before the third crosses
    # the limit; they are held in its transaction.
    people(5)
    modx_result("p0@example.com", LANG_TEST)  # one person in both funnels: one contact
    run = run_live(client_factory, now=now, chunk_size=2)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.HELD
    assert run.contacts_held == 5
    assert run.entries_added == 6
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {SyncStatus.HELD}
    assert fake_brevo.request_count == 0 and fake_brevo.contacts == {}
    summary = held_summary_get()
    assert (summary.entries, summary.contacts) == (6, 5)
    assert summary.by_funnel == {"language": 1, "non_language": 5}
    assert [r.pk for r in summary.runs] == [run.pk]

    # The next run adds nothing new and sends nothing held; still held.
    again = run_live(client_factory, now=now + 15 * MINUTE)
    assert again.status == SyncRun.Status.SUCCESS and fake_brevo.request_count == 0


def test_a_purchase_on_a_held_entry_keeps_it_held(configured, limit_3, client_factory, now):
    from funnels.tests.factories import CertPaymentFactory

    people(4)
    run_live(client_factory, now=now)
    CertPaymentFactory(result__user__email="p1@example.com", result__test__type=2,
                       paid_at=now + MINUTE)
    run = run_live(client_factory, now=now + 15 * MINUTE)
    assert run.purchases_found == 1
    entry = FunnelEntry.objects.get(email="p1@example.com")
    assert entry.certificate_purchased and entry.sync_status == SyncStatus.HELD


def test_release_by_the_command_flag_sends_them_with_the_next_push(
    configured, limit_3, client_factory, fake_brevo, now
):
    people(4)
    run_live(client_factory, now=now)
    people(2, prefix="q")  # the next run's own new contacts, within the limit
    run = run_live(client_factory, now=now + 15 * MINUTE, release_held=True)
    assert run.status == SyncRun.Status.SUCCESS, run.error
    assert len(fake_brevo.list_members(OTHER_LIST)) == 6
    assert not FunnelEntry.objects.exclude(sync_status=SyncStatus.SYNCED).exists()


def test_release_by_a_person_is_audited(configured, limit_3, client_factory, now):
    people(4)
    run_live(client_factory, now=now)
    user = User.objects.create_user("ops", is_staff=True)
    assert held_entries_release(now=now, user=user, source="test") == 4
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING).count() == 4
    log = LogEntry.objects.get()
    assert log.user == user and "released 4 entries" in log.change_message
    assert held_entries_release(now=now, user=user, source="test") == 0
    assert LogEntry.objects.count() == 1  # nothing released, nothing to audit


def test_a_dry_run_says_what_would_be_held_and_holds_nothing(
    configured, limit_3, client_factory, now
):
    people(4)
    run = run_live(client_factory, now=now, dry_run=True)
    assert run.status == SyncRun.Status.SUCCESS
    assert run.contacts_held == 4
    assert FunnelEntry.objects.count() == 0
    assert SyncRunItem.objects.filter(run=run, action="would_add").count() == 4


def test_zero_turns_the_guard_off(configured, live_settings, client_factory, fake_brevo, now):
    live_settings.FUNNELS_MAX_NEW_CONTACTS_PER_RUN = 0
    people(30)
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.SUCCESS and run.contacts_held == 0
    assert len(fake_brevo.list_members(OTHER_LIST)) == 30


def test_the_guard_counts_people_not_entries():
    guard = FloodGuard(limit=2)
    assert guard.admit(["a@x.com", "a@x.com", "b@x.com"]) is False
    assert guard.admit(["a@x.com"]) is False
    assert guard.admit(["c@x.com"]) is True
    assert guard.admit(["d@x.com"]) is False  # trips once
    assert guard.held == 4
