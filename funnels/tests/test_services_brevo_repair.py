"""Using what the audit read: a list emptied by hand is found and repaired, and a person's
opt-out always wins (never re-added by the run, by the repair, or by a re-entry)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from funnels.models import BrevoState, FunnelEntry, SyncRun, SyncRunItem, SyncStatus
from funnels.selectors.brevo_state import brevo_drift_by_funnel, brevo_opted_out
from funnels.services.brevo_audit import brevo_audit_run
from funnels.services.brevo_repair import brevo_missing_restore
from funnels.services.outbox import outbox_push
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory
from funnels.tests.sync_support import (
    LANGUAGE_LIST,
    OTHER_LIST,
    funnels_configure,
)
from funnels.tests.test_services_brevo_audit import T1, Clock, audit, states, synced

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _lists(db):
    funnels_configure()


@pytest.fixture
def clock(fake_brevo):
    clock = Clock(T1 - dt.timedelta(hours=1))
    fake_brevo.set_clock(clock)
    return clock


@pytest.fixture
def operator(db):
    user = get_user_model().objects.create_user("repairer", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="restore_missing"))
    return user


def push(client, now):
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)
    return run, outbox_push(run=run, client=client, now=now)


def writes_since(fake, seq: int) -> list:
    return [e for e in fake.requests_log if e.seq > seq
            and e.operation in ("createContact", "importContacts", "addContactToList")]


def test_a_list_emptied_by_hand_is_found_and_repaired(
    client_factory, fake_brevo, clock, operator
):
    client = client_factory()
    synced(client, "anna", "boris", "clara")
    fake_brevo.unsubscribe_from_list(email="boris@example.com", list_id=LANGUAGE_LIST)
    audit(client, T1)
    clock.moment = T1 + dt.timedelta(hours=3)
    assert fake_brevo.empty_list(list_id=LANGUAGE_LIST) == 3
    before = fake_brevo.request_count

    found = audit(client, T1 + dt.timedelta(days=1))

    # Nobody left in the list, so the changes show nothing of it: its size, from the one
    # read of all lists' sizes, disagrees with ours, and only that list is read whole.
    assert [e.operation for e in fake_brevo.requests_log if e.seq > before] == [
        "getLists", "getContacts", "getContactsFromList",
    ]
    assert found.lists["language"]["brevo_count"] == 0
    assert found.lists["language"]["kind"] == "full"
    assert found.lists["non_language"]["kind"] == "incremental"
    assert states() == {"anna@example.com": "missing", "boris@example.com": "unsubscribed_from_list",
                        "clara@example.com": "missing"}
    assert brevo_drift_by_funnel() == {"language": 2}

    result = brevo_missing_restore(
        entry_ids=FunnelEntry.objects.values_list("id", flat=True),
        now=T1 + dt.timedelta(days=1, hours=1), user=operator,
    )

    assert (result.requeued, result.opted_out) == (2, 0)
    assert brevo_drift_by_funnel() == {}
    assert LogEntry.objects.filter(user=operator).count() == 2
    sent_before = fake_brevo.request_count
    push(client, T1 + dt.timedelta(days=1, hours=2))
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com", "clara@example.com"}
    assert "boris" not in str([e.body for e in writes_since(fake_brevo, sent_before)])
    assert fake_brevo.contact("boris@example.com")["listUnsubscribed"] == [LANGUAGE_LIST]
    clock.moment = T1 + dt.timedelta(days=1, hours=3)
    audit(client, T1 + dt.timedelta(days=2))
    assert states()["anna@example.com"] == BrevoState.IN_LIST


def test_an_opted_out_person_is_never_re_added_by_the_run_or_a_re_entry(
    client_factory, fake_brevo, clock
):
    client = client_factory()
    boris, = synced(client, "boris")
    clara, = synced(client, "clara")
    fake_brevo.unsubscribe_from_list(email="boris@example.com", list_id=LANGUAGE_LIST)
    fake_brevo.blacklist(email="clara@example.com")
    audit(client, T1)
    # A purchase makes boris's entry due again; a new test brings him back into the same
    # funnel; clara, blacklisted, enters the other funnel.
    FunnelEntry.objects.filter(id=boris.id).update(
        certificate_purchased=True, certificate_purchased_at=T1,
        sync_status=SyncStatus.PENDING, sync_revision=boris.sync_revision + 1,
    )
    again = FunnelEntryFactory(email="boris@example.com", funnel_type="language", test_id=7)
    other = FunnelEntryFactory(email="clara@example.com", funnel_type="non_language")
    newcomer = FunnelEntryFactory(email="dora@example.com", funnel_type="language")
    before = fake_brevo.request_count

    run, result = push(client, T1 + dt.timedelta(hours=1))

    assert [e.body.get("email") for e in writes_since(fake_brevo, before)] == [
        "dora@example.com"
    ]
    assert fake_brevo.contact("boris@example.com")["listUnsubscribed"] == [LANGUAGE_LIST]
    assert fake_brevo.list_members(OTHER_LIST) == set()
    for entry in (boris, again, other):
        entry.refresh_from_db()
        assert entry.sync_status == SyncStatus.OPTED_OUT
    newcomer.refresh_from_db()
    assert newcomer.sync_status == SyncStatus.SYNCED
    assert set(
        SyncRunItem.objects.filter(run=run, reason="brevo_opted_out").values_list("entry_id",
                                                                                  flat=True)
    ) == {boris.id, again.id, other.id}
    # And the next push does not look at them again.
    before = fake_brevo.request_count
    push(client, T1 + dt.timedelta(hours=2))
    assert fake_brevo.request_count == before


def test_the_repair_leaves_opted_out_people_alone(client_factory, fake_brevo, clock, operator):
    client = client_factory()
    synced(client, "clara")
    synced(client, "clara", funnel="non_language")
    fake_brevo.blacklist(email="clara@example.com")
    fake_brevo.remove_from_list(email="clara@example.com", list_id=OTHER_LIST)
    audit(client, T1)
    assert states("non_language") == {"clara@example.com": "missing"}
    assert brevo_opted_out(emails=["clara@example.com"]).covers(
        email="clara@example.com", funnel_type="non_language"
    )

    result = brevo_missing_restore(
        entry_ids=FunnelEntry.objects.values_list("id", flat=True), now=T1, user=operator
    )

    assert (result.requeued, result.opted_out) == (0, 1)
    assert not LogEntry.objects.exists()
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING).count() == 0


@pytest.mark.django_db(databases=["default", "modx"])
def test_a_run_never_re_adds_someone_who_unsubscribed_even_on_re_entry(
    client_factory, fake_brevo, live_settings, now
):
    from funnels.models import Funnel
    from funnels.tests.sync_support import (
        LANG_TEST, LANG_TEST_2, modx_catalogue, modx_result, run_live,
    )

    modx_catalogue()
    Funnel.objects.filter(slug="language").update(reentry=Funnel.Reentry.PER_TEST)
    modx_result("una@example.com", LANG_TEST, completed_at=now - dt.timedelta(hours=3))
    run_live(client_factory, now=now - dt.timedelta(hours=2))
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"una@example.com"}
    fake_brevo.unsubscribe_from_list(email="una@example.com", list_id=LANGUAGE_LIST)
    brevo_audit_run(now=now - dt.timedelta(hours=1), client=client_factory())
    before = fake_brevo.request_count

    modx_result("una@example.com", LANG_TEST_2, completed_at=now - dt.timedelta(minutes=30))
    run = run_live(client_factory, now=now)

    assert run.status == "success"
    again = FunnelEntry.objects.get(email="una@example.com", test_id=LANG_TEST_2)
    assert again.sync_status == SyncStatus.OPTED_OUT
    assert "una" not in str([e.body for e in writes_since(fake_brevo, before)])
    assert fake_brevo.contact("una@example.com")["listUnsubscribed"] == [LANGUAGE_LIST]
    assert SyncRunItem.objects.filter(run=run, reason="brevo_opted_out").count() == 1


def test_a_control_entry_is_never_marked_missing_nor_put_back(
    client_factory, fake_brevo, clock, operator
):
    """Anna was sent to Brevo from one test, and is in the control group for a later one:
    that entry is absent from Brevo by design. Her list emptied by hand, the audit marks
    only the entry Brevo had, and the repair puts back only that one."""
    from funnels.models import ExperimentGroup

    client = client_factory()
    anna, = synced(client, "anna")
    held_out = FunnelEntryFactory(
        email="anna@example.com", funnel_type="language", test_id=(anna.test_id or 0) + 1,
        sync_status=SyncStatus.CONTROL, experiment_group=ExperimentGroup.CONTROL,
        control_period=1,
    )
    audit(client, T1)
    clock.moment = T1 + dt.timedelta(hours=3)
    assert fake_brevo.empty_list(list_id=LANGUAGE_LIST) == 1

    audit(client, T1 + dt.timedelta(days=1))

    anna.refresh_from_db()
    held_out.refresh_from_db()
    assert (anna.brevo_state, held_out.brevo_state) == (BrevoState.MISSING, "")
    # Even marked missing (by hand, or by an audit before this rule), it stays held out.
    FunnelEntry.objects.filter(id=held_out.id).update(brevo_state=BrevoState.MISSING)
    result = brevo_missing_restore(entry_ids=[anna.id, held_out.id],
                                   now=T1 + dt.timedelta(days=1, hours=1), user=operator)
    assert result.requeued == 1
    held_out.refresh_from_db()
    assert held_out.sync_status == SyncStatus.CONTROL
    push(client, T1 + dt.timedelta(days=1, hours=2))
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com"}
    held_out.refresh_from_db()
    assert (held_out.sync_status, held_out.synced_revision) == (SyncStatus.CONTROL, 0)
