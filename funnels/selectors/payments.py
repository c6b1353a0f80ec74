"""Certificate payments read from MODX, each with its buyer's email and certificate type.

Reads only the MODX alias: the payment, its result, the buyer and the certificate test
are joined inside the MODX database, never against our tables (the two may live on
different servers). Every query is driven by the payments primary key, and the joins go
through primary keys, so the cost of a read grows with the rows read, not with the table:

    ... WHERE p.id > %s ORDER BY p.id LIMIT %s          (new payments, keyset paging)
    ... WHERE p.id IN (%s, ...)                         (watched payments, re-read)
    ... WHERE u.email IN (%s, ...) AND p.id_status = 2  (a buyer's other paid payments)

The joins are LEFT joins on purpose: MODX has no foreign keys, and a payment that points
at a missing result, user or test must still be seen (and reported as skipped) rather
than silently dropped, or the watermark would have nothing to say about it. The ORM only
writes INNER joins for non-null foreign keys, hence the hand-written SQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connections
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from funnels.modx.digests import digest_sql, id_table_param, id_table_sql
from funnels.modx.models import PAYMENT_STATUS_PAID, CertPayment, CertResult, CertTest, CertUser
from funnels.routers import MODX_ALIAS


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment_id: int
    result_id: int | None
    status_id: int | None
    paid_at: dt.datetime | None  # aware, UTC; None when MODX has no datetime_payment
    result_found: bool
    user_found: bool
    cert_test_found: bool
    raw_email: str | None  # as typed in modx_cert_users.email
    certificate_type: int | None  # modx_cert_test.type

    @property
    def is_paid(self) -> bool:
        return self.status_id == PAYMENT_STATUS_PAID and self.paid_at is not None


def _column(model, name: str) -> str:
    return model._meta.get_field(name).column


def _columns_sql() -> str:
    q = connections[MODX_ALIAS].ops.quote_name
    return (
        f"p.{q(_column(CertPayment, 'id'))}, p.{q(_column(CertPayment, 'result'))}, "
        f"p.{q(_column(CertPayment, 'status_id'))}, p.{q(_column(CertPayment, 'paid_at'))}, "
        f"r.{q(_column(CertResult, 'id'))}, u.{q(_column(CertUser, 'id'))}, "
        f"u.{q(_column(CertUser, 'email'))}, "
        f"t.{q(_column(CertTest, 'id'))}, t.{q(_column(CertTest, 'type'))}"
    )


def _joins_sql() -> str:
    """The payment's result, buyer and certificate test, after `... p`."""
    q = connections[MODX_ALIAS].ops.quote_name
    r_id = q(_column(CertResult, "id"))
    u_id = q(_column(CertUser, "id"))
    t_id = q(_column(CertTest, "id"))
    return (
        f"LEFT JOIN {q(CertResult._meta.db_table)} r "
        f"ON r.{r_id} = p.{q(_column(CertPayment, 'result'))} "
        f"LEFT JOIN {q(CertUser._meta.db_table)} u "
        f"ON u.{u_id} = r.{q(_column(CertResult, 'user'))} "
        f"LEFT JOIN {q(CertTest._meta.db_table)} t "
        f"ON t.{t_id} = r.{q(_column(CertResult, 'test'))} "
    )


def _select_sql(*, extra: str = "") -> str:
    q = connections[MODX_ALIAS].ops.quote_name
    return (
        f"SELECT {_columns_sql()}{extra} FROM {q(CertPayment._meta.db_table)} p "
        + _joins_sql()
    )


def _aware_utc(value) -> dt.datetime | None:
    """MODX stores naive times in its server's zone: read them the way the ORM would."""
    if value is None:
        return None
    if isinstance(value, str):
        # SQLite hands back text when the column was declared without a datetime type.
        value = parse_datetime(value)
        if value is None:
            return None
    if not isinstance(value, dt.datetime):
        # mysqlclient returns a date for a DATETIME it cannot parse; treat as unknown.
        return None
    if timezone.is_naive(value):
        if not settings.USE_TZ:  # pragma: no cover - USE_TZ is always on here
            return value
        value = timezone.make_aware(value, connections[MODX_ALIAS].timezone)
    return value.astimezone(dt.timezone.utc)


def _rows(sql: str, params: Sequence) -> list[PaymentRow]:
    with connections[MODX_ALIAS].cursor() as cursor:
        cursor.execute(sql, list(params))
        fetched = cursor.fetchall()
    return [
        PaymentRow(
            payment_id=int(payment_id),
            result_id=result_ref,
            status_id=status_id,
            paid_at=_aware_utc(paid_at),
            result_found=result_id is not None,
            user_found=user_id is not None,
            cert_test_found=cert_test_id is not None,
            raw_email=email,
            certificate_type=cert_type,
        )
        for (
            payment_id, result_ref, status_id, paid_at,
            result_id, user_id, email, cert_test_id, cert_type,
        ) in fetched
    ]


def payments_after(*, after_id: int, limit: int) -> list[PaymentRow]:
    """At most `limit` payments with id > after_id, in id order: one query."""
    q = connections[MODX_ALIAS].ops.quote_name
    p_id = q(_column(CertPayment, "id"))
    sql = _select_sql() + f"WHERE p.{p_id} > %s ORDER BY p.{p_id} LIMIT %s"
    return _rows(sql, [after_id, limit])


def payments_by_ids(*, payment_ids: Iterable[int]) -> list[PaymentRow]:
    """The given payments as they are now, in id order; ids MODX no longer has are absent.

    One query: callers pass a chunk, not the whole watch list.
    """
    ids = sorted(set(payment_ids))
    if not ids:
        return []
    q = connections[MODX_ALIAS].ops.quote_name
    p_id = q(_column(CertPayment, "id"))
    placeholders = ", ".join(["%s"] * len(ids))
    sql = _select_sql() + f"WHERE p.{p_id} IN ({placeholders}) ORDER BY p.{p_id}"
    return _rows(sql, ids)


def _digest_sql() -> str:
    """The payment's digest: the columns `payments_by_ids` reads, and a %s parameter for
    what else its decision depends on (the certificate types the funnels take)."""
    q = connections[MODX_ALIAS].ops.quote_name
    return digest_sql(
        numbers=[
            f"p.{q(_column(CertPayment, 'id'))}", f"p.{q(_column(CertPayment, 'result'))}",
            f"p.{q(_column(CertPayment, 'status_id'))}",
            f"p.{q(_column(CertPayment, 'paid_at'))}", f"r.{q(_column(CertResult, 'id'))}",
            f"u.{q(_column(CertUser, 'id'))}", f"t.{q(_column(CertTest, 'id'))}",
            f"t.{q(_column(CertTest, 'type'))}", "%s",
        ],
        email=f"u.{q(_column(CertUser, 'email'))}",
    )


def payments_columns_by_ids(
    *, payment_ids: Iterable[int], digest_salt: str | None = None
) -> list[tuple]:
    """The columns `payments_by_ids` reads, as the MODX cursor returns them (no conversion,
    no objects): what a recheck compares before reading a payment whole. With
    `digest_salt` (only where `digests_supported()`): a tenth column, the row's digest
    (funnels/modx/digests.py) with the salt in it, from the same statement."""
    ids = sorted(set(payment_ids))
    if not ids:
        return []
    q = connections[MODX_ALIAS].ops.quote_name
    placeholders = ", ".join(["%s"] * len(ids))
    select = _select_sql(extra=f", {_digest_sql()}" if digest_salt is not None else "")
    params = ids if digest_salt is None else [digest_salt, *ids]
    sql = select + f"WHERE p.{q(_column(CertPayment, 'id'))} IN ({placeholders})"
    with connections[MODX_ALIAS].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def payments_digest_total(*, payment_ids: Sequence[int], digest_salt: str) -> tuple[int, int]:
    """(how many of these payments exist, the sum of their digests with `digest_salt`): one
    query returning one row, whatever the number of ids (only where
    `digests_supported()`)."""
    q = connections[MODX_ALIAS].ops.quote_name
    # The id table drives: each listed id finds its payment by primary key.
    sql = (f"SELECT COUNT(*), SUM({_digest_sql()}) FROM {id_table_sql(alias='w')} "
           f"JOIN {q(CertPayment._meta.db_table)} p "
           f"ON p.{q(_column(CertPayment, 'id'))} = w.wanted_id " + _joins_sql())
    with connections[MODX_ALIAS].cursor() as cursor:
        cursor.execute(sql, [digest_salt, id_table_param(payment_ids)])
        count, total = cursor.fetchone()
    return int(count), int(total or 0)


def paid_payments_for_emails(*, emails: Iterable[str]) -> list[PaymentRow]:
    """Paid payments whose buyer's stored email is one of `emails`, in id order.

    Used only when a purchase is withdrawn, to look for another paid payment by the same
    buyer. The comparison is the database's own (`modx_cert_users.email` is indexed), so
    callers pass every spelling they know and normalise the answers themselves; on a
    case-insensitive MySQL collation that also finds case variants.
    """
    wanted = sorted({e for e in emails if e})
    if not wanted:
        return []
    q = connections[MODX_ALIAS].ops.quote_name
    placeholders = ", ".join(["%s"] * len(wanted))
    sql = (
        _select_sql()
        + f"WHERE u.{q(_column(CertUser, 'email'))} IN ({placeholders}) "
        + f"AND p.{q(_column(CertPayment, 'status_id'))} = %s "
        + f"AND p.{q(_column(CertPayment, 'paid_at'))} IS NOT NULL "
        + f"ORDER BY p.{q(_column(CertPayment, 'id'))}"
    )
    return _rows(sql, [*wanted, PAYMENT_STATUS_PAID])
