"""How the fake Brevo clears an attribute: exactly as the description documents it.

The one documented way is an import with `emptyContactsAttributes: true` and the value sent
empty. The single-contact writes (POST /contacts with updateEnabled, PUT
/contacts/{identifier}) document none: their values are numbers, strings, booleans or
arrays, and "values that don't match the attribute type will be ignored", so an empty
string for a date leaves the date as it was."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from fake_brevo.server import FakeBrevo

KEY = "fake-test-key"
ACCOUNT = {"BOUGHT": "boolean", "BOUGHT_AT": "date", "SCORE": "number", "NOTE": "text"}
HELD = {"BOUGHT": True, "BOUGHT_AT": "2026-11-02", "SCORE": 7, "NOTE": "kept"}


@pytest.fixture
def fake() -> Iterator[FakeBrevo]:
    with FakeBrevo(api_key=KEY, requests_per_second=None, attribute_types=ACCOUNT) as server:
        server.seed_contact(email="held@example.com", attributes=HELD, list_ids=[1])
        yield server


def _call(fake: FakeBrevo, method: str, path: str, body: Any) -> requests.Response:
    return requests.request(
        method, f"{fake.base_url}{path}", json=body, headers={"api-key": KEY}, timeout=5
    )


def _import(fake: FakeBrevo, rows: list[dict[str, Any]], **flags: Any) -> None:
    accepted = _call(fake, "POST", "/contacts/import",
                     {"jsonBody": rows, "listIds": [1], **flags})
    assert accepted.status_code == 202
    process = f"/processes/{accepted.json()['processId']}"
    deadline = time.monotonic() + 5
    while _call(fake, "GET", process, None).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _attributes(fake: FakeBrevo, email: str = "held@example.com") -> dict[str, Any]:
    contact = fake.contact(email)
    assert contact is not None
    return contact["attributes"]


def test_an_import_with_empty_contacts_attributes_erases_the_empty_values(fake) -> None:
    _import(
        fake,
        [{"email": "held@example.com",
          "attributes": {"BOUGHT": False, "BOUGHT_AT": "", "SCORE": None, "UNKNOWN": ""}}],
        updateExistingContacts=True, emptyContactsAttributes=True,
    )
    # A date and a number are cleared although "" is not of their type; the attribute the
    # account does not have is ignored, the ones not sent are untouched.
    assert _attributes(fake) == {"BOUGHT": False, "NOTE": "kept"}


def test_without_the_flag_an_empty_value_leaves_the_data(fake) -> None:
    _import(
        fake,
        [{"email": "held@example.com", "attributes": {"BOUGHT": False, "BOUGHT_AT": ""}}],
        updateExistingContacts=True, emptyContactsAttributes=False,
    )
    assert _attributes(fake) == {**HELD, "BOUGHT": False}


def test_the_flag_is_off_by_default(fake) -> None:
    _import(fake, [{"email": "held@example.com", "attributes": {"BOUGHT_AT": ""}}])
    assert _attributes(fake) == HELD


def test_a_new_contact_of_an_import_gets_no_empty_values(fake) -> None:
    _import(
        fake,
        [{"email": "new@example.com", "attributes": {"BOUGHT": False, "BOUGHT_AT": ""}}],
        emptyContactsAttributes=True,
    )
    assert _attributes(fake, "new@example.com") == {"BOUGHT": False}


@pytest.mark.parametrize(
    "method, path, extra",
    [
        ("POST", "/contacts", {"email": "held@example.com", "updateEnabled": True}),
        ("PUT", "/contacts/held%40example.com", {}),
    ],
)
def test_a_single_contact_write_never_clears(fake, method, path, extra) -> None:
    response = _call(fake, method, path,
                     {**extra, "attributes": {"BOUGHT": False, "BOUGHT_AT": "", "SCORE": ""}})
    assert response.status_code == 204
    assert _attributes(fake) == {**HELD, "BOUGHT": False}
