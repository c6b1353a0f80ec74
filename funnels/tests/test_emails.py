"""funnels.emails: what an email is, and how an internationalised domain is stored."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_brevo.addresses import address_valid
from funnels.emails import domain_to_ascii, email_as_typed, email_check, email_normalize


@pytest.mark.parametrize(
    "raw, stored",
    [
        # IDNA 2008 keeps ß and ς as letters of their own; IDNA 2003 mapped them to ss and
        # σ, which is somebody else's domain.
        ("user@straße.de", "user@xn--strae-oqa.de"),
        ("user@STRASSE.de", "user@strasse.de"),
        ("a@faß.de", "a@xn--fa-hia.de"),  # the example of UTS 46 itself
        (" Ivan@ПРИМЕР.рф ", "ivan@xn--e1afmkfd.xn--p1ai"),
        ("ivan@xn--e1afmkfd.xn--p1ai", "ivan@xn--e1afmkfd.xn--p1ai"),
        ("x@bücher.example", "x@xn--bcher-kva.example"),
    ],
)
def test_internationalised_domains_are_stored_by_idna_2008(raw, stored):
    check = email_check(raw)
    assert check.ok, check
    assert check.email == stored


@pytest.mark.parametrize(
    "raw",
    ["a@example..com", "a@-bad.com", "a@bad-.com", "a@пример..рф", "a@\u200d.com", "a@x.123"],
)
def test_domains_that_no_idna_form_exists_for_are_invalid(raw):
    assert email_check(raw).reason == "invalid_email"


def test_an_ascii_domain_is_taken_as_it_is():
    assert domain_to_ascii("example.com") == "example.com"
    assert domain_to_ascii("пример..рф") is None


# Built from the characters that make addresses go wrong, so that most draws are nearly
# valid: dots, hyphens, @, spaces, underscores, digits, capitals, quotes, brackets.
_ADDRESS_PARTS = st.text(alphabet="aZ09.-_@ +'\"[]é", min_size=0, max_size=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=_ADDRESS_PARTS, domain=_ADDRESS_PARTS, tld=st.sampled_from(["com", "c0m", "1", ""]))
def test_the_fake_brevo_is_at_least_as_strict_as_our_check(local, domain, tld):
    """An address the fake takes, ours takes too (a test cannot pass on an address we
    would not send), and what ours sends, the fake takes (no 400 that real Brevo would
    not give)."""
    raw = f"{local}@{domain}.{tld}" if tld else f"{local}@{domain}"
    ours = email_check(raw)
    if address_valid(raw):
        assert ours.ok, raw
    if ours.ok:
        assert address_valid(ours.email), (raw, ours.email)


def test_email_as_typed_is_the_same_address_once_normalised_in_the_given_shares():
    rng = random.Random(7)
    typed = [email_as_typed(rng, "ann.lee@example.com") for _ in range(10_000)]
    assert {email_normalize(t) for t in typed} == {"ann.lee@example.com"}
    assert 1_300 < typed.count("ANN.LEE@EXAMPLE.COM") < 1_700
    assert 800 < typed.count("  ann.lee@example.com ") < 1_200
    assert 350 < typed.count("Ann.lee@example.com") < 650
    tabbed = email_as_typed(random.Random(1), "a@b.co", upper=0, padded=1, pad_after="\t")
    assert tabbed == "  a@b.co\t"
