"""The synthetic MODX data: deterministic, as messy as the real site, loaded only where safe."""

from __future__ import annotations

import datetime as dt
import io
from collections import defaultdict

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from conftest import CURRENT_TIME
from funnels.demo import (
    DEMO_MARKER_TABLE,
    LANGUAGE_TESTS,
    NON_LANGUAGE_TESTS,
    demo_generate,
    modx_existing_tables,
    modx_tables_create,
)
from funnels.emails import email_check
from funnels.modx import models as modx

SEED, SIZE = 11, 600


@pytest.fixture(scope="module")
def data():
    return demo_generate(seed=SEED, size=SIZE, now=CURRENT_TIME)


def test_the_same_seed_gives_the_same_rows_and_another_seed_others(data):
    again = demo_generate(seed=SEED, size=SIZE, now=CURRENT_TIME)
    other = demo_generate(seed=SEED + 1, size=SIZE, now=CURRENT_TIME)
    assert again == data
    assert other.results != data.results
    assert len(data.results) == SIZE


def test_both_kinds_of_tests_are_taken(data):
    languages = {row["id"] for row in data.languages}
    kind = {}
    for test in data.tests:
        kind[test["test_id"]] = test["lang_id"] in languages
    assert all(kind[t] for t in LANGUAGE_TESTS)
    assert not any(kind[t] for t in NON_LANGUAGE_TESTS)
    taken = {row["test_id"] for row in data.results}
    assert taken & set(LANGUAGE_TESTS) and taken & set(NON_LANGUAGE_TESTS)
    # simpletest_test.Id is not unique on the real site either.
    ids = [test["test_id"] for test in data.tests]
    assert len(ids) > len(set(ids))


def test_emails_are_as_messy_as_people_type_them(data):
    emails = [row["email"] for row in data.results]
    checked = [email_check(e) for e in emails]
    assert None in emails
    assert any(e is not None and not e.strip() for e in emails)  # empty or blanks
    assert any(c.reason == "invalid_email" for c in checked)
    valid = [e for e, c in zip(emails, checked) if c.ok]
    assert any(e != e.strip() for e in valid)  # padded
    assert any(e.strip() != e.strip().lower() for e in valid)  # mixed or upper case
    assert any("xn--" in c.email for c in checked if c.ok)  # an internationalised domain
    assert any(row["completed_at"] is None for row in data.results)


def _tests_by_person(data) -> dict[str, list[dict]]:
    people: dict[str, list[dict]] = defaultdict(list)
    for row in data.results:
        checked = email_check(row["email"])
        if checked.ok and row["completed_at"] is not None:
            people[checked.email].append(row)
    return people


def test_some_people_take_several_tests(data):
    people = _tests_by_person(data)
    several = [rows for rows in people.values() if len({r["test_id"] for r in rows}) > 1]
    assert several
    assert any(
        {r["test_id"] in LANGUAGE_TESTS for r in rows} == {True, False} for rows in several
    )


def _payments_with_entry(data) -> list[tuple[dict, dt.datetime | None]]:
    """Each payment with the buyer's first test of the certificate's kind (None: none)."""
    people = _tests_by_person(data)
    users = {u["id"]: email_check(u["email"]).email for u in data.cert_users}
    cert_types = {t["id"]: t["type"] for t in data.cert_tests}
    results = {r["id"]: r for r in data.cert_results}
    out = []
    for payment in data.payments:
        result = results.get(payment["result_id"])
        if result is None:
            out.append((payment, None))
            continue
        language = cert_types[result["test_id"]] == modx.CERT_TYPE_LANGUAGE
        taken = [r["completed_at"] for r in people.get(users[result["user_id"]], [])
                 if (r["test_id"] in LANGUAGE_TESTS) == language]
        out.append((payment, min(taken) if taken else None))
    return out


def test_payments_are_paid_unpaid_paid_later_and_before_entry(data):
    payments = _payments_with_entry(data)
    paid = [(p, entry) for p, entry in payments
            if p["status_id"] == modx.PAYMENT_STATUS_PAID and p["paid_at"] is not None]
    assert any(p["status_id"] != modx.PAYMENT_STATUS_PAID for p, _ in payments)
    # Status 2 without a time is not paid either.
    assert any(p["status_id"] == modx.PAYMENT_STATUS_PAID and p["paid_at"] is None
               for p, _ in payments)
    assert any(entry and p["paid_at"] >= entry + dt.timedelta(days=1) for p, entry in paid)
    assert any(entry and p["paid_at"] < entry for p, entry in paid)
    # A payment whose result does not exist, as real data has.
    assert any(entry is None and p["result_id"] not in {r["id"] for r in data.cert_results}
               for p, entry in payments)
    assert all(p["paid_at"] is None or p["paid_at"] <= CURRENT_TIME for p, _ in payments)


# --- demo_seed against the test MODX database --------------------------------------------

def _drop_modx_tables() -> None:
    existing = modx_existing_tables(alias="modx")
    with connections["modx"].schema_editor() as editor:
        for model in modx.MODX_MODELS:
            if model._meta.db_table in existing:
                editor.delete_model(model)
    if DEMO_MARKER_TABLE in existing:
        with connections["modx"].cursor() as cursor:
            cursor.execute(f"DROP TABLE {DEMO_MARKER_TABLE}")


@pytest.fixture
def empty_modx_database():
    """The test MODX database without its tables; put back as conftest made it after."""
    _drop_modx_tables()
    try:
        yield
    finally:
        _drop_modx_tables()
        modx_tables_create(alias="modx")


@pytest.mark.django_db(databases=["default", "modx"], transaction=True)
def test_demo_seed_loads_and_reloads_its_own_tables(empty_modx_database):
    expected = demo_generate(seed=5, size=300, now=CURRENT_TIME)
    out = io.StringIO()

    call_command("demo_seed", "--seed", "5", "--size", "300", stdout=out)
    call_command("demo_seed", "--seed", "5", "--size", "300", stdout=out)

    assert DEMO_MARKER_TABLE in modx_existing_tables(alias="modx")
    assert modx.TestResult.objects.count() == 300  # replaced, not appended
    assert modx.Test.objects.count() == len(expected.tests)
    assert modx.CertUser.objects.count() == len(expected.cert_users)
    assert modx.CertPayment.objects.count() == len(expected.payments)
    assert modx.TestResult.objects.filter(email__isnull=True).exists()
    assert "demo MODX data: 300 test results" in out.getvalue()


@pytest.mark.django_db(databases=["default", "modx"], transaction=True)
def test_demo_seed_refuses_modx_tables_it_did_not_create(empty_modx_database):
    call_command("demo_seed", "--seed", "5", "--size", "100", stdout=io.StringIO())
    with connections["modx"].cursor() as cursor:
        cursor.execute(f"DROP TABLE {DEMO_MARKER_TABLE}")

    with pytest.raises(CommandError, match="MODX tables that the demo did not create"):
        call_command("demo_seed", "--seed", "6", "--size", "50", stdout=io.StringIO())

    assert modx.TestResult.objects.count() == 100  # untouched
    assert DEMO_MARKER_TABLE not in modx_existing_tables(alias="modx")


@pytest.mark.django_db(databases=["default", "modx"])
def test_demo_seed_rejects_a_non_positive_size():
    with pytest.raises(CommandError, match="must be positive"):
        call_command("demo_seed", "--size", "0", stdout=io.StringIO())
