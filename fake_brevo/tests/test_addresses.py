"""The fake's address check: at least as strict as Brevo's rules and as the funnels' own
check, so that no test passes on an address Brevo would refuse."""

from __future__ import annotations

import pytest
import requests

from fake_brevo.addresses import address_valid
from fake_brevo.server import FakeBrevo

KEY = "fake-test-key"

ACCEPTED = [
    "user@example.com",
    "User.Name+tag@Example.COM",
    "o'brien@example.co.uk",
    "a@b.cd",
    "x@xn--e1afmkfd.xn--p1ai",  # an international domain as it is sent: punycode
    "digits@123.example.com",
    "a" * 64 + "@example.com",
    "u@" + ".".join(["a" * 63] * 3) + "." + "b" * 60,  # 254 characters
]

REFUSED = [
    "user@example..com",  # an empty domain label: measured 201 before
    "user@.example.com",
    "user@example.com.",
    "user@example",  # no dot in the domain
    "user@-example.com",
    "user@example-.com",
    "user@exa_mple.com",
    "user@example.123",  # an all-digit top-level domain
    "user@[192.0.2.1]",  # IP literal
    ".user@example.com",
    "user.@example.com",
    "us..er@example.com",
    '"quoted"@example.com',
    "us er@example.com",
    "user@exa mple.com",
    "user@@example.com",
    "@example.com",
    "user@",
    "userexample.com",
    "",
    "user@example.com\n",
    "пользователь@example.com",
    "user@пример.рф",  # Brevo's format is `email`, not `idn-email`: punycode only
    "a" * 65 + "@example.com",
    "u@" + ".".join(["a" * 63] * 3) + "." + "b" * 61,  # 255 characters
    "u@" + "a" * 64 + ".com",  # a label over 63
    None,
    42,
]


@pytest.mark.parametrize("address", ACCEPTED)
def test_addresses_brevo_takes(address: str) -> None:
    assert address_valid(address)


@pytest.mark.parametrize("address", REFUSED)
def test_addresses_brevo_refuses(address: object) -> None:
    assert not address_valid(address)


def test_every_contact_write_refuses_an_invalid_address() -> None:
    bad = "user@example..com"
    with FakeBrevo(api_key=KEY, requests_per_second=None) as fake, requests.Session() as http:
        http.headers["api-key"] = KEY
        fake.seed_contact(email="known@example.com")
        created = http.post(f"{fake.base_url}/contacts", json={"email": bad}, timeout=5)
        upserted = http.post(
            f"{fake.base_url}/contacts", json={"email": bad, "updateEnabled": True}, timeout=5
        )
        renamed = http.put(
            f"{fake.base_url}/contacts/known%40example.com",
            json={"attributes": {"EMAIL": "known@example"}}, timeout=5,
        )
        imported = http.post(
            f"{fake.base_url}/contacts/import",
            json={"jsonBody": [{"email": bad}, {"email": "good@example.com"}], "listIds": [1]},
            timeout=5,
        )
        assert imported.status_code == 202
        for response in (created, upserted, renamed):
            assert response.status_code == 400
            assert response.json()["code"] == "invalid_parameter"
        assert set(fake.contacts) == {"known@example.com", "good@example.com"}
