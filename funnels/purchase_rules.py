"""The purchase rules, as plain functions over plain data: no database, no run.

An entry's purchase is "the earliest paid payment of the funnel's certificate type, by the
same normalised email, at or after the entry's entered_at". services/purchases.py reads the
payments and the entries a chunk touches, asks these functions what changes, and writes the
answer (services/purchase_writes.py). Unit tests: funnels/tests/test_purchase_rules.py.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from funnels.codes import SkipReason
from funnels.emails import email_check
from funnels.modx.models import PAYMENT_STATUS_PAID
from funnels.selectors.payments import PaymentRow

FOUND, UPDATED, REVOKED = "found", "updated", "revoked"


class EntryState(Protocol):
    """What the rules read of an entry (a FunnelEntry, or any object with these)."""

    id: int
    email: str
    funnel_type: str
    entered_at: dt.datetime
    certificate_purchased: bool
    certificate_purchased_at: dt.datetime | None
    payment_id: int | None


@dataclass(frozen=True, slots=True)
class Payment:
    row: PaymentRow
    email: str | None  # normalised
    funnels: tuple[str, ...]  # funnel slugs whose certificate_type is this payment's type
    problem: str | None  # why the row cannot be used at all

    @property
    def payment_id(self) -> int:
        return self.row.payment_id

    @property
    def paid(self) -> bool:
        return self.problem is None and self.row.is_paid

    @property
    def key(self) -> tuple[dt.datetime, int]:
        # Earliest payment wins; the id breaks ties so that every run picks the same one.
        assert self.row.paid_at is not None
        return (self.row.paid_at, self.row.payment_id)

    def unpaid_reason(self) -> str:
        if self.row.status_id != PAYMENT_STATUS_PAID:
            return SkipReason.NOT_PAID
        return SkipReason.TIME_MISSING

    def counts_for(self, entry: EntryState) -> bool:
        return (
            self.paid
            and self.email == entry.email
            and entry.funnel_type in self.funnels
            and self.row.paid_at >= entry.entered_at
        )


@dataclass
class Change:
    entry: EntryState
    payment: Payment | None  # None: the purchase is withdrawn
    kind: str  # FOUND, UPDATED, REVOKED
    replaced: int | None = None


def funnels_by_certificate_type(funnels: Iterable) -> dict[int, tuple[str, ...]]:
    """Certificate type -> the slugs of the funnels (anything with `slug` and
    `certificate_type`) that take it, in slug order."""
    by_type: dict[int, tuple[str, ...]] = {}
    for funnel in sorted(funnels, key=lambda f: f.slug):
        by_type[funnel.certificate_type] = (*by_type.get(funnel.certificate_type, ()),
                                            funnel.slug)
    return by_type


def payment_classify(row: PaymentRow, funnels_by_type: Mapping[int, tuple[str, ...]]) -> Payment:
    """The payment with its normalised email and funnels, or the reason it cannot be used."""
    email: str | None = None
    problem: str | None = None
    if not row.result_found:
        problem = SkipReason.RESULT_MISSING
    elif not row.user_found:
        problem = SkipReason.USER_MISSING
    elif not row.cert_test_found:
        problem = SkipReason.CERT_TEST_MISSING
    else:
        check = email_check(row.raw_email)
        email = check.email
        if not check.ok:
            problem = check.reason
        elif row.certificate_type not in funnels_by_type:
            problem = SkipReason.UNKNOWN_TYPE
    return Payment(
        row=row,
        email=email,
        funnels=funnels_by_type.get(row.certificate_type, ()) if problem is None else (),
        problem=problem,
    )


def entries_losing_purchase(
    *, entries: Iterable[EntryState], payments: Mapping[int, Payment], ids: set[int]
) -> list[EntryState]:
    """Purchased entries whose payment was re-read (`ids`) and no longer counts for them:
    refunded, cancelled, vanished, or re-timed before the entry."""
    return [
        e for e in entries
        if e.certificate_purchased and e.payment_id in ids
        and not (e.payment_id in payments and payments[e.payment_id].counts_for(e))
    ]


def purchase_changes_decide(
    *, entries: Iterable[EntryState], payments: Mapping[int, Payment], ids: set[int],
    others: Iterable[Payment] = (),
) -> list[Change]:
    """What changes for each entry, given the payments read (`payments`, by id; `ids`: every
    id read, found or not) and `others`: the buyers' other paid payments, read for the
    entries losing theirs, which may take the lost payment's place."""
    entries = list(entries)
    candidates: dict[tuple[str, str], list[Payment]] = defaultdict(list)
    for payment in (*payments.values(), *others):
        if payment.paid:
            for slug in payment.funnels:
                candidates[(payment.email, slug)].append(payment)
    lost_ids = {e.id for e in entries_losing_purchase(entries=entries, payments=payments,
                                                      ids=ids)}
    changes: list[Change] = []
    for entry in entries:
        options = [p for p in candidates.get((entry.email, entry.funnel_type), ())
                   if p.counts_for(entry)]
        best = min(options, key=lambda p: p.key) if options else None
        current = entry.payment_id
        if entry.id in lost_ids:
            if best is not None:
                changes.append(Change(entry, best, UPDATED, replaced=current))
            else:
                changes.append(Change(entry, None, REVOKED, replaced=current))
        elif entry.certificate_purchased and current is not None:
            if current in payments:
                current_key = payments[current].key
            elif entry.certificate_purchased_at is not None:
                current_key = (entry.certificate_purchased_at, current)
            else:
                current_key = None
            if best is None:
                continue
            if current_key is None or best.key < current_key:
                changes.append(Change(entry, best, UPDATED, replaced=current))
            elif best.payment_id == current and (
                best.row.paid_at != entry.certificate_purchased_at
            ):
                changes.append(Change(entry, best, UPDATED, replaced=current))
        elif best is not None:
            # Not purchased, or purchased by the earlier tool with no payment recorded:
            # either way the payment we can name becomes the entry's purchase.
            kind = UPDATED if entry.certificate_purchased else FOUND
            changes.append(Change(entry, best, kind))
    return changes


def payment_skip_reason(
    payment: Payment, *, entered: Mapping[tuple[str, str], list[dt.datetime]]
) -> str | None:
    """Why a payment changed nothing, or None when it counts for an entry. `entered`:
    (email, funnel) -> the entry times of the chunk's entries."""
    if payment.problem is not None:
        return payment.problem
    if not payment.paid:
        return payment.unpaid_reason()
    times = [t for slug in payment.funnels for t in entered.get((payment.email, slug), ())]
    if not times:
        return SkipReason.NO_ENTRY
    if min(times) > payment.row.paid_at:
        return SkipReason.BEFORE_ENTRY
    return None


def id_ranges(ids: Iterable[int], *, most: int) -> list[tuple[int, int]]:
    """At most `most` inclusive (low, high) ranges covering `ids`, cut at the widest gaps,
    so that they cover as few other ids as that many ranges can. Consecutive ids are never
    cut apart."""
    if most < 1:
        raise ValueError("most must be at least 1")
    ordered = sorted(set(ids))
    if not ordered:
        return []
    widest = sorted(range(1, len(ordered)), key=lambda i: ordered[i] - ordered[i - 1],
                    reverse=True)[: most - 1]
    cuts = sorted(i for i in widest if ordered[i] - ordered[i - 1] > 1)
    ranges, start = [], 0
    for cut in cuts:
        ranges.append((ordered[start], ordered[cut - 1]))
        start = cut
    ranges.append((ordered[start], ordered[-1]))
    return ranges
