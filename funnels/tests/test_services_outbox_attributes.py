"""Attributes that tell the truth: a withdrawn purchase's date is emptied in Brevo, and a
funnel's own attribute names give a person in two funnels a true value for each.

The fake Brevo here knows the account's attributes and their types, as Brevo does: a value
of the wrong type (an empty string in a date) is ignored, and only an import with
emptyContactsAttributes empties a value (fake_brevo/tests/test_server_attributes.py)."""

import datetime as dt

import pytest
from django.db.models import F

from fake_brevo.server import FakeBrevo
from funnels.models import Funnel, FunnelEntry, SyncRun, SyncStatus
from funnels.services.outbox import outbox_push
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory
from funnels.tests.sync_support import (
    API_KEY,
    LANGUAGE_LIST,
    OTHER_LIST,
    funnels_configure,
)

pytestmark = pytest.mark.django_db

T = dt.datetime(2026, 11, 10, 9, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
ACCOUNT = {
    "FUNNEL_TYPE": "text",
    "CERTIFICATE_PURCHASED": "boolean",
    "CERTIFICATE_PURCHASED_AT": "date",
    "LANGUAGE_CERTIFICATE_PURCHASED": "boolean",
    "LANGUAGE_CERTIFICATE_PURCHASED_AT": "date",
    "LANGUAGE_FUNNEL": "text",
}


@pytest.fixture
def fake_brevo():
    with FakeBrevo(api_key=API_KEY, requests_per_second=None, process_requests_per_hour=None,
                   attribute_types=ACCOUNT) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _lists(db):
    funnels_configure()


@pytest.fixture
def push(client_factory, now):
    def run_push(**kwargs):
        run = SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)
        return outbox_push(run=run, client=client_factory(), now=now, **kwargs)

    return run_push


def _buy(entry, *, at):
    # What services/purchases.py does to an entry that gains a purchase.
    FunnelEntry.objects.filter(id=entry.id).update(
        certificate_purchased=True, certificate_purchased_at=at,
        sync_status=SyncStatus.PENDING, sync_revision=F("sync_revision") + 1,
    )


def _withdraw(entry):
    # ... and to one whose purchase is withdrawn with none to take its place.
    FunnelEntry.objects.filter(id=entry.id).update(
        certificate_purchased=False, certificate_purchased_at=None, payment_id=None,
        sync_status=SyncStatus.PENDING, sync_revision=F("sync_revision") + 1,
    )


def _attributes(fake, email="anna@example.com"):
    return fake.contact(email)["attributes"]


def _imports(fake):
    return [r.body for r in fake.requests_log if r.operation == "importContacts"]


def test_a_withdrawn_purchase_empties_the_date_below_the_import_threshold(fake_brevo, push):
    anna = FunnelEntryFactory(email="anna@example.com", funnel_type="language", entered_at=T)
    _buy(anna, at=T + DAY)
    push()
    assert _attributes(fake_brevo) == {
        "FUNNEL_TYPE": "language", "CERTIFICATE_PURCHASED": True,
        "CERTIFICATE_PURCHASED_AT": "2026-11-11",
    }
    _withdraw(anna)
    FunnelEntryFactory(email="boris@example.com", funnel_type="language", entered_at=T)
    result = push()

    assert _attributes(fake_brevo) == {"FUNNEL_TYPE": "language", "CERTIFICATE_PURCHASED": False}
    # The single-contact upsert cannot empty a value: Anna went by import, Boris (new,
    # nothing to empty) by upsert, all under the threshold of 50.
    [body] = _imports(fake_brevo)
    assert body["emptyContactsAttributes"] is True
    assert body["jsonBody"] == [{"email": "anna@example.com", "attributes": {
        "FUNNEL_TYPE": "language", "CERTIFICATE_PURCHASED": False,
        "CERTIFICATE_PURCHASED_AT": "",
    }}]
    assert (result.imports, result.upserts, result.entries_synced) == (1, 1, 2)
    anna.refresh_from_db()
    assert anna.sync_status == SyncStatus.SYNCED


def test_a_withdrawn_purchase_empties_the_date_in_an_import_above_the_threshold(
    fake_brevo, push
):
    entries = [FunnelEntryFactory(email=f"p{n}@example.com", funnel_type="language",
                                  entered_at=T) for n in range(3)]
    for entry in entries:
        _buy(entry, at=T + DAY)
    push(threshold=2)
    _withdraw(entries[0])
    _buy(entries[1], at=T + 2 * DAY)
    push(threshold=2)

    assert _attributes(fake_brevo, "p0@example.com") == {
        "FUNNEL_TYPE": "language", "CERTIFICATE_PURCHASED": False,
    }
    assert _attributes(fake_brevo, "p1@example.com")["CERTIFICATE_PURCHASED_AT"] == "2026-11-12"
    assert _attributes(fake_brevo, "p2@example.com")["CERTIFICATE_PURCHASED_AT"] == "2026-11-11"
    assert [len(body["jsonBody"]) for body in _imports(fake_brevo)] == [3, 2]


def test_a_contact_sent_for_the_first_time_is_upserted_without_an_empty_date(
    fake_brevo, push
):
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", entered_at=T)
    result = push()
    assert (result.imports, result.upserts) == (0, 1)
    [request] = [r for r in fake_brevo.requests_log if r.operation == "createContact"]
    assert "CERTIFICATE_PURCHASED_AT" not in request.body["attributes"]


def test_a_date_still_held_in_the_other_funnel_is_kept(fake_brevo, push):
    language = FunnelEntryFactory(email="anna@example.com", funnel_type="language",
                                  entered_at=T)
    other = FunnelEntryFactory(email="anna@example.com", funnel_type="non_language",
                               entered_at=T + DAY)
    _buy(language, at=T + DAY)
    _buy(other, at=T + 3 * DAY)
    push()
    _withdraw(other)
    result = push()
    assert result.imports == 0
    assert _attributes(fake_brevo)["CERTIFICATE_PURCHASED_AT"] == "2026-11-11"


def _own_names_for_the_language_funnel():
    Funnel.objects.filter(slug="language").update(
        attribute_funnel_type="LANGUAGE_FUNNEL",
        attribute_purchased="LANGUAGE_CERTIFICATE_PURCHASED",
        attribute_purchased_at="LANGUAGE_CERTIFICATE_PURCHASED_AT",
    )


def test_per_funnel_attribute_names_give_a_person_in_both_funnels_a_true_value_for_each(
    fake_brevo, push
):
    _own_names_for_the_language_funnel()
    language = FunnelEntryFactory(email="anna@example.com", funnel_type="language",
                                  entered_at=T)
    FunnelEntryFactory(email="anna@example.com", funnel_type="non_language",
                       entered_at=T + DAY)
    _buy(language, at=T + 2 * DAY)
    push()
    contact = fake_brevo.contact("anna@example.com")
    assert set(contact["listIds"]) == {LANGUAGE_LIST, OTHER_LIST}
    # She bought the language certificate, not the other one: with shared names she would
    # be a buyer in the non-language list too.
    assert contact["attributes"] == {
        "LANGUAGE_FUNNEL": "language",
        "LANGUAGE_CERTIFICATE_PURCHASED": True,
        "LANGUAGE_CERTIFICATE_PURCHASED_AT": "2026-11-12",
        "FUNNEL_TYPE": "non_language",
        "CERTIFICATE_PURCHASED": False,
    }

    _withdraw(language)
    push()
    assert _attributes(fake_brevo) == {
        "LANGUAGE_FUNNEL": "language",
        "LANGUAGE_CERTIFICATE_PURCHASED": False,
        "FUNNEL_TYPE": "non_language",
        "CERTIFICATE_PURCHASED": False,
    }


def test_a_purchase_in_one_funnel_empties_nothing_of_the_other(fake_brevo, push):
    _own_names_for_the_language_funnel()
    language = FunnelEntryFactory(email="anna@example.com", funnel_type="language",
                                  entered_at=T)
    other = FunnelEntryFactory(email="anna@example.com", funnel_type="non_language",
                               entered_at=T + DAY)
    _buy(language, at=T + 2 * DAY)
    _buy(other, at=T + 4 * DAY)
    push()
    _withdraw(other)
    push()
    assert _attributes(fake_brevo) == {
        "LANGUAGE_FUNNEL": "language",
        "LANGUAGE_CERTIFICATE_PURCHASED": True,
        "LANGUAGE_CERTIFICATE_PURCHASED_AT": "2026-11-12",
        "FUNNEL_TYPE": "non_language",
        "CERTIFICATE_PURCHASED": False,
    }
