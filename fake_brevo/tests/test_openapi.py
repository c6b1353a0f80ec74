"""The client's requests and the fake's responses against Brevo's own
OpenAPI description (with the README's four load-time fixes), via openapi-core."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from fake_brevo import openapi as brevo_openapi
from funnels.brevo.client import BrevoClient
from funnels.brevo.errors import BrevoAuthError, BrevoPermanentError, BrevoTransientError
from fake_brevo.server import FakeBrevo, LoggedRequest

pytestmark: list[Any] = []

KEY = "openapi-test-key"

# Operation id -> statuses the scenario below must produce, so that a change
# which silently stops exercising one response also fails here.
EXPECTED_EXCHANGES = {
    ("createContact", 201),
    ("createContact", 204),
    ("createContact", 400),
    ("createContact", 401),
    ("getContactInfo", 200),
    ("getContactInfo", 404),
    ("getContactInfo", 401),
    ("updateContact", 204),
    ("updateContact", 404),
    ("addContactToList", 201),
    ("addContactToList", 400),
    ("importContacts", 202),
    ("importContacts", 400),
    ("getProcess", 200),
    ("getProcess", 404),
    ("getProcess", 429),
    ("getLists", 200),
    ("getContacts", 200),
}


def _send(fake: FakeBrevo, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{fake.base_url}{path}", json=body,
                            headers={"api-key": KEY, "accept": "application/json",
                                     # counted as ours, so the request is validated too
                                     "user-agent": "testizer-funnels/tests"}, timeout=5)


@pytest.fixture(scope="module")
def exchanges() -> Iterator[list[LoggedRequest]]:
    """Run every client method, success and error paths, and keep the log."""
    with FakeBrevo(
        api_key=KEY, requests_per_second=1_000, process_requests_per_hour=4, import_delay=0.05
    ) as fake:
        client = BrevoClient(
            base_url=fake.base_url, api_key=KEY, max_retries=0, requests_per_second=0
        )
        client.upsert_contact(email="a@example.com", attributes={"FIRSTNAME": "A"}, list_ids=[2])
        client.upsert_contact(email="a@example.com", attributes={"LASTNAME": "B"}, list_ids=[])
        fake.faults.add("400", email="rejected@example.com")
        with pytest.raises(BrevoPermanentError):
            client.upsert_contact(email="rejected@example.com", attributes={}, list_ids=[])
        # Endpoints the product does not call but the fake serves (the demo and tests
        # read its contacts), sent by hand.
        assert _send(fake, "GET", "/contacts/a%40example.com").status_code == 200
        assert _send(fake, "GET", "/contacts/missing%40example.com").status_code == 404
        attributes = {"AGE": 30, "TAGS": ["x", "y"]}
        assert _send(fake, "PUT", "/contacts/a%40example.com",
                     {"attributes": attributes}).status_code == 204
        assert _send(fake, "PUT", "/contacts/missing%40example.com",
                     {"attributes": {"AGE": 1}}).status_code == 404
        fake.seed_contact(email="b@example.com")
        emails = {"emails": ["b@example.com", "nobody@example.com"]}
        assert _send(fake, "POST", "/contacts/lists/5/contacts/add", emails).status_code == 201
        assert _send(fake, "POST", "/contacts/lists/5/contacts/add",
                     {"emails": ["b@example.com"]}).status_code == 400
        process_id = client.import_contacts(
            contacts=[{"email": "c@example.com", "attributes": {"FIRSTNAME": "C", "AGE": 4}}],
            list_ids=[6],
        )
        client.wait_for_process(process_id=process_id, poll_interval=0.02, timeout=5)
        # What the audit reads: the lists' sizes, the changes of several lists at once.
        assert client.lists_page().count >= 2
        client.contacts_page(list_ids=[2, 6], modified_since=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        with pytest.raises(BrevoPermanentError):
            client.get_process(process_id=process_id + 100)
        # The fourth /processes call in the hour exceeds the limit set above.
        with pytest.raises(BrevoTransientError):
            for _ in range(4):
                client.get_process(process_id=process_id)
        with pytest.raises(BrevoAuthError):
            BrevoClient(base_url=fake.base_url, api_key="wrong").upsert_contact(
                email="a@example.com", attributes={}, list_ids=[]
            )
        requests.get(f"{fake.base_url}/contacts/a%40example.com", timeout=5)
        # An import the client would never send, to get Brevo's 400 for it.
        requests.post(
            f"{fake.base_url}/contacts/import",
            json={"jsonBody": [{"email": "d@example.com"}]},
            headers={"api-key": KEY},
            timeout=5,
        )
        yield fake.requests_log


# ---------------------------------------------------------- the description


def _walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield parents, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*parents, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*parents, index))


def test_description_fixes_are_applied() -> None:
    document = brevo_openapi.fixed_description()
    report = brevo_openapi.fix_report()

    assert document["info"]["title"] == "Brevo API"
    assert report.response_codes_stringified > 500
    assert report.empty_contents_removed == 56
    assert sorted(report.oneof_branches_required) == [
        "addContactToListByEmails",
        "addContactToListByExtIDs",
        "addContactToListByIDs",
        "removeContactFromListByAll",
        "removeContactFromListByEmails",
        "removeContactFromListByExtIDs",
        "removeContactFromListByIDs",
    ]
    schemas = document["components"]["schemas"]
    assert schemas["addContactToListByEmails"]["required"] == ["emails"]
    remaining_one_of = []
    for where, node in _walk(document):
        assert not isinstance(node, (dt.date, dt.datetime)), where
        if isinstance(node, dict):
            if where and where[-1] == "responses":
                assert all(isinstance(code, str) for code in node), where
            if "oneOf" in node:
                remaining_one_of.append(where)
        if len(where) >= 2 and where[-1] == "content" and node == {}:
            pytest.fail(f"empty content left at {where}")
    assert len(remaining_one_of) == 2  # the list add and list remove bodies


def test_loading_is_cached() -> None:
    assert brevo_openapi.get_openapi() is brevo_openapi.get_openapi()


# ---------------------------------------------------------- the exchanges


def test_scenario_covers_every_endpoint_and_error(exchanges: list[LoggedRequest]) -> None:
    seen = {(entry.operation, entry.status) for entry in exchanges}
    assert EXPECTED_EXCHANGES <= seen, EXPECTED_EXCHANGES - seen


def _made_by_client(entry: LoggedRequest) -> bool:
    return entry.headers.get("user-agent", "").startswith("testizer-funnels")


def test_every_exchange_validates(exchanges: list[LoggedRequest]) -> None:
    app = brevo_openapi.get_openapi()
    failures = []
    client_requests = 0
    for entry in exchanges:
        result = brevo_openapi.validate_logged(entry, openapi=app)
        assert result.operation_id == entry.operation, result.describe()
        assert result.response_checked, result.describe()
        if result.response_errors:
            failures.append(result.describe())
        # Requests without a key (the 401 case) or sent by hand are checked
        # in their own tests; every request our client makes must validate.
        if entry.api_key_sent and _made_by_client(entry):
            client_requests += 1
            if result.request_errors:
                failures.append(result.describe())
    assert failures == []
    assert client_requests >= 15


def test_undeclared_401_and_429_have_brevo_error_shape(exchanges: list[LoggedRequest]) -> None:
    for status in (401, 429):
        entry = next(e for e in exchanges if e.status == status)
        result = brevo_openapi.validate_logged(entry)
        assert result.response_checked and result.response_errors == (), result.describe()
        assert result.note and "not declared" in result.note


def test_request_without_key_fails_request_validation(exchanges: list[LoggedRequest]) -> None:
    entry = next(e for e in exchanges if e.status == 401 and not e.api_key_sent)
    result = brevo_openapi.validate_logged(entry)
    assert any("Security" in error for error in result.request_errors)


def test_invalid_import_request_is_rejected_by_fake_and_flagged(
    exchanges: list[LoggedRequest],
) -> None:
    entry = next(e for e in exchanges if e.operation == "importContacts" and e.status == 400)
    result = brevo_openapi.validate_logged(entry)
    # Brevo's description marks listIds as conditionally mandatory only in
    # prose, so the request validates; the 400 response must still fit.
    assert result.response_errors == ()
    assert entry.response_json["code"] == "missing_parameter"


# ------------------------------------------------------------- field names


def test_client_sends_only_declared_field_names(exchanges: list[LoggedRequest]) -> None:
    checked = set()
    for entry in exchanges:
        if entry.body is None or entry.operation is None or not entry.api_key_sent:
            continue
        assert (
            brevo_openapi.unknown_request_fields(operation_id=entry.operation, body=entry.body)
            == []
        ), f"{entry.method} {entry.path}: {entry.body}"
        checked.add(entry.operation)
    assert {"createContact", "updateContact", "addContactToList", "importContacts"} <= checked


def test_misspelt_field_passes_openapi_but_not_field_check() -> None:
    body = {"email": "a@example.com", "updateEnable": True, "listIds": [1]}
    result = brevo_openapi.validate_exchange(
        method="POST",
        path="/v3/contacts",
        request_body=body,
        status=201,
        response_body=b'{"id": 1}',
    )
    assert result.ok, result.describe()
    assert brevo_openapi.unknown_request_fields(operation_id="createContact", body=body) == [
        "updateEnable"
    ]
    nested = {"jsonBody": [{"emial": "x@example.com", "attributes": {"ANY": 1}}], "listIds": [1]}
    assert brevo_openapi.unknown_request_fields(operation_id="importContacts", body=nested) == [
        "jsonBody[0].emial"
    ]


# ------------------------------------------------------ the validator bites


@pytest.mark.parametrize(
    ("kwargs", "side"),
    [
        (
            {
                "method": "POST",
                "path": "/v3/contacts",
                "request_body": {"email": "a@example.com"},
                "status": 201,
                "response_body": b'{"id": "seven"}',
            },
            "response",
        ),
        (
            {
                "method": "POST",
                "path": "/v3/contacts",
                "request_body": {"email": "a@example.com"},
                "status": 204,
                "response_body": b'{"id": 7}',
            },
            "response",
        ),
        (
            {
                "method": "POST",
                "path": "/v3/contacts",
                "request_body": {"email": "a@example.com", "listIds": "2"},
                "status": 204,
            },
            "request",
        ),
        (
            {
                "method": "POST",
                "path": "/v3/contacts/lists/3/contacts/add",
                "request_body": {"emails": [f"e{i}@example.com" for i in range(151)]},
                "status": 201,
                "response_body": b'{"contacts": {"success": [], "failure": []}}',
            },
            "request",
        ),
        (
            {
                "method": "GET",
                "path": "/v3/contacts/a%40example.com",
                "status": 200,
                "response_body": b'{"id": 1, "email": "a@example.com"}',
            },
            "response",
        ),
        (
            {
                "method": "POST",
                "path": "/v3/contacts/import",
                "request_body": {"jsonBody": [{"email": "a@example.com"}], "listIds": [1]},
                "status": 202,
                "response_body": b'{"id": 1}',
            },
            "response",
        ),
    ],
)
def test_validator_rejects_contract_breaks(kwargs: dict[str, Any], side: str) -> None:
    result = brevo_openapi.validate_exchange(**kwargs)
    errors = result.request_errors if side == "request" else result.response_errors
    assert errors, result.describe()


def test_failed_process_status_is_newer_than_the_snapshot() -> None:
    # The fake reports 'failed' like current Brevo; the February 2025 snapshot
    # only knows queued/in_process/completed (see shared/brevo/README.md).
    result = brevo_openapi.validate_exchange(
        method="GET",
        path="/v3/processes/1",
        status=200,
        response_body=b'{"id": 1, "status": "failed", "name": "IMPORTUSER"}',
    )
    assert len(result.response_errors) == 1
    assert "'failed' is not one of" in result.response_errors[0]
