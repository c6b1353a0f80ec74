"""The purchase rules on plain data: no database (no django_db mark), no run."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from funnels.codes import SkipReason
from funnels.purchase_rules import (
    FOUND,
    REVOKED,
    UPDATED,
    entries_losing_purchase,
    id_ranges,
    payment_classify,
    payment_skip_reason,
    purchase_changes_decide,
)
from funnels.selectors.payments import PaymentRow

UTC = dt.UTC
ENTERED = dt.datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
FUNNELS = {1: ("language",), 2: ("non_language",)}
PAID, STARTED = 2, 1


@dataclass
class Entry:
    id: int
    email: str = "ann@example.com"
    funnel_type: str = "language"
    entered_at: dt.datetime = ENTERED
    certificate_purchased: bool = False
    certificate_purchased_at: dt.datetime | None = None
    payment_id: int | None = None


def row(payment_id, *, email=" Ann@Example.com", paid_at=ENTERED + HOUR, status=PAID,
        cert_type=1, result=True, user=True, cert_test=True):
    return PaymentRow(
        payment_id=payment_id, result_id=10 * payment_id, status_id=status, paid_at=paid_at,
        result_found=result, user_found=user, cert_test_found=cert_test, raw_email=email,
        certificate_type=cert_type,
    )


def classified(*rows):
    return {r.payment_id: payment_classify(r, FUNNELS) for r in rows}


@pytest.mark.parametrize("kwargs, problem", [
    ({"result": False}, SkipReason.RESULT_MISSING),
    ({"user": False}, SkipReason.USER_MISSING),
    ({"cert_test": False}, SkipReason.CERT_TEST_MISSING),
    ({"email": "not an email"}, SkipReason.INVALID_EMAIL),
    ({"email": ""}, SkipReason.EMPTY_EMAIL),
    ({"cert_type": 9}, SkipReason.UNKNOWN_TYPE),
    ({}, None),
])
def test_classify_names_the_first_problem_and_normalises_the_email(kwargs, problem):
    payment = payment_classify(row(1, **kwargs), FUNNELS)
    assert payment.problem == problem
    if problem is None:
        assert (payment.email, payment.funnels, payment.paid) == (
            "ann@example.com", ("language",), True)
    else:
        assert payment.funnels == () and not payment.paid


def test_earliest_paid_payment_at_or_after_entry_becomes_the_purchase():
    payments = classified(
        row(1, paid_at=ENTERED - HOUR),  # before the entry: does not count
        row(2, paid_at=ENTERED + 2 * HOUR),
        row(3, paid_at=ENTERED + HOUR),  # the earliest that counts
        row(4, paid_at=ENTERED, cert_type=2),  # another funnel's certificate
        row(5, paid_at=ENTERED, status=STARTED),  # not paid
    )
    [change] = purchase_changes_decide(entries=[Entry(1)], payments=payments,
                                       ids=set(payments))
    assert (change.kind, change.payment.payment_id, change.replaced) == (FOUND, 3, None)


def test_a_payment_exactly_at_entry_counts_and_ties_go_to_the_lower_id():
    payments = classified(row(8, paid_at=ENTERED), row(7, paid_at=ENTERED))
    [change] = purchase_changes_decide(entries=[Entry(1)], payments=payments, ids={7, 8})
    assert change.payment.payment_id == 7


def test_an_earlier_payment_replaces_the_current_one_and_a_later_one_does_not():
    entry = Entry(1, certificate_purchased=True, certificate_purchased_at=ENTERED + 5 * HOUR,
                  payment_id=50)
    earlier = classified(row(9, paid_at=ENTERED + HOUR))
    [change] = purchase_changes_decide(entries=[entry], payments=earlier, ids={9})
    assert (change.kind, change.payment.payment_id, change.replaced) == (UPDATED, 9, 50)
    later = classified(row(60, paid_at=ENTERED + 9 * HOUR))
    assert purchase_changes_decide(entries=[entry], payments=later, ids={60}) == []


def test_a_refunded_payment_is_revoked_unless_another_paid_payment_takes_its_place():
    entry = Entry(1, certificate_purchased=True, certificate_purchased_at=ENTERED + HOUR,
                  payment_id=3)
    refunded = classified(row(3, status=4))
    assert entries_losing_purchase(entries=[entry], payments=refunded, ids={3}) == [entry]
    [change] = purchase_changes_decide(entries=[entry], payments=refunded, ids={3})
    assert (change.kind, change.payment, change.replaced) == (REVOKED, None, 3)

    other = payment_classify(row(12, paid_at=ENTERED + 3 * HOUR), FUNNELS)
    [change] = purchase_changes_decide(entries=[entry], payments=refunded, ids={3},
                                       others=[other])
    assert (change.kind, change.payment.payment_id, change.replaced) == (UPDATED, 12, 3)


def test_a_vanished_payment_is_revoked_but_one_not_read_is_left_alone():
    entry = Entry(1, certificate_purchased=True, certificate_purchased_at=ENTERED + HOUR,
                  payment_id=3)
    [change] = purchase_changes_decide(entries=[entry], payments={}, ids={3})
    assert change.kind == REVOKED
    assert purchase_changes_decide(entries=[entry], payments={}, ids={4}) == []


def test_a_retimed_payment_updates_the_purchase_time():
    entry = Entry(1, certificate_purchased=True, certificate_purchased_at=ENTERED + HOUR,
                  payment_id=3)
    retimed = classified(row(3, paid_at=ENTERED + 2 * HOUR))
    [change] = purchase_changes_decide(entries=[entry], payments=retimed, ids={3})
    assert (change.kind, change.payment.row.paid_at) == (UPDATED, ENTERED + 2 * HOUR)


def test_an_earlier_tools_purchase_without_payment_gets_the_payment_named():
    entry = Entry(1, certificate_purchased=True, certificate_purchased_at=None, payment_id=None)
    [change] = purchase_changes_decide(entries=[entry], payments=classified(row(3)), ids={3})
    assert (change.kind, change.payment.payment_id) == (UPDATED, 3)


def test_another_persons_payment_never_counts():
    payments = classified(row(3, email="bob@example.com"))
    assert purchase_changes_decide(entries=[Entry(1)], payments=payments, ids={3}) == []


@pytest.mark.parametrize("payment_row, entered, reason", [
    (row(1, result=False), {}, SkipReason.RESULT_MISSING),
    (row(1, status=STARTED), {}, SkipReason.NOT_PAID),
    (row(1, paid_at=None), {}, SkipReason.TIME_MISSING),
    (row(1), {}, SkipReason.NO_ENTRY),
    (row(1), {("ann@example.com", "language"): [ENTERED + 2 * HOUR]}, SkipReason.BEFORE_ENTRY),
    (row(1), {("ann@example.com", "language"): [ENTERED, ENTERED + 2 * HOUR]}, None),
])
def test_skip_reason_says_why_a_payment_changed_nothing(payment_row, entered, reason):
    payment = payment_classify(payment_row, FUNNELS)
    assert payment_skip_reason(payment, entered=entered) == reason


@pytest.mark.parametrize("ids, most, expected", [
    ([], 3, []),
    ([5, 1, 2, 3], 1, [(1, 5)]),
    ([1, 2, 3, 10, 11, 50], 2, [(1, 11), (50, 50)]),
    ([1, 2, 3, 10, 11, 50], 3, [(1, 3), (10, 11), (50, 50)]),
    ([1, 2, 3], 5, [(1, 3)]),
])
def test_id_ranges(ids, most, expected):
    assert id_ranges(ids, most=most) == expected


def test_id_ranges_refuses_zero():
    with pytest.raises(ValueError):
        id_ranges([1], most=0)
