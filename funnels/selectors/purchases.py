"""Our side of the purchase sync: the entries a chunk of payments may change."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q

from funnels.models import FunnelEntry
from funnels.purchase_rules import id_ranges
from funnels.selectors.funnels import funnel_entry_usable_q

ENTRY_FIELDS = (
    "id", "email", "funnel_type", "test_id", "entered_at",
    "certificate_purchased", "certificate_purchased_at", "payment_id",
)

# Entries holding a payment of the chunk are looked up by payment-id ranges, never by a
# long IN list: almost every entry has no payment, so InnoDB's statistics for the index
# are dominated by NULLs and a long IN list (estimated from them, past
# eq_range_index_dive_limit = 200) can look like the whole table, which MariaDB then
# scans. Ranges are estimated by index dives; this many keep every one of them dived.
MAX_ID_RANGES = 100


def funnel_entries_for_payments(
    *, payment_ids: Iterable[int], emails: Iterable[str], slugs: Iterable[str],
) -> list[FunnelEntry]:
    """One query: the entries of these buyers (normalised emails) in these funnels, which the
    paid payments may count for, and the entries that point at any of `payment_ids` (their
    purchase may have to be withdrawn). In id order; only the columns the rules read."""
    ids = set(payment_ids)
    if not ids:
        return []
    emails, slugs = set(emails), set(slugs)
    # Ranges, not `payment_id IN (...)` (see MAX_ID_RANGES; a long IN list made MariaDB
    # scan a million entries, 1.5 s per chunk). New payments are one range; watched ones
    # due together may lie far apart, so the ids are cut at their widest gaps rather than
    # spanned by one range over the whole watch list. Entries in a range that point at
    # other payments are dropped below.
    in_ranges = Q()
    for low, high in id_ranges(ids, most=MAX_ID_RANGES):
        in_ranges |= Q(payment_id__range=(low, high))
    # Rows another writer left in the table are never matched (funnel_entry_usable_q).
    usable = funnel_entry_usable_q()
    by_payment = FunnelEntry.objects.filter(in_ranges, usable).order_by().only(*ENTRY_FIELDS)
    if emails:
        by_email = (
            FunnelEntry.objects.filter(usable, email__in=sorted(emails),
                                       funnel_type__in=sorted(slugs))
            .order_by()
            .only(*ENTRY_FIELDS)
        )
        # UNION ALL: a plain UNION de-duplicates whole rows in a temporary table, which
        # cost more than both reads together; duplicates are dropped by id below.
        fetched = list(by_email.union(by_payment, all=True))
    else:
        fetched = list(by_payment)
    entries = {
        e.id: e for e in fetched
        if e.payment_id in ids or (e.email in emails and e.funnel_type in slugs)
    }
    return [entries[i] for i in sorted(entries)]
