"""The Brevo audit against the fake Brevo on loopback: every state found by a full and by
an incremental audit, strangers, the size check, what an idle audit costs, faults, the
lock."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.db import connections

from funnels.locks import RunLock
from funnels.models import BrevoAudit, BrevoState, FunnelEntry, SyncRun
from funnels.services.brevo_audit import AuditBusy, brevo_audit_run
from funnels.services.outbox import outbox_push
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory
from fake_brevo.server import FakeBrevo
from funnels.brevo.client import BrevoClient
from funnels.tests.sync_support import (
    API_KEY,
    LANGUAGE_LIST,
    OTHER_LIST,
    funnels_configure,
)

pytestmark = pytest.mark.django_db

T1 = dt.datetime(2026, 11, 20, 3, 7, tzinfo=dt.UTC)
PEOPLE = ("anna", "boris", "clara", "denis", "elena")


class Clock:
    def __init__(self, moment: dt.datetime) -> None:
        self.moment = moment

    def __call__(self) -> dt.datetime:
        return self.moment


@pytest.fixture
def clock(fake_brevo):
    clock = Clock(T1 - dt.timedelta(hours=1))
    fake_brevo.set_clock(clock)
    return clock


@pytest.fixture(autouse=True)
def _lists(db):
    funnels_configure()


def _email(name: str) -> str:
    return f"{name}@example.com"


def synced(client, *names: str, funnel: str = "language", now=T1) -> list[FunnelEntry]:
    """Entries pushed to the fake by the real outbox, as a run would."""
    entries = [FunnelEntryFactory(email=_email(n), funnel_type=funnel) for n in names]
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)
    result = outbox_push(run=run, client=client, now=now)
    assert result.entries_synced >= len(entries)
    return entries


def audit(client, now, **kwargs) -> BrevoAudit:
    return brevo_audit_run(now=now, client=client, clock=lambda: now, **kwargs)


def states(funnel: str = "language") -> dict[str, str]:
    return dict(
        FunnelEntry.objects.filter(funnel_type=funnel).values_list("email", "brevo_state")
    )


def _changes(fake) -> None:
    fake.unsubscribe_from_list(email=_email("boris"), list_id=LANGUAGE_LIST)
    fake.blacklist(email=_email("clara"))
    fake.delete_contact(email=_email("denis"))
    fake.remove_from_list(email=_email("elena"), list_id=LANGUAGE_LIST)


EXPECTED = {
    _email("anna"): BrevoState.IN_LIST,
    _email("boris"): BrevoState.UNSUBSCRIBED,
    _email("clara"): BrevoState.BLACKLISTED,
    _email("denis"): BrevoState.MISSING,
    _email("elena"): BrevoState.MISSING,
}


def test_a_full_audit_finds_every_state_and_the_strangers(client_factory, fake_brevo, clock):
    client = client_factory()
    synced(client, *PEOPLE)
    fake_brevo.seed_contact(email="stranger@example.com", list_ids=[LANGUAGE_LIST])
    clock.moment = T1
    _changes(fake_brevo)

    result = audit(client, T1 + dt.timedelta(minutes=5))

    assert result.status == BrevoAudit.Status.SUCCESS
    assert result.kind == BrevoAudit.Kind.FULL
    assert states() == EXPECTED
    assert set(FunnelEntry.objects.values_list("brevo_seen_at", flat=True)) == {
        T1 + dt.timedelta(minutes=5)
    }
    assert (result.in_list, result.unsubscribed, result.blacklisted, result.missing) == (
        1, 1, 1, 2,
    )
    assert result.strangers == 1
    assert result.strangers_sample == [{"funnel": "language", "email": "stranger@example.com"}]
    assert result.lists["language"]["kind"] == "full"
    assert result.lists["non_language"]["pages"] == 1


def test_an_incremental_audit_finds_every_state(client_factory, fake_brevo, clock):
    client = client_factory()
    synced(client, *PEOPLE)
    first = audit(client, T1)
    assert first.kind == BrevoAudit.Kind.FULL and set(states().values()) == {BrevoState.IN_LIST}

    clock.moment = T1 + dt.timedelta(hours=5)
    fake_brevo.unsubscribe_from_list(email=_email("boris"), list_id=LANGUAGE_LIST)
    fake_brevo.blacklist(email=_email("clara"))
    second = audit(client, T1 + dt.timedelta(days=1))

    assert second.status == BrevoAudit.Status.SUCCESS
    assert second.kind == BrevoAudit.Kind.INCREMENTAL
    assert second.lists["language"]["kind"] == "incremental"
    assert second.modified_since == T1 - dt.timedelta(minutes=10)
    assert second.states_changed == 2 and second.contacts_read == 2
    assert states()[_email("boris")] == BrevoState.UNSUBSCRIBED
    assert states()[_email("clara")] == BrevoState.BLACKLISTED
    # One read of the changes for both lists, each list named (the description's form
    # style for an array), since the last completed audit.
    reads = [e for e in fake_brevo.requests_log if e.operation == "getContacts"]
    assert len(reads) == 1
    assert "modifiedSince=2026-11-20T02%3A57%3A00.000Z" in reads[0].query
    assert f"listIds={LANGUAGE_LIST}&listIds={OTHER_LIST}" in reads[0].query

    # A deletion and a removal change no contact left in the list: the size shows them,
    # and the list is read whole within the same (incremental) audit.
    clock.moment = T1 + dt.timedelta(days=1, hours=5)
    fake_brevo.delete_contact(email=_email("denis"))
    fake_brevo.remove_from_list(email=_email("elena"), list_id=LANGUAGE_LIST)
    third = audit(client, T1 + dt.timedelta(days=2))

    assert third.kind == BrevoAudit.Kind.INCREMENTAL
    assert third.lists["language"]["kind"] == "full"
    assert third.lists["non_language"]["kind"] == "incremental"
    assert states() == EXPECTED


def test_nothing_changed_costs_one_request_per_list(client_factory, fake_brevo, clock):
    client = client_factory()
    synced(client, *PEOPLE)
    synced(client, "oleg", funnel="non_language")
    audit(client, T1)
    before = fake_brevo.request_count

    again = audit(client, T1 + dt.timedelta(days=1))

    assert again.kind == BrevoAudit.Kind.INCREMENTAL and again.states_changed == 0
    # Two lists, two requests: all the lists' sizes, then all their changes (none).
    assert again.brevo_requests == fake_brevo.request_count - before == 2
    sent = [(e.operation, e.path, e.status) for e in fake_brevo.requests_log[-2:]]
    assert sent == [("getLists", "/v3/contacts/lists", 200), ("getContacts", "/v3/contacts", 200)]
    assert {r["kind"] for r in again.lists.values()} == {"incremental"}
    assert again.lists["language"]["brevo_count"] == again.lists["language"]["our_count"] == 5


@pytest.mark.parametrize("exclude_blacklisted", [False, True])
def test_a_blacklisted_person_keeps_the_idle_audit_incremental(
    client_factory, fake_brevo, clock, exclude_blacklisted
):
    """Whether Brevo counts the blacklisted in totalSubscribers or leaves them out (as its
    examples suggest), the sizes agree and the lists are not read whole."""
    fake_brevo.set_list_sizes(exclude_blacklisted=exclude_blacklisted)
    client = client_factory()
    synced(client, *PEOPLE)
    fake_brevo.blacklist(email=_email("clara"))
    audit(client, T1)
    assert states()[_email("clara")] == BrevoState.BLACKLISTED
    before = fake_brevo.request_count

    days = [audit(client, T1 + dt.timedelta(days=d)) for d in (1, 2)]

    assert fake_brevo.request_count - before == 4
    assert [a.lists["language"]["kind"] for a in days] == ["incremental"] * 2
    expected = (4, 1) if exclude_blacklisted else (5, 1)
    assert (days[-1].lists["language"]["brevo_count"],
            days[-1].lists["language"]["brevo_blacklisted"]) == expected
    assert days[-1].lists["language"]["our_count"] == 5


def test_a_removal_is_still_seen_when_the_blacklisted_are_left_out(
    client_factory, fake_brevo, clock
):
    fake_brevo.set_list_sizes(exclude_blacklisted=True)
    client = client_factory()
    synced(client, *PEOPLE)
    fake_brevo.blacklist(email=_email("clara"))
    audit(client, T1)
    fake_brevo.remove_from_list(email=_email("anna"), list_id=LANGUAGE_LIST)
    fake_brevo.delete_contact(email=_email("denis"))

    again = audit(client, T1 + dt.timedelta(days=1))

    assert again.lists["language"]["kind"] == "full"
    assert states()[_email("anna")] == BrevoState.MISSING
    assert states()[_email("denis")] == BrevoState.MISSING


def test_known_strangers_keep_the_idle_audit_at_one_request_per_list(
    client_factory, fake_brevo, clock
):
    """Contacts we did not add are counted by a whole read; the idle audits after it must
    still expect them, not only the strangers their own (empty) read of the changes met."""
    client = client_factory()
    synced(client, *PEOPLE)
    fake_brevo.seed_contact(email="stranger@example.com", list_ids=[LANGUAGE_LIST])
    audit(client, T1)
    before = fake_brevo.request_count

    days = [audit(client, T1 + dt.timedelta(days=d)) for d in (1, 2, 3)]

    assert fake_brevo.request_count - before == 6
    assert [a.lists["language"]["kind"] for a in days] == ["incremental"] * 3
    assert [a.lists["language"]["known_strangers"] for a in days] == [1, 1, 1]
    assert [a.lists["language"]["our_count"] for a in days] == [6, 6, 6]


@pytest.mark.parametrize(("other_lists", "sent"), [
    # The list is on the second and last page: one more page of lists.
    (60, ["getLists", "getLists", "getContacts"]),
    # Two pages to go for one list: asking for that list is cheaper.
    (120, ["getLists", "getList", "getContacts"]),
])
def test_a_list_past_the_first_page_of_lists(client_factory, fake_brevo, clock, other_lists,
                                             sent):
    """An account with more than 50 lists, the language funnel's list created after 50
    others: its size is not on the first page of GET /contacts/lists."""
    for list_id in range(100, 100 + other_lists):
        fake_brevo.add_list(list_id=list_id)
    funnels_configure(language_list=150)
    client = client_factory()
    synced(client, *PEOPLE)
    audit(client, T1)
    before = fake_brevo.request_count

    again = audit(client, T1 + dt.timedelta(days=1))

    assert [e.operation for e in fake_brevo.requests_log if e.seq > before] == sent
    assert again.status == BrevoAudit.Status.SUCCESS
    assert again.lists["language"]["kind"] == "incremental"
    assert again.lists["language"]["brevo_count"] == 5


def test_a_list_brevo_does_not_have_is_left_out_of_the_changes(clock):
    """An operator gave the language funnel a list id the account does not have: that list
    fails alone, and the changes are asked of the lists that exist only."""
    with FakeBrevo(api_key=API_KEY, requests_per_second=None, process_requests_per_hour=None,
                   lists=[LANGUAGE_LIST, OTHER_LIST]) as fake:
        client = BrevoClient(base_url=fake.base_url, api_key=API_KEY, max_retries=0,
                             requests_per_second=0)
        synced(client, "oleg", funnel="non_language")
        audit(client, T1)
        funnels_configure(language_list=99)
        before = fake.request_count

        broken = audit(client, T1 + dt.timedelta(days=1))

        sent = [(e.operation, e.status, e.query) for e in fake.requests_log if e.seq > before]
    assert [(op, status) for op, status, _query in sent] == [
        ("getLists", 200), ("getList", 404), ("getContacts", 200),
    ]
    assert f"listIds={OTHER_LIST}&limit" in sent[2][2]
    assert broken.status == BrevoAudit.Status.PARTIAL
    assert "language (list 99)" in broken.error and "does not exist" in broken.error
    assert broken.lists["non_language"]["error"] == ""
    assert broken.lists["non_language"]["kind"] == "incremental"


def test_a_weekly_full_read_and_a_forced_one(client_factory, clock):
    client = client_factory()
    synced(client, *PEOPLE)
    audit(client, T1)
    assert audit(client, T1 + dt.timedelta(days=6)).kind == BrevoAudit.Kind.INCREMENTAL
    assert audit(client, T1 + dt.timedelta(days=6, hours=1), full=True).kind == "full"
    assert audit(client, T1 + dt.timedelta(days=12)).kind == BrevoAudit.Kind.INCREMENTAL
    assert audit(client, T1 + dt.timedelta(days=13, hours=2)).kind == BrevoAudit.Kind.FULL


def test_pages_of_500(client_factory, fake_brevo, clock):
    client = client_factory()
    for i in range(1203):
        fake_brevo.seed_contact(email=f"p{i}@example.com", list_ids=[LANGUAGE_LIST])
    FunnelEntryFactory(email="p7@example.com", synced_revision=1, sync_status="synced")
    FunnelEntryFactory(email="gone@example.com", synced_revision=1, sync_status="synced")

    result = audit(client, T1)

    assert result.lists["language"]["pages"] == 3
    assert result.contacts_read == 1203
    assert result.strangers == 1202 and len(result.strangers_sample) == 50
    assert states() == {"p7@example.com": "in_list", "gone@example.com": "missing"}


# What the last completed audit knew, when a read of the next one could not be made.
_AS_BEFORE = {email: BrevoState.IN_LIST for email in EXPECTED}
# The whole read after the size disagreed failed: the changes read before it are true
# and kept; nobody is concluded missing.
_CHANGES_ONLY = {**_AS_BEFORE, _email("boris"): BrevoState.UNSUBSCRIBED,
                 _email("clara"): BrevoState.BLACKLISTED}


@pytest.mark.parametrize("kind", ["429", "500"])
@pytest.mark.parametrize(("operation", "left"), [
    ("getLists", _AS_BEFORE),
    ("getContacts", _AS_BEFORE),
    ("getContactsFromList", _CHANGES_ONLY),
])
def test_brevo_faults_end_the_audit_partial_and_the_next_one_completes(
    client_factory, fake_brevo, clock, kind, operation, left
):
    client = client_factory(max_retries=2)
    synced(client, *PEOPLE)
    audit(client, T1)
    clock.moment = T1 + dt.timedelta(hours=2)
    _changes(fake_brevo)
    # Brevo keeps failing one of the audit's reads beyond the client's retries.
    fake_brevo.faults.add(kind, count=None, operation=operation, reset=1)

    broken = audit(client, T1 + dt.timedelta(days=1))

    assert broken.status == BrevoAudit.Status.PARTIAL
    assert "Brevo stopped the audit" in broken.error
    failed = [e for e in fake_brevo.requests_log if e.fault == kind]
    assert len(failed) == 3 and {e.operation for e in failed} == {operation}
    # Nothing concluded from a read that did not happen.
    assert states() == left
    fake_brevo.faults.clear()

    fixed = audit(client, T1 + dt.timedelta(days=1, hours=1))

    assert fixed.status == BrevoAudit.Status.SUCCESS
    # It reads from the last audit that completed, not from the partial one.
    assert fixed.modified_since == T1 - dt.timedelta(minutes=10)
    assert states() == EXPECTED


class _Holder:
    """The run lock held on another connection, as a run in another process holds it."""

    def __enter__(self):
        self.connection = connections.create_connection("default")
        self.lock = RunLock(connection=self.connection)
        self.lock.acquire()
        return self

    def __exit__(self, *exc_info):
        self.lock.release()
        self.connection.close()


def test_the_audit_never_runs_beside_a_run(client_factory, clock):
    with _Holder(), pytest.raises(AuditBusy):
        audit(client_factory(), T1)
    assert not BrevoAudit.objects.exists()


def test_a_dead_audit_is_closed_as_crashed(client_factory, clock):
    dead = BrevoAudit.objects.create(started_at=T1, kind="full")
    audit(client_factory(), T1 + dt.timedelta(days=1))
    dead.refresh_from_db()
    assert dead.status == BrevoAudit.Status.CRASHED


def test_the_command_exit_codes(live_settings, fake_brevo, clock):
    live_settings.LANGUAGE_CODE = "en"
    out = io.StringIO()
    call_command("audit_brevo", "--as-of", "2026-11-20T04:00", stdout=out)
    assert "audit #" in out.getvalue() and "success" in out.getvalue()

    fake_brevo.faults.add("503", count=None)
    live_settings.BREVO_MAX_RETRIES = 0
    with pytest.raises(SystemExit) as partial:
        call_command("audit_brevo", "--full", stdout=io.StringIO())
    assert partial.value.code == 4

    with _Holder(), pytest.raises(SystemExit) as busy:
        call_command("audit_brevo", stdout=io.StringIO(), stderr=io.StringIO())
    assert busy.value.code == 3
