"""Deterministic synthetic MODX data for the demo, the tests and the benchmark.

`demo_generate` is pure (a seed, a size and a clock in, rows out) so the same seed gives
the same data everywhere; `demo_load` writes it into the demo MODX database.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connections

from funnels.emails import email_as_typed
from funnels.modx import models as modx
from funnels.routers import MODX_ALIAS, modx_writes_allowed

DEMO_MARKER_TABLE = "testizer_demo_marker"

LANGUAGES = [1, 2, 3, 4, 5]
LANGUAGE_TESTS = list(range(1, 21))
NON_LANGUAGE_TESTS = list(range(21, 41))
_DOMAINS = ["example.com", "mail.example.org", "test.example.net", "пример.рф"]


@dataclass
class DemoData:
    languages: list[dict] = field(default_factory=list)
    tests: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    cert_users: list[dict] = field(default_factory=list)
    cert_tests: list[dict] = field(default_factory=list)
    cert_results: list[dict] = field(default_factory=list)
    payments: list[dict] = field(default_factory=list)


def demo_generate(*, seed: int, size: int, now: datetime, weeks: int = 8) -> DemoData:
    """`size` test results over `weeks` weeks before `now` (an aware datetime)."""
    rng = random.Random(seed)
    data = DemoData()
    data.languages = [{"id": lang} for lang in LANGUAGES]
    newid = 0
    for test_id in LANGUAGE_TESTS:
        newid += 1
        data.tests.append({"newid": newid, "test_id": test_id, "lang_id": rng.choice(LANGUAGES)})
    for test_id in NON_LANGUAGE_TESTS:
        newid += 1
        # 0, or a language id with no simpletest_lang row: both mean "not a language test".
        data.tests.append({"newid": newid, "test_id": test_id, "lang_id": rng.choice([0, 0, 99])})
    # MODX does not guarantee simpletest_test.Id is unique: repeat one test.
    newid += 1
    data.tests.append({"newid": newid, "test_id": 3, "lang_id": data.tests[2]["lang_id"]})

    people = max(1, int(size * 0.6))
    addresses = [f"person{n}@{rng.choice(_DOMAINS)}" for n in range(people)]
    span = timedelta(weeks=weeks).total_seconds()
    start = now - timedelta(weeks=weeks)
    taken: list[tuple[str, int, datetime]] = []
    for result_id in range(1, size + 1):
        roll = rng.random()
        email: str | None
        if roll < 0.02:
            email = None
        elif roll < 0.04:
            email = rng.choice(["", "   ", "not-an-email", "bad@", "@nodomain.com", "a b@x.com"])
        else:
            email = email_as_typed(rng, rng.choice(addresses))
        test_id = rng.choice(LANGUAGE_TESTS + NON_LANGUAGE_TESTS)
        # Results arrive in id order, roughly in time order, as on the real site.
        completed = (
            start + timedelta(seconds=span * result_id / (size + 1) + rng.uniform(0, 60))
        ).replace(microsecond=0)
        datep = None if rng.random() < 0.01 else completed
        data.results.append(
            {"id": result_id, "email": email, "test_id": test_id,
             "completed_at": datep, "status": rng.choice([0, 1, 1, 1])}
        )
        if email and datep and "@" in email and " " not in email.strip():
            taken.append((email, test_id, datep))

    data.cert_tests = [{"id": 1, "type": 1}, {"id": 2, "type": 2}, {"id": 3, "type": 1}]
    cert_user_ids: dict[str, int] = {}
    payment_id = 0
    for email, test_id, completed in taken:
        if rng.random() > 0.25:
            continue
        key = email.strip().lower()
        if key not in cert_user_ids:
            cert_user_ids[key] = len(cert_user_ids) + 1
            data.cert_users.append({"id": cert_user_ids[key], "email": email_as_typed(rng, key)})
        cert_test = rng.choice([1, 3]) if test_id in LANGUAGE_TESTS else 2
        result_id = len(data.cert_results) + 1
        data.cert_results.append(
            {"id": result_id, "user_id": cert_user_ids[key], "test_id": cert_test}
        )
        roll = rng.random()
        if roll < 0.08:
            paid_at = completed - timedelta(hours=rng.uniform(1, 72))  # bought before entry
        else:
            paid_at = completed + timedelta(hours=rng.expovariate(1 / 30))
        if paid_at > now:
            paid_at = None
        status = 2
        if roll > 0.85:
            status = rng.choice([1, 3, 4])  # started, cancelled, refunded: not paid
        elif roll > 0.80:
            paid_at = None  # status 2 without a time: not paid
        payment_id += 1
        data.payments.append(
            {"id": payment_id, "result_id": result_id, "status_id": status, "paid_at": paid_at}
        )
    # A payment that points at no result, as real data has.
    payment_id += 1
    data.payments.append(
        {"id": payment_id, "result_id": 10_000_000, "status_id": 2, "paid_at": now - timedelta(days=1)}
    )
    return data


def _chunks(rows: list[dict], size: int) -> Iterator[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def modx_existing_tables(*, alias: str = MODX_ALIAS) -> set[str]:
    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.table_names(cursor))


def modx_tables_create(*, alias: str = MODX_ALIAS) -> None:
    """Create the MODX tables from the unmanaged models (demo and test databases only)."""
    existing = modx_existing_tables(alias=alias)
    with connections[alias].schema_editor() as editor:
        for model in modx.MODX_MODELS:
            if model._meta.db_table not in existing:
                editor.create_model(model)


class DemoRefused(Exception):
    pass


def demo_database_check(*, alias: str = MODX_ALIAS) -> None:
    """Refuse a database that holds MODX tables we did not create: it may be the real site."""
    tables = modx_existing_tables(alias=alias)
    modx_tables = {m._meta.db_table for m in modx.MODX_MODELS}
    if tables & modx_tables and DEMO_MARKER_TABLE not in tables:
        raise DemoRefused(
            "this database already has MODX tables that the demo did not create; "
            "refusing to touch it (point MODX_DATABASE_URL at a demo database)"
        )


def demo_load(*, data: DemoData, alias: str = MODX_ALIAS, chunk_size: int = 5000) -> None:
    demo_database_check(alias=alias)
    connection = connections[alias]
    with modx_writes_allowed():
        existing = modx_existing_tables(alias=alias)
        with connection.schema_editor() as editor:
            for model in reversed(modx.MODX_MODELS):
                if model._meta.db_table in existing:
                    editor.delete_model(model)
        modx_tables_create(alias=alias)
        with connection.cursor() as cursor:
            if DEMO_MARKER_TABLE not in existing:
                cursor.execute(f"CREATE TABLE {DEMO_MARKER_TABLE} (created INT)")
        plan = [
            (modx.TestLanguage, data.languages),
            (modx.Test, data.tests),
            (modx.TestResult, data.results),
            (modx.CertUser, data.cert_users),
            (modx.CertTest, data.cert_tests),
            (modx.CertResult, [
                {"id": r["id"], "user_id": r["user_id"], "test_id": r["test_id"]}
                for r in data.cert_results
            ]),
            (modx.CertPayment, data.payments),
        ]
        for model, rows in plan:
            for chunk in _chunks(rows, chunk_size):
                model.objects.using(alias).bulk_create(model(**row) for row in chunk)
