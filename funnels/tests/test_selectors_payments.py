import datetime as dt

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from funnels.modx.models import CertPayment, CertResult
from funnels.selectors.payments import (
    paid_payments_for_emails,
    payments_after,
    payments_by_ids,
)
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
)
from funnels.routers import modx_writes_allowed

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

UTC = dt.timezone.utc


def test_payments_after_joins_buyer_and_certificate_type_in_id_order():
    first = CertPaymentFactory(result__user__email=" Ann@Example.com", result__test__type=2)
    second = CertPaymentFactory(result__user__email="bob@example.com", result__test__type=1)
    rows = payments_after(after_id=0, limit=10)
    assert [r.payment_id for r in rows] == [first.id, second.id]
    assert (rows[0].raw_email, rows[0].certificate_type) == (" Ann@Example.com", 2)
    assert (rows[1].raw_email, rows[1].certificate_type) == ("bob@example.com", 1)
    assert rows[0].result_found and rows[0].user_found and rows[0].cert_test_found
    assert rows[0].result_id == first.result_id


def test_payments_after_honours_watermark_and_limit():
    payments = CertPaymentFactory.create_batch(5)
    rows = payments_after(after_id=payments[1].id, limit=2)
    assert [r.payment_id for r in rows] == [payments[2].id, payments[3].id]
    assert payments_after(after_id=payments[-1].id, limit=10) == []


def test_payment_time_is_read_in_modx_zone_and_returned_in_utc():
    payment = CertPaymentFactory(paid_at=None)
    table = CertPayment._meta.db_table
    # MODX writes naive local times; Europe/Moscow is UTC+3 all year.
    with connections["modx"].cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET datetime_payment = %s WHERE id = %s",
            ["2026-11-20 12:00:00", payment.id],
        )
    [row] = payments_after(after_id=0, limit=1)
    assert row.paid_at == dt.datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    assert row.paid_at.utcoffset() == dt.timedelta(0)


def test_dangling_references_are_returned_not_dropped():
    no_result = CertPaymentFactory(result=CertResult(id=10_000_000))
    with modx_writes_allowed():
        no_user = CertPaymentFactory(
            result=CertResultFactory(user=CertUserFactory.build(id=9_000_001))
        )
        no_test = CertPaymentFactory(
            result=CertResultFactory(test=CertTestFactory.build(id=9_000_002))
        )
    rows = {r.payment_id: r for r in payments_after(after_id=0, limit=10)}
    assert not rows[no_result.id].result_found
    assert rows[no_result.id].raw_email is None
    assert rows[no_user.id].result_found and not rows[no_user.id].user_found
    assert rows[no_user.id].certificate_type is not None
    assert rows[no_test.id].user_found and not rows[no_test.id].cert_test_found
    assert rows[no_test.id].certificate_type is None


def test_is_paid_needs_status_two_and_a_time(now):
    paid = CertPaymentFactory(status_id=2, paid_at=now)
    no_time = CertPaymentFactory(status_id=2, paid_at=None)
    other_status = CertPaymentFactory(status_id=3, paid_at=now)
    rows = {r.payment_id: r for r in payments_after(after_id=0, limit=10)}
    assert rows[paid.id].is_paid
    assert not rows[no_time.id].is_paid
    assert not rows[other_status.id].is_paid


def test_payments_by_ids_reads_only_those_and_skips_vanished_ids():
    payments = CertPaymentFactory.create_batch(4)
    rows = payments_by_ids(payment_ids=[payments[3].id, payments[1].id, 999_999])
    assert [r.payment_id for r in rows] == [payments[1].id, payments[3].id]


def test_payments_by_ids_without_ids_does_not_query():
    with CaptureQueriesContext(connections["modx"]) as modx_queries:
        assert payments_by_ids(payment_ids=[]) == []
    assert len(modx_queries) == 0


def test_paid_payments_for_emails_returns_only_paid_rows_of_those_buyers(now):
    buyer = CertUserFactory(email="same@example.com")
    paid = CertPaymentFactory(result__user=buyer, paid_at=now)
    CertPaymentFactory(result__user=buyer, status_id=4, paid_at=now)
    CertPaymentFactory(result__user=buyer, status_id=2, paid_at=None)
    CertPaymentFactory(result__user__email="other@example.com", paid_at=now)
    rows = paid_payments_for_emails(emails=["same@example.com", ""])
    assert [r.payment_id for r in rows] == [paid.id]
    assert paid_payments_for_emails(emails=[]) == []


def test_payments_after_pages_by_id_one_query_a_page():
    payments = CertPaymentFactory.create_batch(7)
    with CaptureQueriesContext(connections["modx"]) as modx_queries:
        pages = [payments_after(after_id=0, limit=3),
                 payments_after(after_id=payments[2].id, limit=3),
                 payments_after(after_id=payments[5].id, limit=3)]
    assert [[r.payment_id for r in page] for page in pages] == [
        [p.id for p in payments[0:3]], [p.id for p in payments[3:6]], [payments[6].id],
    ]
    assert len(modx_queries) == 3
    assert all("LIMIT" in q["sql"].upper() for q in modx_queries.captured_queries)
