import dataclasses
import datetime as dt
from types import SimpleNamespace

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from funnels.codes import SkipReason, Source
from funnels.models import (
    Funnel,
    FunnelEntry,
    PaymentWatch,
    RecheckRow,
    SyncRunItem,
    SyncState,
    SyncStatus,
)
from funnels.modx.models import (
    CERT_TYPE_LANGUAGE,
    CERT_TYPE_NON_LANGUAGE,
    CertPayment,
    CertResult,
    CertUser,
)
from funnels.purchase_rules import id_ranges
from funnels.selectors.funnels import watermark_state_get
from funnels.services.watermarks import WatermarkMoved
from funnels.services import purchases as purchases_module
from funnels.services.purchases import (
    PurchaseSyncResult,
    purchases_sync,
)
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
    FunnelEntryFactory,
    SyncRunFactory,
)
from funnels.routers import modx_writes_allowed

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)
ENTERED = dt.datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def pay(email, *, at, cert_type=CERT_TYPE_LANGUAGE, status=2, user=None):
    if user is not None:
        return CertPaymentFactory(
            result__user=user, result__test__type=cert_type, status_id=status, paid_at=at
        )
    return CertPaymentFactory(
        result__user__email=email, result__test__type=cert_type, status_id=status, paid_at=at
    )


def modx_update(payment, **fields):
    with modx_writes_allowed():
        CertPayment.objects.filter(pk=payment.pk).update(**fields)


def sync(now, *, dry_run=False, chunk_size=100, **kwargs):
    """The result's fields, plus the run (the tests read its items)."""
    run = SyncRunFactory(dry_run=dry_run, started_at=now)
    result = purchases_sync(run=run, now=now, chunk_size=chunk_size, **kwargs)
    assert isinstance(result, PurchaseSyncResult)
    return SimpleNamespace(**dataclasses.asdict(result), run=run)


def items(result, action=None):
    qs = SyncRunItem.objects.filter(run=result.run)
    if action is not None:
        qs = qs.filter(action=action)
    return list(qs)


def refreshed(entry):
    entry.refresh_from_db()
    return entry


# --- matching ----------------------------------------------------------------------------


def test_purchase_after_entry_marks_the_entry_and_queues_it_for_brevo(now):
    entry = FunnelEntryFactory(
        email="ann@example.com", entered_at=ENTERED,
        sync_status=SyncStatus.SYNCED, sync_revision=1, synced_revision=1,
    )
    payment = pay("ann@example.com", at=ENTERED + DAY)

    result = sync(now)

    entry = refreshed(entry)
    assert entry.certificate_purchased is True
    assert entry.certificate_purchased_at == ENTERED + DAY
    assert entry.payment_id == payment.id
    assert (entry.sync_status, entry.sync_revision, entry.synced_revision) == ("pending", 2, 1)
    assert entry.sync_next_attempt_at == now
    assert (result.payments_read, result.purchases_found, result.purchases_revoked) == (1, 1, 0)
    [item] = items(result)
    assert (item.action, item.entry_id, item.source_id) == ("purchase", entry.id, payment.id)


def test_purchase_at_the_moment_of_entry_counts(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED)
    assert sync(now).purchases_found == 1
    assert refreshed(entry).certificate_purchased


def test_purchase_before_entry_is_not_a_conversion_and_is_itemised(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=ENTERED - dt.timedelta(seconds=1))

    result = sync(now)

    assert refreshed(entry).certificate_purchased is False
    assert result.purchases_found == 0
    [item] = items(result)
    assert (item.action, item.reason, item.source_id) == (
        "skipped", "purchase_before_entry", payment.id
    )
    assert result.skipped_by_reason == {"purchase_before_entry": 1}


def test_email_variants_match_the_normalised_entry(now):
    plain = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    idn = FunnelEntryFactory(email="bob@xn--e1afmkfd.xn--p1ai", entered_at=ENTERED)
    pay("  ANN@Example.COM ", at=ENTERED + DAY)
    pay("Bob@ПРИМЕР.рф", at=ENTERED + DAY)

    assert sync(now).purchases_found == 2
    assert refreshed(plain).certificate_purchased
    assert refreshed(idn).certificate_purchased


def test_certificate_type_must_match_the_funnel(now):
    language = FunnelEntryFactory(email="ann@example.com", funnel_type="language",
                                  entered_at=ENTERED)
    other = FunnelEntryFactory(email="ann@example.com", funnel_type="non_language",
                               entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED + DAY, cert_type=CERT_TYPE_NON_LANGUAGE)

    result = sync(now)

    assert refreshed(language).certificate_purchased is False
    assert refreshed(other).certificate_purchased is True
    assert result.purchases_found == 1


def test_language_certificate_does_not_convert_a_non_language_entry(now):
    entry = FunnelEntryFactory(email="ann@example.com", funnel_type="non_language",
                               entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED + DAY, cert_type=CERT_TYPE_LANGUAGE)

    result = sync(now)

    assert refreshed(entry).certificate_purchased is False
    assert result.skipped_by_reason == {"no_entry": 1}
    assert items(result) == []  # "no entry" is common: counted, not itemised


def test_funnel_certificate_type_decides_not_the_slug(now):
    Funnel.objects.filter(slug="non_language").update(certificate_type=7)
    entry = FunnelEntryFactory(email="ann@example.com", funnel_type="non_language",
                               entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED + DAY, cert_type=7)
    assert sync(now).purchases_found == 1
    assert refreshed(entry).certificate_purchased


def test_a_buyer_among_many_older_unpurchased_entries_is_found(now):
    # The earlier tool looked only at the 100 oldest unpurchased entries.
    FunnelEntryFactory.create_batch(150, entered_at=ENTERED - 5 * DAY)
    buyer = FunnelEntryFactory(email="late@example.com", entered_at=ENTERED)
    pay("late@example.com", at=ENTERED + DAY)

    result = sync(now)

    assert refreshed(buyer).certificate_purchased is True
    assert result.purchases_found == 1
    assert FunnelEntry.objects.filter(certificate_purchased=True).count() == 1


def test_every_entry_entered_before_the_payment_is_marked(now):
    first = FunnelEntryFactory(email="ann@example.com", test_id=1, entered_at=ENTERED)
    second = FunnelEntryFactory(email="ann@example.com", test_id=2, entered_at=ENTERED + DAY)
    later = FunnelEntryFactory(email="ann@example.com", test_id=3, entered_at=ENTERED + 5 * DAY)
    payment = pay("ann@example.com", at=ENTERED + 2 * DAY)

    result = sync(now)

    assert result.purchases_found == 2
    assert refreshed(first).payment_id == payment.id
    assert refreshed(second).payment_id == payment.id
    assert refreshed(later).certificate_purchased is False


def test_earliest_of_two_purchases_wins_within_one_chunk(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED + 3 * DAY)  # lower id, later time
    early = pay("ann@example.com", at=ENTERED + DAY)

    result = sync(now)

    entry = refreshed(entry)
    assert (entry.payment_id, entry.certificate_purchased_at) == (early.id, ENTERED + DAY)
    assert (result.purchases_found, result.purchases_updated) == (1, 0)
    assert entry.sync_revision == 2  # bumped once, not once per payment


def test_an_earlier_payment_read_in_a_later_run_replaces_the_later_one(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    late = pay("ann@example.com", at=ENTERED + 3 * DAY)
    sync(now)
    assert refreshed(entry).payment_id == late.id

    early = pay("ann@example.com", at=ENTERED + DAY)
    result = sync(now + dt.timedelta(minutes=15))

    entry = refreshed(entry)
    assert (entry.payment_id, entry.certificate_purchased_at) == (early.id, ENTERED + DAY)
    assert (result.purchases_found, result.purchases_updated) == (0, 1)
    [item] = items(result, "purchase")
    assert f"replaces payment {late.id}" in item.detail


def test_a_later_second_purchase_changes_nothing(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    first = pay("ann@example.com", at=ENTERED + DAY)
    sync(now)
    revision = refreshed(entry).sync_revision

    pay("ann@example.com", at=ENTERED + 2 * DAY)
    result = sync(now + dt.timedelta(minutes=15))

    entry = refreshed(entry)
    assert (entry.payment_id, entry.sync_revision) == (first.id, revision)
    assert (result.purchases_found, result.purchases_updated) == (0, 0)


def test_running_twice_changes_nothing_and_bumps_nothing(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED + DAY)
    pay("ann@example.com", at=ENTERED - DAY)  # before entry
    sync(now)
    before = refreshed(entry)
    snapshot = (before.payment_id, before.sync_revision, before.updated_at)

    again = sync(now + dt.timedelta(minutes=15))

    after = refreshed(entry)
    assert (after.payment_id, after.sync_revision, after.updated_at) == snapshot
    assert (again.purchases_found, again.purchases_revoked, again.purchases_updated) == (0, 0, 0)
    assert again.payments_rechecked == 2  # both are watched, and both still say the same
    assert items(again) == []  # not even the "before entry" skip is repeated


def test_legacy_purchase_without_payment_id_gets_the_payment(now):
    entry = FunnelEntryFactory(
        email="ann@example.com", entered_at=ENTERED,
        certificate_purchased=True, certificate_purchased_at=ENTERED + 5 * DAY,
    )
    payment = pay("ann@example.com", at=ENTERED + DAY)
    result = sync(now)
    entry = refreshed(entry)
    assert (entry.payment_id, entry.certificate_purchased_at) == (payment.id, ENTERED + DAY)
    assert (result.purchases_found, result.purchases_updated) == (0, 1)


# --- status changes ------------------------------------------------------------------------


def test_unpaid_payment_paid_in_a_later_run_is_detected(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=None, status=1)

    first = sync(now)
    assert refreshed(entry).certificate_purchased is False
    assert first.skipped_by_reason == {"not_paid": 1}
    watch = PaymentWatch.objects.get(payment_id=payment.id)
    assert (watch.paid, watch.first_seen_at) == (False, now)
    assert watch.recheck_until == now + dt.timedelta(days=30)

    modx_update(payment, status_id=2, paid_at=ENTERED + DAY)
    later = now + dt.timedelta(hours=1)
    second = sync(later)

    assert refreshed(entry).certificate_purchased is True
    assert (second.payments_rechecked, second.purchases_found) == (1, 1)
    watch.refresh_from_db()
    assert watch.paid is True
    assert watch.recheck_until == later + dt.timedelta(days=30)  # refund window restarts


def test_refund_withdraws_the_purchase_and_tells_brevo(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=ENTERED + DAY)
    sync(now)
    entry = refreshed(entry)
    entry.sync_status, entry.synced_revision = SyncStatus.SYNCED, entry.sync_revision
    entry.save()

    modx_update(payment, status_id=4)
    result = sync(now + dt.timedelta(minutes=15))

    entry = refreshed(entry)
    assert entry.certificate_purchased is False
    assert (entry.certificate_purchased_at, entry.payment_id) == (None, None)
    assert entry.sync_status == "pending"
    assert entry.sync_revision == entry.synced_revision + 1
    assert (result.purchases_found, result.purchases_revoked) == (0, 1)
    [item] = items(result)
    assert (item.action, item.source_id, item.entry_id) == ("purchase_revoked", payment.id, entry.id)
    assert PaymentWatch.objects.get(payment_id=payment.id).paid is False


def test_refund_hands_the_purchase_to_another_paid_payment_read_in_the_same_chunk(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    first = pay("ann@example.com", at=ENTERED + DAY)
    second = pay("ann@example.com", at=ENTERED + 2 * DAY)
    sync(now)
    assert refreshed(entry).payment_id == first.id

    modx_update(first, status_id=4)
    result = sync(now + dt.timedelta(minutes=15))

    entry = refreshed(entry)
    assert (entry.payment_id, entry.certificate_purchased_at) == (second.id, ENTERED + 2 * DAY)
    assert (result.purchases_revoked, result.purchases_updated) == (0, 1)


def test_refund_hands_the_purchase_to_a_paid_payment_found_by_email(now):
    buyer = CertUserFactory(email="ann@example.com")
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    first = pay(None, user=buyer, at=ENTERED + DAY)
    second = pay(None, user=buyer, at=ENTERED + 2 * DAY)
    pay(None, user=buyer, at=ENTERED - DAY)  # before entry: never a replacement
    sync(now)

    modx_update(first, status_id=4)
    # One watched payment per chunk: the replacement is not in the refunded one's chunk.
    with CaptureQueriesContext(connections["modx"]) as modx_queries:
        result = sync(now + dt.timedelta(minutes=15), chunk_size=1)

    entry = refreshed(entry)
    assert entry.payment_id == second.id
    assert (result.purchases_revoked, result.purchases_updated) == (0, 1)
    # Only the look-up of the buyer's other paid payments asks for a non-NULL time.
    assert sum("IS NOT NULL" in q["sql"] for q in modx_queries.captured_queries) == 1


def test_payment_removed_from_modx_withdraws_the_purchase(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=ENTERED + DAY)
    sync(now)
    with modx_writes_allowed():
        CertPayment.objects.filter(pk=payment.pk).delete()

    result = sync(now + dt.timedelta(minutes=15))

    assert refreshed(entry).certificate_purchased is False
    assert result.purchases_revoked == 1


def test_payment_time_moved_before_entry_withdraws_the_purchase(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=ENTERED + DAY)
    sync(now)
    modx_update(payment, paid_at=ENTERED - DAY)
    assert sync(now + dt.timedelta(minutes=15)).purchases_revoked == 1
    assert refreshed(entry).certificate_purchased is False


def test_buyer_email_corrected_in_modx_moves_the_purchase(now):
    typo = FunnelEntryFactory(email="ann@exmaple.com", entered_at=ENTERED)
    right = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@exmaple.com", at=ENTERED + DAY)
    sync(now)
    assert refreshed(typo).payment_id == payment.id
    with modx_writes_allowed():
        CertUser.objects.filter(pk=payment.result.user_id).update(email="ann@example.com")

    result = sync(now + dt.timedelta(minutes=15))

    assert refreshed(typo).certificate_purchased is False
    assert refreshed(right).payment_id == payment.id
    assert (result.purchases_found, result.purchases_revoked) == (1, 1)


def test_paid_payment_is_matched_to_an_entry_created_after_it_was_read(now):
    # Entries may lag behind payments (e.g. a backlog of test results): the payment is
    # watched, so the entry is found on a later run.
    payment = pay("ann@example.com", at=ENTERED + DAY)
    first = sync(now)
    assert first.skipped_by_reason == {"no_entry": 1}

    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    second = sync(now + dt.timedelta(minutes=15))

    assert refreshed(entry).payment_id == payment.id
    assert second.purchases_found == 1


def test_watches_expire_and_old_payments_are_not_watched(now, settings):
    settings.FUNNELS_PURCHASE_RECHECK_DAYS = 10
    recent = pay("ann@example.com", at=None, status=1)
    pay("old@example.com", at=now - 11 * DAY)  # paid long ago: settled
    sync(now)
    assert list(PaymentWatch.objects.values_list("payment_id", flat=True)) == [recent.id]

    modx_update(recent, status_id=2, paid_at=now)
    result = sync(now + 10 * DAY)  # the watch has expired: not re-read, and removed
    assert result.payments_rechecked == 0
    assert not PaymentWatch.objects.exists()


# --- bad data ------------------------------------------------------------------------------


def test_bad_rows_wait_or_are_skipped_with_a_reason_and_do_not_stop_the_run(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    missing_result = CertPaymentFactory(result=CertResult(id=10_000_000), paid_at=ENTERED + DAY)
    missing_user = CertPaymentFactory(result__user_id=9_000_001, paid_at=ENTERED + DAY)
    bad_email = pay("not-an-email", at=ENTERED + DAY)
    no_email = pay(None, at=ENTERED + DAY)
    unknown_type = pay("ann@example.com", at=ENTERED + DAY, cert_type=9)
    no_time = pay("ann@example.com", at=None, status=2)
    odd_status = pay("ann@example.com", at=ENTERED + DAY, status=77)
    good = pay("ann@example.com", at=ENTERED + 2 * DAY)

    result = sync(now)

    assert refreshed(entry).payment_id == good.id
    assert result.skipped_by_reason == {"not_paid": 1, "payment_time_missing": 1}
    # MODX may still write the missing rows or correct the email: these wait.
    assert result.waiting_by_reason == {
        "empty_email": 1, "invalid_email": 1, "payment_result_missing": 1,
        "payment_user_missing": 1, "unknown_certificate_type": 1,
    }
    waiting = {i.source_id: i.reason for i in items(result, "waiting")}
    assert waiting == {
        missing_result.id: SkipReason.RESULT_MISSING,
        missing_user.id: SkipReason.USER_MISSING,
        bad_email.id: "invalid_email",
        no_email.id: "empty_email",
        unknown_type.id: SkipReason.UNKNOWN_TYPE,
    }
    assert set(RecheckRow.objects.values_list("modx_id", flat=True)) == set(waiting)
    reasons = {i.source_id: i.reason for i in items(result, "skipped")}
    assert reasons == {no_time.id: SkipReason.TIME_MISSING}
    assert odd_status.id not in reasons  # not paid: counted only
    assert SyncState.objects.get(key=Source.PAYMENTS).last_id == good.id


# --- dry run -------------------------------------------------------------------------------


def test_dry_run_reads_everything_and_writes_only_run_items(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    snapshot = FunnelEntry.objects.values().get(pk=entry.pk)
    payment = pay("ann@example.com", at=ENTERED + DAY)
    before = pay("ann@example.com", at=ENTERED - DAY)
    pay("bob@example.com", at=None, status=1)

    result = sync(now, dry_run=True)

    assert FunnelEntry.objects.values().get(pk=entry.pk) == snapshot
    assert not SyncState.objects.filter(key=Source.PAYMENTS).exists()
    assert not PaymentWatch.objects.exists()
    assert (result.payments_read, result.purchases_found) == (3, 1)
    assert {(i.action, i.reason, i.source_id) for i in items(result)} == {
        ("would_purchase", "", payment.id),
        ("skipped", "purchase_before_entry", before.id),
    }
    # Nothing was written, so a second dry run plans the same.
    assert sync(now, dry_run=True).purchases_found == 1


def test_dry_run_carries_its_plan_across_chunks(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED + DAY)
    pay("ann@example.com", at=ENTERED + 2 * DAY)

    result = sync(now, dry_run=True, chunk_size=1)

    assert result.purchases_found == 1
    assert len(items(result, "would_purchase")) == 1
    assert refreshed(entry).certificate_purchased is False


def test_dry_run_rechecks_watched_payments_without_writing(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=ENTERED + DAY)
    sync(now)
    modx_update(payment, status_id=4)

    result = sync(now + dt.timedelta(minutes=15), dry_run=True)

    assert refreshed(entry).certificate_purchased is True
    assert PaymentWatch.objects.get(payment_id=payment.id).paid is True
    assert result.purchases_revoked == 1
    [item] = items(result)
    assert (item.action, item.reason) == ("skipped", SkipReason.WOULD_REVOKE)


# --- watermark, chunks, queries ------------------------------------------------------------


def test_watermark_is_the_last_payment_read_and_older_payments_are_not_reread(now, settings):
    settings.FUNNELS_PURCHASE_RECHECK_DAYS = 0  # nothing watched: only the watermark counts
    FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payments = [pay("ann@example.com", at=ENTERED + DAY) for _ in range(3)]
    assert sync(now, chunk_size=2).payments_read == 3
    assert SyncState.objects.get(key=Source.PAYMENTS).last_id == payments[-1].id

    newer = pay("bob@example.com", at=ENTERED + DAY)
    result = sync(now + dt.timedelta(minutes=15))
    assert (result.payments_read, result.watermark) == (1, newer.id)
    assert not PaymentWatch.objects.exists()


def test_watermark_moves_with_the_chunk_it_covers(now):
    buyers = [FunnelEntryFactory(email=f"b{n}@example.com", entered_at=ENTERED) for n in range(4)]
    payments = [pay(f"b{n}@example.com", at=ENTERED + DAY) for n in range(4)]
    calls = []

    def lock_check():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("lock lost")

    with pytest.raises(RuntimeError, match="lock lost"):
        sync(now, chunk_size=2, lock=SimpleNamespace(check=lock_check))

    assert SyncState.objects.get(key=Source.PAYMENTS).last_id == payments[1].id
    assert [refreshed(e).certificate_purchased for e in buyers] == [True, True, False, False]
    assert set(PaymentWatch.objects.values_list("payment_id", flat=True)) == {
        payments[0].id, payments[1].id
    }

    result = sync(now + dt.timedelta(minutes=15), chunk_size=2)
    assert result.purchases_found == 2
    assert all(refreshed(e).certificate_purchased for e in buyers)


def test_a_watermark_moved_by_someone_else_rolls_the_chunk_back(now, monkeypatch):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    pay("ann@example.com", at=ENTERED + DAY)
    read = purchases_module.payments_after

    def read_while_another_run_moves_the_watermark(**kwargs):
        rows = read(**kwargs)
        SyncState.objects.filter(key=Source.PAYMENTS).update(last_id=12345)
        return rows

    monkeypatch.setattr(
        purchases_module, "payments_after", read_while_another_run_moves_the_watermark
    )
    with pytest.raises(WatermarkMoved):
        sync(now)

    assert refreshed(entry).certificate_purchased is False
    assert not PaymentWatch.objects.exists()
    assert not SyncRunItem.objects.exists()


def _queries_for_one_chunk(now, *, buyers, offset):
    for n in range(buyers):
        email = f"q{offset + n}@example.com"
        FunnelEntryFactory(email=email, entered_at=ENTERED)
        pay(email, at=ENTERED + DAY)
        pay(email, at=ENTERED - DAY)  # and one before entry, itemised
    with CaptureQueriesContext(connections["default"]) as ours, \
            CaptureQueriesContext(connections["modx"]) as modx_queries:
        result = sync(now, chunk_size=500)
    assert result.purchases_found == buyers
    return len(ours), len(modx_queries)


def test_queries_per_chunk_do_not_grow_with_the_rows_in_it(now, settings):
    settings.FUNNELS_PURCHASE_RECHECK_DAYS = 0  # no re-reads: compare two new-payment runs
    # Both runs find the watermark, neither creates it; it sits right below the payments
    # they read, so that neither passes ids without a row (gaps, re-read by the next run).
    anchor = pay("anchor@example.com", at=ENTERED - 9 * DAY)
    SyncState.objects.create(key=Source.PAYMENTS, last_id=anchor.id)
    few = _queries_for_one_chunk(now, buyers=3, offset=0)
    # 80 run items still fit one INSERT on SQLite (999 parameters): the batches of
    # bulk_create and bulk_update are the only thing that may add a query per chunk.
    many = _queries_for_one_chunk(now, buyers=40, offset=100)
    assert few == many
    # Ours: the run row (the test's own), expired watches, due watches, recheck list,
    # watermark; for the chunk: funnels (read once, when first needed), its watches,
    # entries (one UNION ALL query), savepoint, entries update, the report rollup's dirty
    # days (one INSERT of a few rows), run items, watermark, release. MODX: one query for
    # the single (short) chunk.
    assert few == (14, 1)


def test_queries_grow_with_chunks_not_rows(now, settings):
    settings.FUNNELS_PURCHASE_RECHECK_DAYS = 0
    for n in range(30):
        FunnelEntryFactory(email=f"c{n}@example.com", entered_at=ENTERED)
        pay(f"c{n}@example.com", at=ENTERED + DAY)
    with CaptureQueriesContext(connections["modx"]) as modx_queries:
        result = sync(now, chunk_size=10)
    assert result.purchases_found == 30
    assert len(modx_queries) == 4  # three full chunks and one empty read


def test_entry_lookup_is_one_query_per_chunk(now, settings):
    settings.FUNNELS_PURCHASE_RECHECK_DAYS = 0
    for n in range(40):
        FunnelEntryFactory(email=f"d{n}@example.com", entered_at=ENTERED)
        pay(f"d{n}@example.com", at=ENTERED + DAY)
    run = SyncRunFactory(dry_run=False, started_at=now)
    with CaptureQueriesContext(connections["default"]) as ours:
        purchases_sync(run=run, now=now, chunk_size=20)
    entry_reads = [q for q in ours.captured_queries
                   if q["sql"].lstrip().upper().startswith(("SELECT", "(SELECT"))
                   and "funnel_entries" in q["sql"]]
    assert len(entry_reads) == 2


# --- when watched payments are read again --------------------------------------------------

MINUTE = dt.timedelta(minutes=1)


def watch_of(payment):
    return PaymentWatch.objects.get(payment_id=payment.id)


def test_a_watched_payment_is_read_again_only_when_due_young_ones_often_old_ones_rarely(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=ENTERED + DAY)
    sync(now)
    assert watch_of(payment).next_check_at == now + 10 * MINUTE

    # A manual run minutes after the scheduled one does not read it again ...
    assert sync(now + 5 * MINUTE).payments_rechecked == 0
    # ... the next scheduled run does, and a young watch stays on every run.
    assert sync(now + 15 * MINUTE).payments_rechecked == 1
    assert watch_of(payment).next_check_at == now + 25 * MINUTE
    # Watched for two hours: hourly; for two days: every six hours; a week on: daily.
    for age, every in [(2 * 60 * MINUTE, 60 * MINUTE), (2 * DAY, 6 * 60 * MINUTE),
                       (8 * DAY, DAY)]:
        assert sync(now + age).payments_rechecked == 1
        assert watch_of(payment).next_check_at == now + age + every
        assert sync(now + age + every - MINUTE).payments_rechecked == 0
    assert refreshed(entry).payment_id == payment.id  # nothing changed along the way


def test_a_refund_is_noticed_on_the_first_read_after_it(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=ENTERED + DAY)
    sync(now)
    sync(now + 3 * DAY)  # watched for three days: next read six hours later
    modx_update(payment, status_id=4)

    assert sync(now + 3 * DAY + 5 * 60 * MINUTE).purchases_revoked == 0  # not due yet
    assert refreshed(entry).certificate_purchased is True
    assert sync(now + 3 * DAY + 6 * 60 * MINUTE).purchases_revoked == 1
    assert refreshed(entry).certificate_purchased is False


def test_a_payment_that_turns_paid_is_watched_closely_again(now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    payment = pay("ann@example.com", at=None, status=1)
    sync(now)
    sync(now + 2 * DAY)
    assert watch_of(payment).next_check_at == now + 2 * DAY + 6 * 60 * MINUTE

    modx_update(payment, status_id=2, paid_at=now + 2 * DAY)
    later = now + 2 * DAY + 6 * 60 * MINUTE
    assert sync(later).purchases_found == 1
    assert refreshed(entry).payment_id == payment.id
    # A refund follows the payment: its window and the frequent reads start again.
    watch = watch_of(payment)
    assert (watch.paid, watch.recheck_until) == (True, later + 30 * DAY)
    assert watch.next_check_at == later + 10 * MINUTE


def test_rechecks_are_one_chunk_per_run_most_overdue_first(now):
    payments = [pay(f"b{n}@example.com", at=None, status=1) for n in range(5)]
    sync(now)
    # A row written without a next check (before there was one) is due before any other.
    PaymentWatch.objects.filter(payment_id=payments[3].id).delete()
    PaymentWatch.objects.create(
        payment_id=payments[3].id, paid=False, first_seen_at=now, recheck_until=now + 30 * DAY
    )
    PaymentWatch.objects.filter(payment_id=payments[1].id).update(next_check_at=now)

    order = []
    for minute in (11, 12, 13, 14):
        before = {p.id: watch_of(p).next_check_at for p in payments}
        result = sync(now + minute * MINUTE, chunk_size=2)
        order.append([p.id for p in payments if watch_of(p).next_check_at != before[p.id]])
        assert result.payments_rechecked == len(order[-1])

    ids = [p.id for p in payments]
    assert order == [[ids[1], ids[3]], [ids[0], ids[2]], [ids[4]], []]


def test_a_dry_run_rechecks_what_is_due_and_reschedules_nothing(now):
    payment = pay("ann@example.com", at=None, status=1)
    sync(now)
    PaymentWatch.objects.update(next_check_at=now)

    assert sync(now + MINUTE, dry_run=True).payments_rechecked == 1
    assert sync(now + MINUTE, dry_run=True).payments_rechecked == 1
    assert watch_of(payment).next_check_at == now


def test_an_expired_watch_is_not_reread_by_a_dry_run(now, settings):
    settings.FUNNELS_PURCHASE_RECHECK_DAYS = 10
    pay("ann@example.com", at=None, status=1)
    sync(now)
    assert sync(now + 10 * DAY, dry_run=True).payments_rechecked == 0
    assert PaymentWatch.objects.count() == 1  # a dry run deletes nothing either


def test_refunds_of_payments_far_apart_reach_their_entries_and_no_other(now):
    cert_test = CertTestFactory(type=CERT_TYPE_LANGUAGE)

    def pay_as(payment_id, email):
        return CertPaymentFactory(
            id=payment_id, result__user__email=email, result__test=cert_test,
            paid_at=ENTERED + DAY,
        )

    far_apart = [pay_as(n, f"r{n}@example.com") for n in (10, 20_000, 90_000)]
    between = pay_as(50_000, "kept@example.com")
    entries = [FunnelEntryFactory(email=f"r{n}@example.com", entered_at=ENTERED)
               for n in (10, 20_000, 90_000)]
    kept = FunnelEntryFactory(email="kept@example.com", entered_at=ENTERED)
    sync(now)
    assert all(refreshed(e).certificate_purchased for e in [*entries, kept])
    PaymentWatch.objects.filter(payment_id=between.id).update(next_check_at=now + DAY)
    for payment in far_apart:
        modx_update(payment, status_id=4)

    result = sync(now + 15 * MINUTE)

    assert (result.payments_rechecked, result.purchases_revoked) == (3, 3)
    assert not any(refreshed(e).certificate_purchased for e in entries)
    assert refreshed(kept).payment_id == between.id


@pytest.mark.parametrize(("ids", "most", "expected"), [
    ([], 3, []),
    ([7], 1, [(7, 7)]),
    ([5, 1, 3, 2, 4, 3], 3, [(1, 5)]),  # consecutive ids are never cut apart
    ([1, 2, 3, 10, 11, 50], 1, [(1, 50)]),
    ([1, 2, 3, 10, 11, 50], 2, [(1, 11), (50, 50)]),
    ([1, 2, 3, 10, 11, 50], 3, [(1, 3), (10, 11), (50, 50)]),
    ([1, 2, 3, 10, 11, 50], 9, [(1, 3), (10, 11), (50, 50)]),
])
def test_id_ranges_cover_every_id_and_cut_at_the_widest_gaps(ids, most, expected):
    assert id_ranges(ids, most=most) == expected


# --- a run with nothing to do ----------------------------------------------------------------


def _tables_read_whole(alias, queries):
    """Tables that a captured query reads from end to end, by the database's own plan."""
    connection = connections[alias]
    whole = set()
    with connection.cursor() as cursor:
        for query in queries:
            sql = query["sql"]
            if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
                continue
            if connection.vendor == "sqlite":
                cursor.execute("EXPLAIN QUERY PLAN " + sql)
                for *_, detail in cursor.fetchall():
                    # "SCAN t" or "SCAN t USING INDEX i" read all of t; "SEARCH" does not.
                    if detail.startswith("SCAN "):
                        whole.add(detail.split()[1])
            else:
                cursor.execute("EXPLAIN " + sql)
                names = [c[0] for c in cursor.description]
                for row in cursor.fetchall():
                    plan = dict(zip(names, row))
                    if str(plan["type"]).upper() in {"ALL", "INDEX"}:
                        whole.add(plan["table"])
    return whole


def _grow_tables(count, *, now, first_id):
    """`count` more entries (every other one converted), MODX payments behind the watermark
    and watched payments, none of them due: rows that an idle run must not pay for."""
    cert_test = CertTestFactory(type=CERT_TYPE_LANGUAGE)
    ids = range(first_id, first_id + count)
    with modx_writes_allowed():  # relating built MODX rows asks the router for a write
        users = [CertUserFactory.build(id=n, email=f"big{n}@example.com") for n in ids]
        results = [CertResultFactory.build(id=n, user=u, test=cert_test)
                   for n, u in zip(ids, users)]
        payments = [CertPaymentFactory.build(id=n, result=r, paid_at=ENTERED + DAY)
                    for n, r in zip(ids, results)]
        for model, rows in [(CertUser, users), (CertResult, results), (CertPayment, payments)]:
            model.objects.using("modx").bulk_create(rows, batch_size=200)
    FunnelEntry.objects.bulk_create([
        FunnelEntryFactory.build(
            email=f"big{n}@example.com", entered_at=ENTERED,
            certificate_purchased=n % 2 == 0, payment_id=n if n % 2 == 0 else None,
            certificate_purchased_at=ENTERED + DAY if n % 2 == 0 else None,
        )
        for n in ids
    ], batch_size=200)
    PaymentWatch.objects.bulk_create([
        PaymentWatch(payment_id=n, paid=True, first_seen_at=now - DAY,
                     recheck_until=now + 29 * DAY, next_check_at=now + (n % 60 + 1) * MINUTE)
        for n in ids
    ], batch_size=200)
    SyncState.objects.update_or_create(
        key=Source.PAYMENTS, defaults={"last_id": first_id + count - 1}
    )


def _idle_run(now):
    run = SyncRunFactory(dry_run=False, started_at=now)
    with CaptureQueriesContext(connections["default"]) as ours, \
            CaptureQueriesContext(connections["modx"]) as modx_queries:
        result = purchases_sync(run=run, now=now, chunk_size=100)
    assert (result.payments_read, result.payments_rechecked) == (0, 0)
    return ours.captured_queries, modx_queries.captured_queries


def test_a_run_with_nothing_to_do_costs_the_same_few_queries_whatever_the_table_sizes(now):
    _grow_tables(10, now=now, first_id=1)
    small = _idle_run(now)
    _grow_tables(990, now=now, first_id=11)
    assert (FunnelEntry.objects.count(), PaymentWatch.objects.count()) == (1000, 1000)
    large = _idle_run(now)

    def shapes(queries):
        return [q["sql"].split(" WHERE ")[0] for q in queries]

    assert [shapes(q) for q in large] == [shapes(q) for q in small]
    ours, modx_queries = large
    # Ours: expired watches deleted, due watches (none), the recheck list (empty), the
    # watermark. MODX: new payments (none). Neither the entries nor the funnels are asked
    # about.
    assert (len(ours), len(modx_queries)) == (4, 1)
    assert not any("funnel_entries" in q["sql"] for q in ours)
    assert _tables_read_whole("default", ours) == set()
    assert _tables_read_whole("modx", modx_queries) == set()


# --- payments committed late, below the watermark ----------------------------------------


@pytest.fixture
def payment_gap(now):
    """A run has read past a payment id whose row was not visible yet."""
    anchor = pay("anchor@example.com", at=ENTERED - 9 * DAY)
    SyncState.objects.create(key=Source.PAYMENTS, last_id=anchor.id)
    CertPaymentFactory(id=anchor.id + 2, result__user__email="bob@example.com",
                       result__test__type=CERT_TYPE_LANGUAGE, paid_at=ENTERED + DAY)
    assert sync(now).payments_read == 1
    return anchor.id + 1


def _gaps():
    return watermark_state_get(key=Source.PAYMENTS).gaps


def _late_payment(payment_id, email="ann@example.com"):
    return CertPaymentFactory(id=payment_id, result__user__email=email,
                              result__test__type=CERT_TYPE_LANGUAGE, paid_at=ENTERED + DAY)


def test_a_payment_committed_late_is_applied_by_the_next_run_once(payment_gap, now):
    assert _gaps() == {payment_gap: now}
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    _late_payment(payment_gap)

    result = sync(now + 15 * MINUTE)

    # Read: bob's payment, watched and due again, and the one that appeared.
    assert (result.payments_read, result.payments_rechecked, result.purchases_found) == (2, 1, 1)
    entry = refreshed(entry)
    assert (entry.certificate_purchased, entry.payment_id) == (True, payment_gap)
    assert _gaps() == {}
    # Seen now, like a new payment: watched from here on for a refund.
    assert PaymentWatch.objects.filter(payment_id=payment_gap, paid=True).exists()
    again = sync(now + 30 * MINUTE)
    assert (again.purchases_found, again.purchases_updated) == (0, 0)
    assert SyncRunItem.objects.filter(source_id=payment_gap, action="purchase").count() == 1


def test_a_dry_run_reads_payment_gaps_and_writes_nothing(payment_gap, now):
    entry = FunnelEntryFactory(email="ann@example.com", entered_at=ENTERED)
    _late_payment(payment_gap)
    stored = list(SyncState.objects.values_list("last_id", "gaps"))

    result = sync(now + 15 * MINUTE, dry_run=True)

    assert result.purchases_found == 1
    [item] = items(result, "would_purchase")
    assert item.source_id == payment_gap
    assert refreshed(entry).certificate_purchased is False
    assert list(SyncState.objects.values_list("last_id", "gaps")) == stored
    assert not PaymentWatch.objects.filter(payment_id=payment_gap).exists()


def test_a_payment_gap_is_dropped_after_the_grace_period(payment_gap, now, settings):
    settings.FUNNELS_WATERMARK_GAP_GRACE_MINUTES = 60
    sync(now + 60 * MINUTE)
    assert _gaps() == {payment_gap: now}
    with CaptureQueriesContext(connections["modx"]) as modx_queries:
        sync(now + 61 * MINUTE)
    assert _gaps() == {}
    assert sum(" IN (" in q["sql"] for q in modx_queries.captured_queries) == 1
    with CaptureQueriesContext(connections["modx"]) as modx_queries:
        sync(now + 75 * MINUTE)
    assert not any(" IN (" in q["sql"] for q in modx_queries.captured_queries)
