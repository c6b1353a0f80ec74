"""What the Brevo audit reads from the fake: GET /contacts/lists/{id}/contacts (paging,
modifiedSince, sort, count), GET /contacts filtered by listIds and modifiedSince, GET
/contacts/lists with the lists' sizes, and the test controls that change people's state the
way Brevo's own interface does. Every exchange is checked against Brevo's description."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from fake_brevo import openapi as brevo_openapi
from fake_brevo.server import FakeBrevo
from funnels.brevo.client import BrevoClient
from funnels.brevo.errors import BrevoPermanentError, BrevoTransientError

KEY = "list-contacts-key"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeBrevo]:
    with FakeBrevo(api_key=KEY, requests_per_second=1_000, lists=[7, 8], clock=clock) as server:
        yield server


@pytest.fixture
def client(fake: FakeBrevo) -> BrevoClient:
    return BrevoClient(base_url=fake.base_url, api_key=KEY, max_retries=0, requests_per_second=0)


def _all_valid(fake: FakeBrevo) -> None:
    app = brevo_openapi.get_openapi()
    problems = []
    for entry in fake.requests_log:
        result = brevo_openapi.validate_logged(entry, openapi=app)
        assert result.response_checked, result.describe()
        if result.response_errors or (entry.api_key_sent and result.request_errors):
            problems.append(result.describe())
    assert problems == []


def test_pages_in_creation_order_with_count(fake: FakeBrevo, client: BrevoClient) -> None:
    for i in range(7):
        fake.seed_contact(email=f"p{i}@example.com", list_ids=[7])
    fake.seed_contact(email="other@example.com", list_ids=[8])

    first = client.list_contacts_page(list_id=7, offset=0, limit=3)
    second = client.list_contacts_page(list_id=7, offset=3, limit=3)
    last = client.list_contacts_page(list_id=7, offset=6, limit=3)

    assert first.count == second.count == last.count == 7
    emails = [c["email"] for page in (first, second, last) for c in page.contacts]
    assert emails == [f"p{i}@example.com" for i in range(7)]
    assert set(first.contacts[0]) >= {
        "id", "email", "emailBlacklisted", "listIds", "listUnsubscribed", "modifiedAt",
    }
    assert "sort=asc" in fake.requests_log[0].query
    _all_valid(fake)


def test_default_sort_is_descending_and_limit_is_bounded(fake: FakeBrevo) -> None:
    for i in range(3):
        fake.seed_contact(email=f"d{i}@example.com", list_ids=[7])
    url = f"{fake.base_url}/contacts/lists/7/contacts"
    plain = requests.get(url, headers={"api-key": KEY}, timeout=5).json()
    too_many = requests.get(url, params={"limit": 501}, headers={"api-key": KEY}, timeout=5)
    bad_sort = requests.get(url, params={"sort": "up"}, headers={"api-key": KEY}, timeout=5)
    unknown = requests.get(
        f"{fake.base_url}/contacts/lists/99/contacts", headers={"api-key": KEY}, timeout=5
    )

    assert [c["email"] for c in plain["contacts"]] == ["d2@example.com", "d1@example.com",
                                                       "d0@example.com"]
    assert too_many.status_code == 400 and bad_sort.status_code == 400
    assert unknown.status_code == 404
    # The description itself forbids limit 501 and sort=up: the request side flags them.
    for entry in fake.requests_log[1:3]:
        assert brevo_openapi.validate_logged(entry).request_errors
    for entry in (fake.requests_log[0], fake.requests_log[3]):
        assert brevo_openapi.validate_logged(entry).ok


def test_modified_since_keeps_later_changes_only(
    fake: FakeBrevo, client: BrevoClient, clock: Clock
) -> None:
    for name in ("same", "unsub", "black", "gone", "removed"):
        fake.seed_contact(email=f"{name}@example.com", list_ids=[7, 8])
    clock.moment = T0 + timedelta(hours=1)
    fake.unsubscribe_from_list(email="unsub@example.com", list_id=7)
    fake.blacklist(email="black@example.com")
    fake.delete_contact(email="gone@example.com")
    fake.remove_from_list(email="removed@example.com", list_id=7)

    changed = client.list_contacts_page(list_id=7, modified_since=T0 + timedelta(minutes=30))
    nothing = client.list_contacts_page(list_id=7, modified_since=T0 + timedelta(hours=2))
    whole = client.list_contacts_page(list_id=7)

    by_email = {c["email"]: c for c in changed.contacts}
    assert set(by_email) == {"unsub@example.com", "black@example.com"}
    assert changed.count == 2
    assert by_email["unsub@example.com"]["listUnsubscribed"] == [7]
    assert 7 in by_email["unsub@example.com"]["listIds"]
    assert by_email["black@example.com"]["emailBlacklisted"] is True
    assert by_email["black@example.com"]["modifiedAt"].startswith("2026-03-02T10:00:00")
    assert nothing.contacts == [] and nothing.count == 0
    assert {c["email"] for c in whole.contacts} == {
        "same@example.com", "unsub@example.com", "black@example.com",
    }
    assert "modifiedSince=2026-03-02T09%3A30%3A00.000Z" in fake.requests_log[0].query
    _all_valid(fake)


def test_emptied_list_and_list_count(fake: FakeBrevo, client: BrevoClient, clock: Clock) -> None:
    for i in range(4):
        fake.seed_contact(email=f"e{i}@example.com", list_ids=[7, 8])
    assert client.get_list(list_id=7)["totalSubscribers"] == 4
    clock.moment = T0 + timedelta(hours=1)

    assert fake.empty_list(list_id=7) == 4

    assert client.get_list(list_id=7)["totalSubscribers"] == 0
    assert client.list_contacts_page(list_id=7).count == 0
    assert client.list_contacts_page(list_id=8).count == 4
    assert all(c["modifiedAt"].startswith("2026-03-02T10") for c in fake.contacts.values())
    _all_valid(fake)


def test_unknown_list_is_a_permanent_error(client: BrevoClient) -> None:
    with pytest.raises(BrevoPermanentError) as caught:
        client.list_contacts_page(list_id=99)
    assert caught.value.status == 404


def test_naming_the_list_again_resubscribes(fake: FakeBrevo, client: BrevoClient) -> None:
    # The harm the funnels must never cause, reproduced so that tests can see it.
    fake.seed_contact(email="u@example.com", list_ids=[7])
    fake.unsubscribe_from_list(email="u@example.com", list_id=7)
    assert fake.contact("u@example.com")["listUnsubscribed"] == [7]

    client.upsert_contact(email="u@example.com", attributes={}, list_ids=[7])

    assert fake.contact("u@example.com")["listUnsubscribed"] == []


def test_http_controls(fake: FakeBrevo) -> None:
    root = f"{fake.root_url}/__fake__"
    for name in ("a", "b", "c"):
        fake.seed_contact(email=f"{name}@example.com", list_ids=[7, 8])

    answers: list[Any] = [
        requests.post(f"{root}/contacts/a%40example.com/unsubscribe", json={"listId": 7},
                      timeout=5),
        requests.post(f"{root}/contacts/b%40example.com/blacklist", timeout=5),
        requests.delete(f"{root}/contacts/c%40example.com", timeout=5),
        requests.post(f"{root}/lists/8/empty", timeout=5),
        requests.delete(f"{root}/contacts/nobody%40example.com", timeout=5),
    ]

    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404]
    assert answers[3].json() == {"removed": 2}
    assert fake.contact("a@example.com")["listUnsubscribed"] == [7]
    assert fake.contact("b@example.com")["emailBlacklisted"] is True
    assert fake.contact("c@example.com") is None
    assert fake.list_members(8) == set()
    assert fake.list_members(7) == {"a@example.com", "b@example.com"}


def test_the_client_waits_out_a_429_and_checks_its_arguments(fake: FakeBrevo) -> None:
    slept: list[float] = []
    client = BrevoClient(base_url=fake.base_url, api_key=KEY, max_retries=2,
                         requests_per_second=0, sleep=slept.append)
    fake.seed_contact(email="r@example.com", list_ids=[7])
    fake.faults.add("429", count=1, path_prefix="/contacts/lists/7/contacts", reset=2)

    page = client.list_contacts_page(list_id=7)

    assert [c["email"] for c in page.contacts] == ["r@example.com"]
    assert slept == [2.0]
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1},
                {"modified_since": datetime(2026, 3, 2, 9, 0)}):
        with pytest.raises(ValueError):
            client.list_contacts_page(list_id=7, **bad)


def test_contacts_of_several_lists_modified_since(
    fake: FakeBrevo, client: BrevoClient, clock: Clock
) -> None:
    fake.add_list(list_id=9)
    for name, lists in (("both", [7, 8]), ("seven", [7]), ("eight", [8]), ("nine", [9]),
                        ("none", []), ("quiet", [7])):
        fake.seed_contact(email=f"{name}@example.com", list_ids=lists)
    clock.moment = T0 + timedelta(hours=1)
    for name in ("both", "seven", "eight", "nine", "none"):
        fake.blacklist(email=f"{name}@example.com")
    fake.unsubscribe_from_list(email="both@example.com", list_id=7)

    changed = client.contacts_page(list_ids=[8, 7], modified_since=T0 + timedelta(minutes=30))
    first = client.contacts_page(list_ids=[7, 8], limit=2)
    rest = client.contacts_page(list_ids=[7, 8], offset=2, limit=2)
    nothing = client.contacts_page(list_ids=[7, 8], modified_since=T0 + timedelta(hours=2))

    # In any of the lists (not in all of them), oldest first; count is all that match.
    assert [c["email"] for c in changed.contacts] == [
        "both@example.com", "seven@example.com", "eight@example.com",
    ]
    assert changed.count == 3
    assert changed.contacts[0]["listIds"] == [7, 8]
    assert changed.contacts[0]["listUnsubscribed"] == [7]
    assert [c["email"] for c in first.contacts + rest.contacts] == [
        "both@example.com", "seven@example.com", "eight@example.com", "quiet@example.com",
    ]
    assert first.count == rest.count == 4
    assert nothing.contacts == [] and nothing.count == 0
    # The array in the description's default style: one listIds per list.
    assert fake.requests_log[0].path == "/v3/contacts"
    assert fake.requests_log[0].query.startswith("listIds=7&listIds=8&limit=1000&offset=0")
    _all_valid(fake)


def test_contacts_refuses_what_it_does_not_do(fake: FakeBrevo, client: BrevoClient) -> None:
    url = f"{fake.base_url}/contacts"
    headers = {"api-key": KEY}
    for name in ("a", "b"):
        fake.seed_contact(email=f"{name}@example.com", list_ids=[7])
    answers = [
        requests.get(url, params={"limit": 1001}, headers=headers, timeout=5),
        requests.get(url, params={"listIds": "7,8"}, headers=headers, timeout=5),
        requests.get(url, params={"segmentId": 3}, headers=headers, timeout=5),
        requests.get(url, params={"listIds": 99}, headers=headers, timeout=5),
        requests.get(url, params={"modifiedSince": "yesterday"}, headers=headers, timeout=5),
        requests.get(url, headers=headers, timeout=5),
    ]

    assert [a.status_code for a in answers] == [400, 400, 400, 400, 400, 200]
    # Without a filter: every contact, newest first (the default sort).
    assert [c["email"] for c in answers[-1].json()["contacts"]] == [
        "b@example.com", "a@example.com",
    ]
    # The description itself forbids limit 1001 and a comma-joined array.
    for entry in fake.requests_log[:2]:
        assert brevo_openapi.validate_logged(entry).request_errors
    for entry in fake.requests_log[2:]:
        assert brevo_openapi.validate_logged(entry).ok, brevo_openapi.validate_logged(entry)
    with pytest.raises(ValueError):
        client.contacts_page(list_ids=[])
    with pytest.raises(ValueError):
        client.contacts_page(list_ids=[7], limit=1001)


def test_lists_with_their_sizes(fake: FakeBrevo, client: BrevoClient) -> None:
    for list_id in range(20, 80):
        fake.add_list(list_id=list_id)
    for i in range(3):
        fake.seed_contact(email=f"m{i}@example.com", list_ids=[7, 79])
    fake.blacklist(email="m0@example.com")

    first = client.lists_page()
    second = client.lists_page(offset=50)
    plain = requests.get(f"{fake.base_url}/contacts/lists", headers={"api-key": KEY},
                         timeout=5).json()
    too_many = requests.get(f"{fake.base_url}/contacts/lists", params={"limit": 51},
                            headers={"api-key": KEY}, timeout=5)

    # Every list of the account, in creation order; count is all lists, not the page.
    ids = [item["id"] for item in first.lists + second.lists]
    assert ids == [7, 8, *range(20, 80)]
    assert first.count == second.count == 62 and len(first.lists) == 50
    by_id = {item["id"]: item for item in first.lists + second.lists}
    # The same sizes as GET /contacts/lists/{id}.
    assert by_id[7]["totalSubscribers"] == client.get_list(list_id=7)["totalSubscribers"] == 3
    assert by_id[79]["totalSubscribers"] == 3 and by_id[8]["totalSubscribers"] == 0
    # Default: 10 lists, newest first.
    assert [item["id"] for item in plain["lists"]] == list(range(79, 69, -1))
    assert too_many.status_code == 400
    assert "sort=asc" in fake.requests_log[0].query
    assert brevo_openapi.validate_logged(fake.requests_log[3]).request_errors
    _all_valid_but(fake, 3)
    with pytest.raises(ValueError):
        client.lists_page(limit=51)


def _all_valid_but(fake: FakeBrevo, index: int) -> None:
    app = brevo_openapi.get_openapi()
    for position, entry in enumerate(fake.requests_log):
        if position != index:
            result = brevo_openapi.validate_logged(entry, openapi=app)
            assert result.ok and result.response_checked, result.describe()


def test_a_fault_can_target_one_operation(fake: FakeBrevo) -> None:
    client = BrevoClient(base_url=fake.base_url, api_key=KEY, max_retries=1,
                         requests_per_second=0, sleep=lambda seconds: None)
    fake.faults.add("500", count=None, operation="getContacts")

    assert client.lists_page().count == 2
    assert client.list_contacts_page(list_id=7).count == 0
    with pytest.raises(BrevoTransientError):
        client.contacts_page(list_ids=[7])
    assert [e.status for e in fake.requests_log] == [200, 200, 500, 500]
