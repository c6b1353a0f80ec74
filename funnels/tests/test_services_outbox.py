import datetime as dt
import re

import pytest
from django.db import connections
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from funnels.brevo.client import BrevoClient
from funnels.brevo.errors import BrevoAuthError
from funnels.models import FunnelEntry, SyncRun, SyncRunItem
from funnels.selectors.outbox import PersonEntry, outbox_due_chunk
from funnels.services.outbox import contact_attributes, outbox_push, retry_delay
from funnels.services.sync_retry import entries_retry_sync
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory
from funnels.tests.sync_support import (
    API_KEY,
    LANGUAGE_LIST,
    OTHER_LIST,
    funnels_configure,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _lists(db):
    funnels_configure()


@pytest.fixture
def run(db):
    return SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)


def _push(run, client, now, **kwargs):
    return outbox_push(run=run, client=client, now=now, **kwargs)


def _ops(fake):
    return [entry.operation for entry in fake.requests_log]


def test_small_batches_are_upserted_with_the_funnel_attributes(
    run, client_factory, fake_brevo, now
):
    a = FunnelEntryFactory(email="anna@example.com", funnel_type="language")
    b = FunnelEntryFactory(email="boris@example.com", funnel_type="non_language")
    result = _push(run, client_factory(), now)
    assert result.contacts_sent == 2 and result.contacts_failed == 0
    assert _ops(fake_brevo) == ["createContact", "createContact"]
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com"}
    assert fake_brevo.list_members(OTHER_LIST) == {"boris@example.com"}
    assert fake_brevo.contact("anna@example.com")["attributes"] == {
        "FUNNEL_TYPE": "language", "CERTIFICATE_PURCHASED": False,
    }
    fake_brevo.assert_never_sent("emailBlacklisted")
    for entry in (a, b):
        entry.refresh_from_db()
        assert entry.sync_status == "synced"
        assert entry.synced_revision == entry.sync_revision
        assert entry.synced_at is not None


def test_synced_entries_are_not_sent_again(run, client_factory, fake_brevo, now):
    FunnelEntryFactory()
    _push(run, client_factory(), now)
    before = fake_brevo.request_count
    result = _push(run, client_factory(), now)
    assert result.contacts_sent == 0
    assert fake_brevo.request_count == before


def test_big_batches_are_imported_one_import_per_list(run, client_factory, fake_brevo, now):
    for n in range(4):
        FunnelEntryFactory(email=f"lang{n}@example.com", funnel_type="language")
    FunnelEntryFactory(email="other@example.com", funnel_type="non_language")
    result = _push(run, client_factory(), now, threshold=3)
    assert result.imports == 1 and result.upserts == 1
    assert _ops(fake_brevo).count("importContacts") == 1
    [import_request] = [r for r in fake_brevo.requests_log if r.operation == "importContacts"]
    assert import_request.body["listIds"] == [LANGUAGE_LIST]
    assert len(import_request.body["jsonBody"]) == 4
    assert fake_brevo.list_members(LANGUAGE_LIST) == {f"lang{n}@example.com" for n in range(4)}
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"synced"}
    fake_brevo.assert_never_sent("emailBlacklisted")


def test_imports_are_cut_at_the_batch_size(run, client_factory, fake_brevo, now):
    for n in range(5):
        FunnelEntryFactory(email=f"lang{n}@example.com", funnel_type="language")
    result = _push(run, client_factory(), now, threshold=2, batch_size=2)
    # 2 + 2 imported, the last one is below the threshold and upserted.
    assert (result.imports, result.upserts) == (2, 1)
    assert result.contacts_sent == 5
    assert len(fake_brevo.list_members(LANGUAGE_LIST)) == 5


def test_a_failed_import_process_leaves_its_entries_pending(run, client_factory, fake_brevo, now):
    for n in range(3):
        FunnelEntryFactory(email=f"lang{n}@example.com", funnel_type="language")
    fake_brevo.faults.add("import_failed")
    result = _push(run, client_factory(), now, threshold=2)
    assert result.contacts_sent == 0 and result.contacts_failed == 3
    assert fake_brevo.list_members(LANGUAGE_LIST) == set()
    for entry in FunnelEntry.objects.all():
        assert entry.sync_status == "pending"
        assert entry.sync_attempts == 1
        assert "failed" in entry.sync_last_error
    # The next run imports them again, and this time it works.
    result = _push(run, client_factory(), now, threshold=2)
    assert result.contacts_sent == 3
    assert len(fake_brevo.list_members(LANGUAGE_LIST)) == 3


class _ChangesDuringSend(BrevoClient):
    """A purchase lands between sending and confirming: the entry's revision moves on."""

    def upsert_contact(self, **kwargs):
        FunnelEntry.objects.filter(email=kwargs["email"]).update(
            sync_revision=F("sync_revision") + 1, certificate_purchased=True
        )
        return super().upsert_contact(**kwargs)

    def wait_for_process(self, **kwargs):
        FunnelEntry.objects.filter(email="lang0@example.com").update(
            sync_revision=F("sync_revision") + 1
        )
        return super().wait_for_process(**kwargs)


def test_a_change_during_the_send_is_not_lost(run, fake_brevo, sleeps, now):
    entry = FunnelEntryFactory(email="anna@example.com")

    def client():
        return _ChangesDuringSend(base_url=fake_brevo.base_url, api_key=API_KEY,
                                  requests_per_second=0, sleep=sleeps)

    result = _push(run, client(), now)
    entry.refresh_from_db()
    assert result.entries_deferred == 1
    assert (entry.sync_status, entry.sync_revision, entry.synced_revision) == ("pending", 2, 0)
    # The next push carries the purchase; with no further change it is confirmed.
    _push(run, BrevoClient(base_url=fake_brevo.base_url, api_key=API_KEY,
                           requests_per_second=0, sleep=sleeps), now)
    entry.refresh_from_db()
    assert (entry.sync_status, entry.synced_revision) == ("synced", 2)
    assert fake_brevo.contact("anna@example.com")["attributes"]["CERTIFICATE_PURCHASED"] is True


def test_a_change_during_an_import_is_not_lost(run, fake_brevo, sleeps, now):
    for n in range(3):
        FunnelEntryFactory(email=f"lang{n}@example.com", funnel_type="language")
    client = _ChangesDuringSend(base_url=fake_brevo.base_url, api_key=API_KEY,
                                requests_per_second=0, sleep=sleeps)
    result = _push(run, client, now, threshold=2)
    assert result.entries_synced == 2 and result.entries_deferred == 1
    assert FunnelEntry.objects.get(email="lang0@example.com").sync_status == "pending"


def test_a_400_for_one_contact_fails_it_and_the_others_go_on(run, client_factory, fake_brevo, now):
    FunnelEntryFactory(email="anna@example.com")
    bad = FunnelEntryFactory(email="bad@example.com")
    FunnelEntryFactory(email="carl@example.com")
    fake_brevo.faults.add("400", email="bad@example.com", count=None)
    result = _push(run, client_factory(), now)
    assert (result.contacts_sent, result.contacts_failed) == (2, 1)
    bad.refresh_from_db()
    assert bad.sync_status == "failed"
    assert bad.sync_next_attempt_at is None  # permanent: no automatic retry
    assert bad.sync_attempts == 1
    assert "400" in bad.sync_last_error and "bad@example.com" not in bad.sync_last_error
    item = SyncRunItem.objects.get(run=run, action="failed")
    assert (item.entry_id, item.reason) == (bad.id, "invalid_parameter")
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com", "carl@example.com"}
    # Not due again until the admin's retry resets it.
    assert outbox_due_chunk(now=now + dt.timedelta(days=30), after_id=0, limit=10) == []
    entries_retry_sync(entry_ids=[bad.id], now=now)
    fake_brevo.faults.clear()
    _push(run, client_factory(), now)
    bad.refresh_from_db()
    assert bad.sync_status == "synced"


def test_a_transient_failure_is_retried_later_with_backoff(run, client_factory, fake_brevo, now):
    entry = FunnelEntryFactory(email="anna@example.com")
    fake_brevo.faults.add("500", count=4)  # the client tries 1 + 3 times
    result = _push(run, client_factory(), now)
    entry.refresh_from_db()
    assert result.contacts_failed == 1
    assert entry.sync_status == "failed"
    assert entry.sync_attempts == 1
    assert entry.sync_next_attempt_at == now + dt.timedelta(minutes=5)
    assert outbox_due_chunk(now=now + dt.timedelta(minutes=4), after_id=0, limit=10) == []
    later = now + dt.timedelta(minutes=5)
    assert [d.id for d in outbox_due_chunk(now=later, after_id=0, limit=10)] == [entry.id]
    _push(run, client_factory(), later)
    entry.refresh_from_db()
    assert (entry.sync_status, entry.sync_attempts, entry.sync_last_error) == ("synced", 0, "")
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com"}


def test_backoff_grows_and_is_capped():
    assert retry_delay(attempts=1) == dt.timedelta(minutes=5)
    assert retry_delay(attempts=2) == dt.timedelta(minutes=10)
    assert retry_delay(attempts=4) == dt.timedelta(minutes=40)
    assert retry_delay(attempts=10) == dt.timedelta(hours=6)
    assert retry_delay(attempts=500) == dt.timedelta(hours=6)


def test_a_streak_of_transient_failures_stops_the_push(run, client_factory, fake_brevo, now):
    for n in range(5):
        FunnelEntryFactory(email=f"p{n}@example.com")
    fake_brevo.faults.add("503", count=None)
    result = _push(run, client_factory(max_retries=0), now)
    assert "3 consecutive" in result.stopped
    statuses = list(FunnelEntry.objects.order_by("id").values_list("sync_status", "sync_attempts"))
    assert statuses == [("failed", 1)] * 3 + [("pending", 0)] * 2


def test_401_stops_and_keeps_what_brevo_confirmed(run, client_factory, fake_brevo, now):
    first = FunnelEntryFactory(email="anna@example.com")
    FunnelEntryFactory(email="boris@example.com")
    FunnelEntryFactory(email="carl@example.com")
    fake_brevo.faults.add("401", email="boris@example.com")
    with pytest.raises(BrevoAuthError):
        _push(run, client_factory(), now)
    first.refresh_from_db()
    assert first.sync_status == "synced"
    assert list(
        FunnelEntry.objects.exclude(id=first.id).values_list("sync_status", "sync_attempts")
    ) == [("pending", 0), ("pending", 0)]


def test_purchase_attributes_use_the_local_calendar_date(
    run, client_factory, fake_brevo, now, settings
):
    settings.TIME_ZONE = "Europe/Moscow"
    FunnelEntryFactory(
        email="anna@example.com", certificate_purchased=True,
        certificate_purchased_at=dt.datetime(2026, 11, 27, 22, 30, tzinfo=dt.timezone.utc),
    )
    _push(run, client_factory(), now)
    assert fake_brevo.contact("anna@example.com")["attributes"] == {
        "FUNNEL_TYPE": "language",
        "CERTIFICATE_PURCHASED": True,
        "CERTIFICATE_PURCHASED_AT": "2026-11-28",
    }


def test_attributes_of_several_entries_of_one_person():
    early = dt.datetime(2026, 11, 2, 10, tzinfo=dt.timezone.utc)
    late = dt.datetime(2026, 11, 9, 10, tzinfo=dt.timezone.utc)
    entries = [
        PersonEntry(1, "a@example.com", "language", early, True, early),
        PersonEntry(2, "a@example.com", "language", early, True, late),
        PersonEntry(3, "a@example.com", "language", late, False, None),
    ]
    attributes = contact_attributes(entries=entries)
    assert attributes["CERTIFICATE_PURCHASED"] is True
    assert attributes["CERTIFICATE_PURCHASED_AT"] == "2026-11-09"
    assert "CERTIFICATE_PURCHASED_AT" not in contact_attributes(entries=entries[2:])


def test_one_request_for_several_entries_of_one_person(run, client_factory, fake_brevo, now):
    FunnelEntryFactory(email="anna@example.com", test_id=1)
    FunnelEntryFactory(email="anna@example.com", test_id=2)
    result = _push(run, client_factory(), now)
    assert _ops(fake_brevo) == ["createContact"]
    assert result.entries_synced == 2 and result.contacts_sent == 1


def test_entries_of_a_funnel_without_a_list_fail_with_a_reason(
    run, client_factory, fake_brevo, now
):
    entry = FunnelEntryFactory(funnel_type="retired_funnel")
    _push(run, client_factory(), now)
    entry.refresh_from_db()
    assert entry.sync_status == "failed"
    assert "no Brevo list id" in entry.sync_last_error
    assert fake_brevo.request_count == 0


def test_due_means_pending_or_failed_with_a_next_attempt_that_has_come(now):
    FunnelEntryFactory(sync_status="synced")
    pending = FunnelEntryFactory(sync_status="pending")
    due_failed = FunnelEntryFactory(sync_status="failed", sync_next_attempt_at=now)
    FunnelEntryFactory(sync_status="failed", sync_next_attempt_at=now + dt.timedelta(seconds=1))
    FunnelEntryFactory(sync_status="failed", sync_next_attempt_at=None)
    assert [d.id for d in outbox_due_chunk(now=now, after_id=0, limit=10)] == [
        pending.id, due_failed.id,
    ]
    assert [d.id for d in outbox_due_chunk(now=now, after_id=pending.id, limit=10)] == [
        due_failed.id,
    ]


# --- one Brevo contact, several funnels ---------------------------------------------------

T = dt.datetime(2026, 11, 10, 9, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


def _synced(**fields):
    return FunnelEntryFactory(sync_status="synced", sync_revision=1, synced_revision=1, **fields)


def _contact_requests(fake, email):
    return [r.body for r in fake.requests_log
            if r.operation == "createContact" and r.body["email"] == email]


def test_a_buyer_in_one_funnel_is_a_buyer_whichever_entry_is_sent(
    run, client_factory, fake_brevo, now
):
    _synced(email="anna@example.com", funnel_type="language", entered_at=T,
            certificate_purchased=True, certificate_purchased_at=T + DAY)
    FunnelEntryFactory(email="anna@example.com", funnel_type="non_language",
                       entered_at=T + 2 * DAY)
    result = _push(run, client_factory(), now)
    assert (result.contacts_sent, result.entries_synced) == (1, 1)
    [body] = _contact_requests(fake_brevo, "anna@example.com")
    assert body["listIds"] == [OTHER_LIST]
    assert body["attributes"] == {
        "FUNNEL_TYPE": "non_language",
        "CERTIFICATE_PURCHASED": True,
        "CERTIFICATE_PURCHASED_AT": "2026-11-11",
    }


def test_a_purchase_revoked_in_one_funnel_leaves_the_one_still_held_in_the_other(
    run, client_factory, fake_brevo, now
):
    _synced(email="anna@example.com", funnel_type="language", entered_at=T,
            certificate_purchased=True, certificate_purchased_at=T + DAY)
    # The non-language purchase was refunded: that entry alone is due again.
    FunnelEntryFactory(email="anna@example.com", funnel_type="non_language",
                       entered_at=T + DAY, certificate_purchased=False, sync_revision=3,
                       synced_revision=2)
    _push(run, client_factory(), now)
    attributes = fake_brevo.contact("anna@example.com")["attributes"]
    assert attributes["CERTIFICATE_PURCHASED"] is True
    assert attributes["CERTIFICATE_PURCHASED_AT"] == "2026-11-11"
    assert attributes["FUNNEL_TYPE"] == "non_language"


def test_a_revoked_purchase_and_none_elsewhere_is_no_purchase(
    run, client_factory, fake_brevo, now
):
    _synced(email="anna@example.com", funnel_type="language", entered_at=T)
    FunnelEntryFactory(email="anna@example.com", funnel_type="non_language", entered_at=T,
                       certificate_purchased=False, sync_revision=2, synced_revision=1)
    _push(run, client_factory(), now)
    assert fake_brevo.contact("anna@example.com")["attributes"]["CERTIFICATE_PURCHASED"] is False


def test_funnel_type_is_the_funnel_of_the_latest_entry_not_of_the_one_sent(
    run, client_factory, fake_brevo, now
):
    _synced(email="anna@example.com", funnel_type="language", entered_at=T + 3 * DAY)
    FunnelEntryFactory(email="anna@example.com", funnel_type="non_language", entered_at=T)
    # A funnel without a Brevo list is not one the contact is in: it names nothing.
    _synced(email="anna@example.com", funnel_type="retired", entered_at=T + 9 * DAY)
    _push(run, client_factory(), now)
    [body] = _contact_requests(fake_brevo, "anna@example.com")
    assert body["attributes"]["FUNNEL_TYPE"] == "language"
    assert body["listIds"] == [OTHER_LIST]


def test_one_upsert_per_email_to_the_lists_of_its_due_entries(
    run, client_factory, fake_brevo, now
):
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", entered_at=T,
                       certificate_purchased=True, certificate_purchased_at=T + DAY)
    FunnelEntryFactory(email="anna@example.com", funnel_type="non_language",
                       entered_at=T + DAY)
    result = _push(run, client_factory(), now)
    assert _ops(fake_brevo) == ["createContact"]
    assert (result.contacts_sent, result.entries_synced) == (1, 2)
    [body] = _contact_requests(fake_brevo, "anna@example.com")
    assert body["listIds"] == [LANGUAGE_LIST, OTHER_LIST]
    assert body["attributes"]["CERTIFICATE_PURCHASED"] is True
    assert body["attributes"]["FUNNEL_TYPE"] == "non_language"


def test_an_email_whose_due_entries_fall_in_two_chunks_is_still_sent_once(
    run, client_factory, fake_brevo, now
):
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", entered_at=T)
    FunnelEntryFactory(email="boris@example.com", funnel_type="non_language", entered_at=T)
    FunnelEntryFactory(email="anna@example.com", funnel_type="non_language", entered_at=T,
                       certificate_purchased=True, certificate_purchased_at=T)
    result = _push(run, client_factory(), now, batch_size=2)
    [body] = _contact_requests(fake_brevo, "anna@example.com")
    assert body["listIds"] == [LANGUAGE_LIST, OTHER_LIST]
    assert body["attributes"]["CERTIFICATE_PURCHASED"] is True
    assert (result.contacts_sent, result.entries_synced) == (2, 3)


def test_imports_carry_each_email_once_grouped_by_its_lists(
    run, client_factory, fake_brevo, now
):
    for n in range(3):
        FunnelEntryFactory(email=f"lang{n}@example.com", funnel_type="language", entered_at=T)
    for n in range(2):
        FunnelEntryFactory(email=f"both{n}@example.com", funnel_type="language", entered_at=T,
                           certificate_purchased=True, certificate_purchased_at=T)
        FunnelEntryFactory(email=f"both{n}@example.com", funnel_type="non_language",
                           entered_at=T + DAY)
    result = _push(run, client_factory(), now, threshold=2)
    imports = [r.body for r in fake_brevo.requests_log if r.operation == "importContacts"]
    assert sorted(tuple(body["listIds"]) for body in imports) == [
        (LANGUAGE_LIST,), (LANGUAGE_LIST, OTHER_LIST),
    ]
    emails = [row["email"] for body in imports for row in body["jsonBody"]]
    assert sorted(emails) == sorted({*emails}) and len(emails) == 5
    [both] = [body for body in imports if len(body["listIds"]) == 2]
    assert {row["email"]: row["attributes"] for row in both["jsonBody"]} == {
        f"both{n}@example.com": {
            "FUNNEL_TYPE": "non_language", "CERTIFICATE_PURCHASED": True,
            "CERTIFICATE_PURCHASED_AT": "2026-11-10",
        }
        for n in range(2)
    }
    assert result.entries_synced == 7
    assert fake_brevo.list_members(OTHER_LIST) == {"both0@example.com", "both1@example.com"}


def test_the_people_of_a_chunk_are_read_in_one_query(run, client_factory, fake_brevo, now):
    for n in range(6):
        FunnelEntryFactory(email=f"p{n}@example.com", funnel_type="language", entered_at=T)
        _synced(email=f"p{n}@example.com", funnel_type="non_language", entered_at=T)
    with CaptureQueriesContext(connections["default"]) as queries:
        _push(run, client_factory(), now, batch_size=4)
    people_reads = [q["sql"] for q in queries.captured_queries
                    if q["sql"].startswith("SELECT") and "funnel_entries" in q["sql"]
                    and re.search(r"email[`\"]? IN \(", q["sql"].split("WHERE")[1])
                    # the opt-out check (selectors/brevo_state.py) is one more per chunk
                    and "brevo_state" not in q["sql"]]
    assert len(people_reads) == 2  # two chunks of due entries (4 + 2)
