"""The purchase sync's writes (live runs only), each joining the caller's transaction:
entries' purchases set or withdrawn, and the payment watch list kept."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from django.db import connections
from django.db.models import Case, DateTimeField, Value, When

from funnels.models import FunnelEntry, PaymentWatch, SyncStatus
from funnels.purchase_rules import Change, Payment
from funnels.services.report_rollup import report_days_dirty_mark

# Keeps each CASE ... WHEN short: the database walks it for every row it updates.
_UPDATE_BATCH = 500

# How soon a watched payment is read again, by how long ago its watch (re)started: a
# payment is usually completed minutes after it was started and refunded, if at all, within
# days, so young payments are read often and old ones rarely. The first step is shorter than
# the 15-minute cron period, so a young payment is read by every scheduled run but not again
# by a manual run a few minutes later. Over a 30-day watch that is ~75 reads, not ~2,900.
RECHECK_STEPS: tuple[tuple[dt.timedelta, dt.timedelta], ...] = (
    # (watched for less than, read again after)
    (dt.timedelta(hours=1), dt.timedelta(minutes=10)),
    (dt.timedelta(days=1), dt.timedelta(hours=1)),
    (dt.timedelta(days=7), dt.timedelta(hours=6)),
)
RECHECK_LATEST = dt.timedelta(days=1)


def entries_purchase_write(*, changes: list[Change], now: dt.datetime) -> None:
    """Set (or withdraw) each changed entry's purchase and queue it for Brevo: one UPDATE
    per batch of changed entries.

    Hand-written because bulk_update builds a Django expression per row and field:
    on 3,000 changed entries that was 8 s of Python and 5 s of MariaDB evaluating
    searched CASEs. A simple `CASE id WHEN ...` for the three values that differ per
    row, with the outbox columns set alike for all, does the same in a fraction.
    """
    if not changes:
        return
    connection = connections[FunnelEntry.objects.db]
    q = connection.ops.quote_name
    column = {name: q(FunnelEntry._meta.get_field(name).column) for name in (
        "id", "certificate_purchased", "certificate_purchased_at", "payment_id",
        "sync_status", "sync_revision", "sync_next_attempt_at", "updated_at",
    )}
    stamp = connection.ops.adapt_datetimefield_value(now)
    max_params = connection.features.max_query_params or 10_000
    batch = max(1, min(_UPDATE_BATCH, (max_params - 10) // 7))
    for start in range(0, len(changes), batch):
        part = changes[start:start + batch]
        purchased, purchased_at, payment, ids = [], [], [], []
        for change in part:
            entry_id = change.entry.id
            paid = change.payment
            purchased += [entry_id, paid is not None]
            purchased_at += [
                entry_id,
                connection.ops.adapt_datetimefield_value(paid.row.paid_at) if paid else None,
            ]
            payment += [entry_id, paid.payment_id if paid else None]
            ids.append(entry_id)
        whens = " ".join(["WHEN %s THEN %s"] * len(part))
        placeholders = ", ".join(["%s"] * len(part))
        # The outbox sends the new state; a send in flight for the old revision will
        # not mark the entry synced (it compares revisions).
        sql = (
            f"UPDATE {q(FunnelEntry._meta.db_table)} SET "
            f"{column['certificate_purchased']} = CASE {column['id']} {whens} END, "
            f"{column['certificate_purchased_at']} = CASE {column['id']} {whens} END, "
            f"{column['payment_id']} = CASE {column['id']} {whens} END, "
            # A held entry stays held: the flood guard's release decides when it goes.
            # A control entry stays control: nothing about it ever goes to Brevo.
            f"{column['sync_status']} = CASE WHEN {column['sync_status']} IN (%s, %s) "
            f"THEN {column['sync_status']} ELSE %s END, "
            f"{column['sync_revision']} = {column['sync_revision']} + 1, "
            f"{column['sync_next_attempt_at']} = %s, {column['updated_at']} = %s "
            f"WHERE {column['id']} IN ({placeholders})"
        )
        params = [
            *purchased, *purchased_at, *payment, SyncStatus.HELD, SyncStatus.CONTROL,
            SyncStatus.PENDING, stamp, stamp, *ids,
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    # The report's rollup counts these days again: one INSERT of a few day rows.
    report_days_dirty_mark(times=[change.entry.entered_at for change in changes])


def _next_check(*, now: dt.datetime, horizon: dt.timedelta) -> Case:
    """When each watch read now is due again, from how long ago its watch (re)started
    (`recheck_until - horizon`), computed by the database: one UPDATE for the chunk."""
    whens = [
        When(recheck_until__gt=now - younger_than + horizon, then=Value(now + every))
        for younger_than, every in RECHECK_STEPS
    ]
    return Case(*whens, default=Value(now + RECHECK_LATEST), output_field=DateTimeField())


def payment_watches_write(
    *, ids: list[int], payments: Mapping[int, Payment], watches: Mapping[int, PaymentWatch],
    now: dt.datetime, horizon: dt.timedelta,
) -> None:
    """Watch the payments read (`ids`) that may still change, for `horizon`: new watches for
    usable recent payments, a watch's paid state and window when it flipped, and when each
    watch read is due again."""
    if horizon <= dt.timedelta(0):
        return
    oldest_worth_watching = now - horizon
    until = now + horizon
    first_check = now + RECHECK_STEPS[0][1]
    created: list[PaymentWatch] = []
    changed: list[PaymentWatch] = []
    for payment_id in ids:
        payment = payments.get(payment_id)
        watch = watches.get(payment_id)
        paid = payment is not None and payment.paid
        if watch is not None:
            if watch.paid != paid:
                watch.paid = paid
                if paid:
                    # Refunds come after the payment: the horizon starts again.
                    watch.recheck_until = max(watch.recheck_until, until)
                changed.append(watch)
            continue
        if payment is None or payment.problem is not None:
            continue
        paid_at = payment.row.paid_at
        if paid_at is not None and paid_at < oldest_worth_watching:
            continue  # history (a first run reads all of it): settled long ago
        created.append(
            PaymentWatch(
                payment_id=payment_id, paid=paid, first_seen_at=now,
                recheck_until=until, next_check_at=first_check,
            )
        )
    if created:
        PaymentWatch.objects.bulk_create(created)
    if changed:
        PaymentWatch.objects.bulk_update(changed, ["paid", "recheck_until"])
    if watches:
        # After the flips above: a payment that turned paid starts a new window. By
        # primary key: exact statistics, so the database reads just these rows unless
        # they are a fair part of the watch list (a burst), when one pass over it is
        # cheaper and MariaDB takes that instead.
        PaymentWatch.objects.filter(pk__in=sorted(w.pk for w in watches.values())).update(
            next_check_at=_next_check(now=now, horizon=horizon)
        )
