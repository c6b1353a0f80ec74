"""Certificate purchases: paid MODX payments marked on funnel entries, and withdrawn again.

Payments are read by the one MODX reader (services/modx_reader.py: the recheck list, the
"payments" watermark's gaps, new payments in id order, a chunk per transaction); this
module supplies how to read them, when one cannot be decided yet, and how a chunk of
decided payments is applied. Before that, one pass of its own: the watch list
(`PaymentWatch`), payments already decided that may still change status (unpaid ones that
may be paid later, paid ones that may be refunded), re-read by primary key when they are
due (young ones every run, old ones rarely), at most one chunk per run.

A payment cannot be decided yet, and waits on the recheck list, when its result, buyer or
certificate-test row is missing (MODX writes them after the payment, sometimes), its
buyer's email is empty or invalid (it gets corrected), or its certificate type is one no
funnel knows (yet) - unless it is history (paid before the recheck period).

An entry's purchase is always "the earliest paid payment of the funnel's certificate type,
by the same normalised email, at or after the entry's entered_at". Every chunk moves
entries towards that rule using what it read, so running again changes nothing.
The rule itself is funnels/purchase_rules.py (plain functions over plain data), the
entries a chunk touches are read by selectors/purchases.py, and the writes are
services/purchase_writes.py; this module reads, asks, itemises and counts.
See docs/purchases.md for the decisions (refunds, the watch horizon, the limits).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from django.conf import settings
from django.db import transaction

from funnels.codes import SkipReason, Source
from funnels.emails import email_normalize
from funnels.locks import RunLock
from funnels.modx.times import modx_time_text
from funnels.models import Funnel, FunnelEntry, PaymentWatch, SyncRun, SyncRunItem, SyncState
from funnels.purchase_rules import (
    FOUND,
    REVOKED,
    Change,
    Payment,
    entries_losing_purchase,
    funnels_by_certificate_type,
    payment_classify,
    payment_skip_reason,
    purchase_changes_decide,
)
from funnels.selectors.payments import (
    PaymentRow,
    paid_payments_for_emails,
    payments_after,
    payments_by_ids,
    payments_columns_by_ids,
    payments_digest_total,
)
from funnels.selectors.purchases import funnel_entries_for_payments
from funnels.services.modx_reader import ReadResult, modx_source_read
from funnels.services.purchase_writes import entries_purchase_write, payment_watches_write
from funnels.services.recheck import Waiting, fingerprint_of

# Most payments are by people in no funnel, or not paid (yet): counted, never itemised,
# or a backlog of them would swamp the run's items.
_COUNT_ONLY = frozenset({SkipReason.NOT_PAID, SkipReason.NO_ENTRY})


@dataclass(frozen=True)
class PurchaseSyncResult:
    payments_read: int  # new payments plus watched payments re-read
    purchases_found: int  # entries that became purchased
    purchases_revoked: int  # entries that stopped being purchased
    payments_rechecked: int = 0
    purchases_updated: int = 0  # purchased entries moved to an earlier payment or new time
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    watermark: int = 0
    waiting_by_reason: dict[str, int] = field(default_factory=dict)  # put on the list now
    waiting_now: int = 0


class _PurchaseRun:
    """The payments source of the MODX reader, and the watch-list pass."""

    key = Source.PAYMENTS
    clock_reasons: frozenset[str] = frozenset()

    def __init__(
        self, *, run: SyncRun, now: dt.datetime, chunk_size: int, lock: RunLock | None,
    ) -> None:
        self.run = run
        self.dry_run = run.dry_run
        self.now = now
        self.chunk_size = chunk_size
        self.lock = lock
        self.horizon = dt.timedelta(days=settings.FUNNELS_PURCHASE_RECHECK_DAYS)
        self.recheck_period = dt.timedelta(days=settings.FUNNELS_RECHECK_DAYS)
        # A dry run writes nothing, so later chunks must see what earlier ones would have
        # done: entry id -> (purchased, purchased_at, payment_id).
        self.planned: dict[int, tuple[bool, dt.datetime | None, int | None]] = {}
        self.read = 0
        self.rechecked = 0
        self.found = 0
        self.revoked = 0
        self.updated = 0
        self.skipped: Counter[str] = Counter()

    @cached_property
    def funnels_by_type(self) -> dict[int, tuple[str, ...]]:
        # Read when the first chunk needs it: a run with nothing to read does not ask.
        return funnels_by_certificate_type(Funnel.objects.all())

    @cached_property
    def types_known(self) -> str:
        # Part of every payment's fingerprint: a payment waiting for an unknown certificate
        # type is decided again when a funnel starts to take that type (an edit in the
        # admin, not in MODX).
        return ",".join(str(t) for t in sorted(self.funnels_by_type))

    # -- passes ---------------------------------------------------------------------------

    def recheck_watched(self) -> None:
        """Re-read the watched payments that are due, most overdue first, one chunk at most.

        One chunk bounds what a run with nothing new costs, whatever the size of the watch
        list; a larger due set (a burst of payments, the first run after an outage) is
        worked off by the next runs, and the reads it leaves spread over time.
        """
        due = PaymentWatch.objects.filter(next_check_at__lte=self.now)
        if self.dry_run:
            # A live run has just deleted the expired watches; a dry run may not.
            due = due.filter(recheck_until__gt=self.now)
        # Only the columns idx_watch_due holds: the read stays inside the index.
        watches = list(
            due.order_by("next_check_at", "payment_id")
            .only("payment_id", "paid", "recheck_until", "next_check_at")[: self.chunk_size]
        )
        if not watches:
            return
        ids = sorted(w.payment_id for w in watches)
        rows = payments_by_ids(payment_ids=ids)
        self.rechecked += len(ids)
        self.read += len(rows)
        if self.dry_run:
            self._apply(ids=ids, rows=rows, watches={w.payment_id: w for w in watches})
            return
        with transaction.atomic():
            self._apply(ids=ids, rows=rows, watches={w.payment_id: w for w in watches})
            if self.lock is not None:
                self.lock.check()

    def entered_people(self, *, emails: Iterable[str]) -> None:
        """Paid payments of people entered by this run, already read before (so neither
        new nor due): one MODX query per 500 emails, applied like watched payments."""
        wanted = sorted(set(emails))
        if not wanted:
            return
        # Payments above the watermark are new: the reader applies them after this.
        watermark_before = SyncState.objects.filter(key=Source.PAYMENTS).values_list(
            "last_id", flat=True
        ).first() or 0
        for start in range(0, len(wanted), 500):
            rows = [
                row for row in paid_payments_for_emails(emails=wanted[start:start + 500])
                if row.payment_id <= watermark_before
            ]
            if not rows:
                continue
            ids = [r.payment_id for r in rows]
            self.read += len(rows)
            if self.dry_run:
                self._apply(ids=ids, rows=rows, watches={})
                continue
            with transaction.atomic():
                self._apply(ids=ids, rows=rows, watches=self._watches_of(ids))
                if self.lock is not None:
                    self.lock.check()

    # -- the MODX reader's source --------------------------------------------------------

    def read_after(self, *, after_id: int, limit: int) -> list[PaymentRow]:
        return payments_after(after_id=after_id, limit=limit)

    def read_by_ids(self, *, ids) -> list[PaymentRow]:
        return payments_by_ids(payment_ids=ids)

    def row_id(self, row: PaymentRow) -> int:
        return row.payment_id

    def fingerprint(self, row: PaymentRow) -> str:
        return fingerprint_of(
            row.result_id, row.status_id, modx_time_text(row.paid_at), row.result_found,
            row.user_found, row.cert_test_found, row.raw_email, row.certificate_type,
            self.types_known,
        )

    def light_by_ids(self, *, ids, digest: bool) -> dict[int, tuple[str, int | None]]:
        # The same columns as `fingerprint`, from the same query, before conversion; the
        # digest holds the funnels' certificate types too, as the fingerprint does.
        return {
            int(payment_id): (
                fingerprint_of(
                    result_ref, status_id, modx_time_text(paid_at), result_id is not None,
                    user_id is not None, cert_test_id is not None, email, cert_type,
                    self.types_known,
                ),
                int(row_digest[0]) if digest else None,
            )
            for (
                payment_id, result_ref, status_id, paid_at,
                result_id, user_id, email, cert_test_id, cert_type, *row_digest,
            ) in payments_columns_by_ids(
                payment_ids=ids, digest_salt=self.types_known if digest else None
            )
        }

    def digest_total(self, *, ids) -> tuple[int, int]:
        return payments_digest_total(payment_ids=ids, digest_salt=self.types_known)

    def waiting(self, row: PaymentRow) -> Waiting | None:
        payment = payment_classify(row, self.funnels_by_type)
        if payment.problem is None:
            return None
        paid_at = row.paid_at
        if paid_at is not None and paid_at < self.now - self.recheck_period:
            return None  # history: decided (and itemised) as it is
        return Waiting(payment.problem, email=email_normalize(row.raw_email))

    def first_start_id(self) -> int:
        # Every payment: an entry adopted from the earlier tool may be older than our
        # first run, and its purchase must still be found.
        return 0

    def apply(self, rows: list[PaymentRow]) -> None:
        ids = [r.payment_id for r in rows]
        self.read += len(rows)
        self._apply(ids=ids, rows=rows, watches=self._watches_of(ids))

    def _watches_of(self, ids: list[int]) -> dict[int, PaymentWatch]:
        if self.dry_run or not ids:
            return {}
        return {w.payment_id: w for w in PaymentWatch.objects.filter(payment_id__in=ids)}

    # -- one chunk ------------------------------------------------------------------------

    def _apply(
        self, *, ids: list[int], rows: list[PaymentRow], watches: dict[int, PaymentWatch],
    ) -> None:
        """Decide and write one chunk; live writes join the caller's transaction."""
        payments = {r.payment_id: payment_classify(r, self.funnels_by_type) for r in rows}
        entries = self._entries_for(payments=payments.values(), ids=ids)
        changes = self._decide(entries=entries, payments=payments, ids=set(ids))
        items = [self._change_item(c) for c in changes]
        items += self._skip_items(payments=payments, entries=entries, watches=watches)

        if self.dry_run:
            for change in changes:
                self.planned[change.entry.id] = (
                    change.payment is not None,
                    change.payment.row.paid_at if change.payment else None,
                    change.payment.payment_id if change.payment else None,
                )
            SyncRunItem.objects.bulk_create(items)
            return
        entries_purchase_write(changes=changes, now=self.now)
        payment_watches_write(ids=ids, payments=payments, watches=watches, now=self.now,
                              horizon=self.horizon)
        SyncRunItem.objects.bulk_create(items)

    def _entries_for(self, *, payments: Iterable[Payment], ids: list[int]) -> list[FunnelEntry]:
        """The entries the chunk may change, as this run has left them (a dry run's plan
        of earlier chunks laid over what is stored)."""
        paid = [p for p in payments if p.paid]
        entries = funnel_entries_for_payments(
            payment_ids=ids, emails={p.email for p in paid},
            slugs={slug for p in paid for slug in p.funnels},
        )
        for entry in entries:
            planned = self.planned.get(entry.id)
            if planned is not None:
                (
                    entry.certificate_purchased,
                    entry.certificate_purchased_at,
                    entry.payment_id,
                ) = planned
        return entries

    def _decide(
        self, *, entries: list[FunnelEntry], payments: dict[int, Payment], ids: set[int]
    ) -> list[Change]:
        # An entry losing its payment keeps a purchase if another paid payment of the buyer
        # takes its place: those are looked up once for the chunk, by every spelling known.
        lost = entries_losing_purchase(entries=entries, payments=payments, ids=ids)
        others: list[Payment] = []
        if lost:
            spellings = {e.email for e in lost}
            spellings.update(
                payments[e.payment_id].row.raw_email or ""
                for e in lost if e.payment_id in payments
            )
            others = [
                payment_classify(row, self.funnels_by_type)
                for row in paid_payments_for_emails(emails=spellings)
                # Read in this chunk already: that reading is the current one.
                if row.payment_id not in ids
            ]
        changes = purchase_changes_decide(
            entries=entries, payments=payments, ids=ids, others=others
        )
        for change in changes:
            if change.kind == FOUND:
                self.found += 1
            elif change.kind == REVOKED:
                self.revoked += 1
            else:
                self.updated += 1
        return changes

    # -- items ----------------------------------------------------------------------------

    def _change_item(self, change: Change) -> SyncRunItem:
        entry = change.entry
        if change.payment is None:
            action = (
                SyncRunItem.Action.SKIPPED if self.dry_run
                else SyncRunItem.Action.PURCHASE_REVOKED
            )
            reason = SkipReason.WOULD_REVOKE if self.dry_run else ""
            detail = f"payment {change.replaced} no longer paid"
            source = change.replaced
        else:
            action = (
                SyncRunItem.Action.WOULD_PURCHASE if self.dry_run
                else SyncRunItem.Action.PURCHASE
            )
            reason = ""
            detail = f"paid at {change.payment.row.paid_at.isoformat()}"
            if change.replaced is not None and change.replaced != change.payment.payment_id:
                detail += f"; replaces payment {change.replaced}"
            elif change.replaced is not None:
                detail += "; payment time changed"
            source = change.payment.payment_id
        return SyncRunItem(
            run=self.run, action=action, reason=reason, email=entry.email,
            funnel_type=entry.funnel_type, test_id=entry.test_id, source_id=source,
            entry_id=entry.id, detail=detail,
        )

    def _skip_items(
        self, *, payments: dict[int, Payment], entries: list[FunnelEntry],
        watches: dict[int, PaymentWatch],
    ) -> list[SyncRunItem]:
        """Why a payment changed nothing: said once, when it is first read or when its
        paid state flips, never again on every re-read."""
        entered: dict[tuple[str, str], list[dt.datetime]] = defaultdict(list)
        for entry in entries:
            entered[(entry.email, entry.funnel_type)].append(entry.entered_at)
        items = []
        for payment in payments.values():
            watch = watches.get(payment.payment_id)
            if watch is not None and watch.paid == payment.paid:
                continue
            reason = payment_skip_reason(payment, entered=entered)
            if reason is None:
                continue
            self.skipped[reason] += 1
            if reason in _COUNT_ONLY:
                continue
            items.append(
                SyncRunItem(
                    run=self.run, action=SyncRunItem.Action.SKIPPED, reason=reason,
                    email=payment.email or email_normalize(payment.row.raw_email)[:255],
                    funnel_type=payment.funnels[0] if payment.funnels else "",
                    source_id=payment.payment_id,
                    detail=(
                        f"paid at {payment.row.paid_at.isoformat()}"
                        if payment.row.paid_at is not None else ""
                    ),
                )
            )
        return items

    def result(self, *, read: ReadResult) -> PurchaseSyncResult:
        skipped = Counter(self.skipped)
        skipped.update({k: v for k, v in read.dropped_by_reason.items() if v})
        return PurchaseSyncResult(
            payments_read=self.read,
            purchases_found=self.found,
            purchases_revoked=self.revoked,
            payments_rechecked=self.rechecked,
            purchases_updated=self.updated,
            skipped_by_reason=dict(sorted(skipped.items())),
            watermark=read.last_id,
            waiting_by_reason=dict(sorted(read.waiting_by_reason.items())),
            waiting_now=read.waiting_now,
        )


def purchases_sync(
    *, run: SyncRun, now: dt.datetime, chunk_size: int,
    lock: RunLock | None = None, entered_emails: Iterable[str] = (),
    funnels: Iterable[Funnel] | None = None,
) -> PurchaseSyncResult:
    """Apply new, late, waiting and changed MODX payments to funnel entries.

    `funnels`: the run's funnels, when it has read them (else read here when needed).
    `entered_emails`: the people the run has just entered; their paid payments are read
    at once (a payment read before its buyer's entry existed is otherwise matched only
    when its watch is next due: hours later, or never after the watch ends).

    Live: each chunk commits its entry changes, watch-list and recheck-list changes, run
    items and the watermark together; `lock.check()` runs just before each commit and may
    raise to roll the chunk back. Dry run (`run.dry_run`): reads the same, writes only
    run items (`would_purchase`, skipped or waiting with a reason).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    job = _PurchaseRun(run=run, now=now, chunk_size=chunk_size, lock=lock)
    if funnels is not None:
        job.funnels_by_type = funnels_by_certificate_type(funnels)
    if not run.dry_run:
        PaymentWatch.objects.filter(recheck_until__lte=now).delete()
    job.recheck_watched()
    job.entered_people(emails=entered_emails)
    read = modx_source_read(source=job, run=run, now=now, chunk_size=chunk_size, lock=lock)
    return job.result(read=read)
