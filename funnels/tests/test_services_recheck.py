"""Rows that change after the first read: results and payments that could not be decided
wait on a recheck list and are decided like new rows once MODX completes or corrects them;
rows that never become decidable are dropped after the period, with the reason."""

import datetime as dt

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from funnels.models import FunnelEntry, RecheckRow, SyncRun, SyncRunItem
from funnels.modx import models as modx
from funnels.modx.digests import digests_supported
from funnels.services.recheck import RecheckList, Waiter, Waiting
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
)
from funnels.tests.sync_support import (
    LANG_TEST,
    LANGUAGE_LIST,
    OTHER_LIST,
    OTHER_TEST,
    modx_result,
    run_live,
)
from funnels.routers import modx_writes_allowed

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

MINUTE = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)


def modx_set(row, **fields):
    """MODX completes or corrects a row after we first read it."""
    with modx_writes_allowed():
        type(row).objects.using("modx").filter(pk=row.pk).update(**fields)


def waiting(source="test_results"):
    return dict(RecheckRow.objects.filter(source=source).values_list("modx_id", "reason"))


@pytest.fixture
def world(configured, live_settings, client_factory, fake_brevo, now):
    """A first run has read one good result; later rows are new to the watermark."""
    modx_result("first@example.com", LANG_TEST, completed_at=now - DAY)
    run = run_live(client_factory, now=now)
    assert run.entries_added == 1
    return run


def later_run(client_factory, now, minutes, **kwargs):
    run = run_live(client_factory, now=now + minutes * MINUTE, **kwargs)
    assert run.status in (SyncRun.Status.SUCCESS, SyncRun.Status.HELD), run.error
    return run


# --- results -----------------------------------------------------------------------------


def _light_prints(source, ids) -> dict[int, str]:
    """The fingerprints of the light read (what a recheck compares), by id."""
    return {i: fingerprint for i, (fingerprint, _) in
            source.light_by_ids(ids=ids, digest=False).items()}


@pytest.mark.parametrize(
    "before, after, reason",
    [
        ({"email": None}, {"email": "filled@example.com"}, "empty_email"),
        ({"email": "typo@example"}, {"email": "typo@example.com"}, "invalid_email"),
        ({"completed_at": None}, {}, "no_completion_time"),
        ({"test_id": None}, {"test_id": OTHER_TEST}, "no_test_id"),
    ],
    ids=["email filled in", "email corrected", "completion time set", "test id set"],
)
def test_a_result_completed_or_corrected_later_is_entered_with_its_own_time(
    world, client_factory, fake_brevo, now, before, after, reason
):
    done = now - 2 * MINUTE
    fields = {"email": "person@example.com", "test_id": OTHER_TEST, "completed_at": done}
    row = modx_result(**{**fields, **before})
    run = later_run(client_factory, now, 15)
    assert run.waiting_by_reason == {reason: 1}
    assert waiting() == {row.id: reason}
    assert not FunnelEntry.objects.filter(user_id=row.id).exists()

    # Unchanged: the next run re-reads it and writes nothing.
    idle = later_run(client_factory, now, 30)
    assert (idle.results_read, idle.entries_added, idle.waiting_by_reason) == (0, 0, {})

    modx_set(row, **{**fields, **after})
    fixed = later_run(client_factory, now, 45)
    assert (fixed.results_read, fixed.entries_added) == (1, 1)
    entry = FunnelEntry.objects.get(user_id=row.id)
    assert entry.entered_at == done  # its own completion time, not the run's
    assert entry.funnel_type == "non_language"
    assert waiting() == {}
    assert entry.email in fake_brevo.list_members(OTHER_LIST)
    # Said once each: when it started waiting and when it was added.
    actions = list(SyncRunItem.objects.filter(source_id=row.id).values_list("action", flat=True))
    assert sorted(actions) == ["added", "waiting"]


def test_a_reason_that_changes_is_said_again_and_the_period_does_not_restart(
    world, client_factory, now
):
    row = modx_result(None, OTHER_TEST, completed_at=None)
    later_run(client_factory, now, 15)
    first_seen = RecheckRow.objects.get().first_seen_at
    modx_set(row, email="half@example.com")
    run = later_run(client_factory, now, 30)
    assert run.waiting_by_reason == {"no_completion_time": 1}
    stored = RecheckRow.objects.get()
    assert (stored.reason, stored.email, stored.first_seen_at) == (
        "no_completion_time", "half@example.com", first_seen
    )


def test_a_future_date_waits_until_its_time_comes(world, client_factory, fake_brevo, now):
    soon = now + 3 * 60 * MINUTE
    row = modx_result("early@example.com", OTHER_TEST, completed_at=soon)
    run = later_run(client_factory, now, 15)
    assert run.waiting_by_reason == {"completed_in_future": 1}
    assert later_run(client_factory, now, 60).entries_added == 0
    # Nothing in MODX changed: the clock alone makes it decidable.
    arrived = later_run(client_factory, now, 3 * 60 + 15)
    assert arrived.entries_added == 1
    assert FunnelEntry.objects.get(user_id=row.id).entered_at == soon
    assert waiting() == {}


def test_a_future_date_corrected_in_modx_is_entered(world, client_factory, now):
    row = modx_result("typo@example.com", LANG_TEST, completed_at=now + 365 * DAY)
    later_run(client_factory, now, 15)
    modx_set(row, completed_at=now - MINUTE)
    assert later_run(client_factory, now, 30).entries_added == 1


def test_a_result_that_never_becomes_valid_is_dropped_after_the_period_with_its_reason(
    world, client_factory, fake_brevo, now, settings
):
    settings.FUNNELS_RECHECK_DAYS = 30
    row = modx_result("never@example.com", OTHER_TEST, completed_at=now + 400 * DAY)
    later_run(client_factory, now, 15)
    assert RecheckRow.objects.get().recheck_until == now + 15 * MINUTE + 30 * DAY
    still = later_run(client_factory, now, 30 * 24 * 60)  # 14 minutes short of the end
    assert waiting() == {row.id: "completed_in_future"}
    assert still.skipped_by_reason == {}
    dropped = later_run(client_factory, now, 30 * 24 * 60 + 15)
    assert waiting() == {}
    assert dropped.skipped_by_reason == {"recheck_expired": 1}
    item = SyncRunItem.objects.get(run=dropped, source_id=row.id)
    assert (item.action, item.reason) == ("skipped", "recheck_expired")
    assert "completed_in_future" in item.detail
    # Dropped means dropped: a later correction is not looked at any more.
    modx_set(row, completed_at=now)
    assert later_run(client_factory, now, 30 * 24 * 60 + 30).entries_added == 0
    assert not FunnelEntry.objects.filter(user_id=row.id).exists()


def test_a_waiting_row_deleted_in_modx_leaves_the_list(world, client_factory, now):
    row = modx_result("", OTHER_TEST)
    later_run(client_factory, now, 15)
    with modx_writes_allowed():
        modx.TestResult.objects.using("modx").filter(pk=row.pk).delete()
    run = later_run(client_factory, now, 30)
    assert waiting() == {}
    assert run.skipped_by_reason == {}  # nothing to say about a row that is gone


def test_the_list_is_bounded_oldest_first(world, client_factory, now, settings):
    settings.FUNNELS_RECHECK_MAX_ROWS = 3
    old = [modx_result(f"old{n}@", OTHER_TEST) for n in range(2)]
    later_run(client_factory, now, 15)
    new = [modx_result(f"new{n}@", OTHER_TEST) for n in range(2)]
    run = later_run(client_factory, now, 30)
    assert set(waiting()) == {old[1].id, *(r.id for r in new)}
    assert run.skipped_by_reason == {"recheck_list_full": 1}


def test_a_dry_run_reads_the_list_and_writes_none_of_it(world, client_factory, now):
    row = modx_result(None, OTHER_TEST)
    later_run(client_factory, now, 15)
    modx_set(row, email="fixed@example.com")
    stored = RecheckRow.objects.values_list("fingerprint", "digest").get()
    dry = later_run(client_factory, now, 30, dry_run=True)
    assert dry.entries_added == 1  # "would add"
    assert waiting() == {row.id: "empty_email"}
    assert RecheckRow.objects.values_list("fingerprint", "digest").get() == stored
    assert not FunnelEntry.objects.filter(user_id=row.id).exists()
    assert later_run(client_factory, now, 45).entries_added == 1


def test_an_idle_run_with_rows_waiting_costs_the_same_queries_as_with_few(
    world, client_factory, now
):
    def idle_queries():
        with CaptureQueriesContext(connections["default"]) as ours, \
                CaptureQueriesContext(connections["modx"]) as theirs:
            run = later_run(client_factory, now, 60)
        assert (run.results_read, run.entries_added) == (0, 0)
        return len(ours), len(theirs)

    modx_result(None, OTHER_TEST)
    later_run(client_factory, now, 15)
    few = idle_queries()
    for n in range(300):
        modx_result(f"bad{n}@", OTHER_TEST)
    later_run(client_factory, now, 30)
    assert RecheckRow.objects.count() == 301
    assert idle_queries() == few


def test_the_light_read_and_the_whole_read_give_one_fingerprint(configured, now):
    """An idle run compares fingerprints of the rows as the MODX cursor returns them; the
    list stores fingerprints of rows read whole through the ORM (aware times). If the two
    ever differed, every waiting row would be read whole and decided again on every run."""
    from funnels.selectors.candidates import KindResolver, candidates_by_ids
    from funnels.selectors.payments import payments_by_ids
    from funnels.services.purchases import _PurchaseRun
    from funnels.services.results import ResultSource

    results = [
        modx_result("Some.One@Example.com ", LANG_TEST, completed_at=now - MINUTE),
        modx_result(None, OTHER_TEST, completed_at=None),
        modx_result("x@", None, completed_at=now + DAY),
    ]
    payments = [
        _payment(at=now - MINUTE),
        _payment(email="broken@", cert_type=9, at=None),
        CertPaymentFactory(result=modx.CertResult(id=7_000_002), paid_at=now),
    ]
    dry = SyncRun(dry_run=True)
    source = ResultSource(run=dry, planner=None, guard=None, now=now, since=now.date())
    ids = [r.pk for r in results]
    whole = {row.result_id: source.fingerprint(row)
             for row in candidates_by_ids(ids=ids, kinds=KindResolver())}
    assert _light_prints(source, ids) == whole
    assert len(set(whole.values())) == 3

    buyers = _PurchaseRun(run=dry, now=now, chunk_size=10, lock=None)
    ids = [p.pk for p in payments]
    whole = {row.payment_id: buyers.fingerprint(row)
             for row in payments_by_ids(payment_ids=ids)}
    assert _light_prints(buyers, ids) == whole
    assert len(set(whole.values())) == 3


def _reads_by_id(queries, table):
    """How often each MODX id was asked for by primary key: in an IN list, or in the JSON
    array of ids an idle run's sum check sends (funnels/modx/digests.py)."""
    import re

    reads = {}
    for query in queries:
        if table not in query["sql"]:
            continue
        lists = re.findall(r"IN \(([\d, ]+)\)", query["sql"])
        lists += re.findall(r"JSON_TABLE\('\[([\d, ]+)\]'", query["sql"])
        for listed in lists:
            for modx_id in map(int, listed.split(", ")):
                reads[modx_id] = reads.get(modx_id, 0) + 1
    return reads


def test_an_idle_run_reads_unchanged_waiting_rows_only_lightly(world, client_factory, now):
    """Nothing changed: each waiting row is read back once by primary key (on MariaDB in
    the sum check, one row back for the list; on SQLite lightly, row by row), and none
    whole. One row changed: it alone is read whole as well, and entered (on MariaDB, the
    differing sum makes the run read the list lightly too, to find which row)."""
    for n in range(20):
        modx_result(f"bad{n}@", OTHER_TEST)
    later_run(client_factory, now, 15)
    waiting_ids = set(waiting())
    assert len(waiting_ids) == 20
    summed = 1 if digests_supported() else 0

    def reads_per_waiting_row(minutes):
        with CaptureQueriesContext(connections["modx"]) as theirs:
            run = later_run(client_factory, now, minutes)
        reads = _reads_by_id(theirs.captured_queries, "simpletest_users")
        return run, {modx_id: reads.get(modx_id, 0) for modx_id in waiting_ids}

    run, reads = reads_per_waiting_row(30)
    assert (run.results_read, run.entries_added) == (0, 0)
    assert set(reads.values()) == {1}
    fixed = min(waiting_ids)
    modx_set(modx.TestResult(pk=fixed), email="fixed@example.com")
    run, reads = reads_per_waiting_row(45)
    assert (run.results_read, run.entries_added) == (1, 1)
    assert reads.pop(fixed) == 2 + summed
    assert set(reads.values()) == {1 + summed}
    assert set(waiting()) == waiting_ids - {fixed}


def test_an_idle_run_asks_modx_for_one_sum_per_list_and_reads_no_row(
    world, client_factory, now
):
    """The run that puts rows on the list stores MODX's digest of each; the next run with
    nothing changed sends the ids once, gets one row (count and sum) back per list, and
    writes nothing."""
    if not digests_supported():
        pytest.skip("MODX's database computes no digests (SQLite): rows are read lightly")
    for n in range(30):
        modx_result(f"bad{n}@", OTHER_TEST)
    _payment(email="broken@", at=now - MINUTE)
    later_run(client_factory, now, 15)
    stored = list(RecheckRow.objects.values_list("digest", flat=True))
    assert len(stored) == 31 and None not in stored
    with CaptureQueriesContext(connections["modx"]) as theirs, \
            CaptureQueriesContext(connections["default"]) as ours:
        run = later_run(client_factory, now, 30)
    assert run.results_read == 0
    rechecks = [q["sql"] for q in theirs.captured_queries if "JSON_TABLE" in q["sql"]]
    assert len(rechecks) == 2
    assert all(sql.startswith("SELECT COUNT(*), SUM(CRC32(") for sql in rechecks)
    # Each listed row asked for once, in the sum check (no light read by an IN list), and
    # nothing written to the list.
    for table, source in (("simpletest_users", "test_results"), ("modx_cert_payment", "payments")):
        reads = _reads_by_id(theirs.captured_queries, table)
        assert {reads.get(modx_id) for modx_id in waiting(source)} == {1}
    assert not [q for q in ours.captured_queries
                if "funnels_recheckrow" in q["sql"] and not q["sql"].startswith("SELECT")]


@pytest.mark.parametrize(
    "before, after",
    [
        ({"email": "bad@"}, {"email": "BAD@"}),
        ({"email": "bad@"}, {"email": "bad@ "}),
        ({"email": None}, {"email": ""}),
        ({"email": "bad@", "completed_at": "now"}, {"completed_at": "a second later"}),
        ({"email": "bad@", "test_id": None}, {"test_id": OTHER_TEST}),
    ],
    ids=["case of the email", "trailing space", "NULL to empty", "time by a second",
         "test id set"],
)
def test_every_change_of_a_waiting_row_is_noticed(
    world, client_factory, now, before, after
):
    """Changes a collation would call equal, NULL against empty, a second's difference:
    the next run reads the row again and keeps what it read (on MariaDB this is the sum
    check noticing the change)."""
    from funnels.selectors.candidates import candidates_columns_by_ids

    times = {"now": now - MINUTE, "a second later": now - MINUTE + dt.timedelta(seconds=1)}

    def fields(values):
        return {k: times.get(v, v) if k == "completed_at" else v for k, v in values.items()}

    row = modx_result(**{"email": "bad@", "test_id": OTHER_TEST, **fields(before)})
    later_run(client_factory, now, 15)
    first = RecheckRow.objects.get(modx_id=row.id)
    modx_set(row, **fields(after))
    later_run(client_factory, now, 30)
    now_waiting = RecheckRow.objects.get(modx_id=row.id)
    source = _results_source(now)
    assert now_waiting.fingerprint == _light_prints(source, [row.id])[row.id]
    if before == {"email": None}:
        # The fingerprint takes NULL and '' alike (nothing to decide again); the digest
        # does not, and is brought up to date.
        assert now_waiting.fingerprint == first.fingerprint
    else:
        assert now_waiting.fingerprint != first.fingerprint
    if digests_supported():
        (*_, digest), = candidates_columns_by_ids(ids=[row.id], digest=True)
        assert (now_waiting.digest, first.digest != digest) == (digest, True)
        # ... and the run after that finds the sums equal again.
        with CaptureQueriesContext(connections["modx"]) as theirs:
            later_run(client_factory, now, 45)
        assert _reads_by_id(theirs.captured_queries, "simpletest_users")[row.id] == 1


def test_two_waiting_rows_that_swap_values_are_both_noticed(world, client_factory, now):
    a = modx_result("first@", OTHER_TEST)
    b = modx_result("second@", OTHER_TEST)
    later_run(client_factory, now, 15)
    before = dict(RecheckRow.objects.values_list("modx_id", "fingerprint"))
    modx_set(a, email="second@")
    modx_set(b, email="first@")
    later_run(client_factory, now, 30)
    after = dict(RecheckRow.objects.values_list("modx_id", "fingerprint"))
    assert after == {a.id: before[b.id], b.id: before[a.id]}


def test_an_unchanged_row_is_dropped_at_the_end_of_its_period(
    world, client_factory, now, settings
):
    """A reason the clock cannot lift, nothing changed in MODX: the row still leaves the
    list when its period is over (on MariaDB, with the sums equal)."""
    settings.FUNNELS_RECHECK_DAYS = 30
    row = modx_result("person@example.com", None)
    other = modx_result("", OTHER_TEST)
    later_run(client_factory, now, 15)
    assert later_run(client_factory, now, 30 * 24 * 60).skipped_by_reason == {}
    with modx_writes_allowed():
        modx.TestResult.objects.using("modx").filter(pk=other.pk).delete()
    modx_result("late@", OTHER_TEST)  # put on the list now: it stays
    dropped = later_run(client_factory, now, 30 * 24 * 60 + 15)
    assert dropped.skipped_by_reason == {"recheck_expired": 1}
    item = SyncRunItem.objects.get(run=dropped, reason="recheck_expired")
    assert (item.source_id, item.detail.endswith("no_test_id")) == (row.id, True)
    assert list(waiting().values()) == ["invalid_email"]


def _results_source(now):
    from funnels.services.results import ResultSource

    return ResultSource(run=SyncRun(dry_run=True), planner=None, guard=None, now=now,
                        since=now.date())


# --- payments ----------------------------------------------------------------------------


@pytest.fixture
def buyer(world, now):
    """first@example.com entered the language funnel a day ago."""
    return FunnelEntry.objects.get(email="first@example.com")


def _payment(*, email="first@example.com", cert_type=modx.CERT_TYPE_LANGUAGE, at):
    return CertPaymentFactory(
        result=CertResultFactory(user=CertUserFactory(email=email),
                                 test=CertTestFactory(type=cert_type)),
        status_id=modx.PAYMENT_STATUS_PAID, paid_at=at,
    )


def test_a_payment_whose_buyer_email_is_fixed_is_matched(buyer, client_factory, now):
    payment = _payment(email="first@example", at=now - MINUTE)
    run = later_run(client_factory, now, 15)
    assert run.waiting_by_reason == {"payment:invalid_email": 1}
    with modx_writes_allowed():
        modx.CertUser.objects.using("modx").filter(pk=payment.result.user_id).update(
            email=" First@Example.com "
        )
    fixed = later_run(client_factory, now, 30)
    assert fixed.purchases_found == 1
    buyer.refresh_from_db()
    assert (buyer.certificate_purchased, buyer.payment_id) == (True, payment.id)
    assert waiting("payments") == {}


def test_a_payment_whose_result_row_appears_later_is_matched(buyer, client_factory, now):
    user = CertUserFactory(email="first@example.com")
    test = CertTestFactory(type=modx.CERT_TYPE_LANGUAGE)
    payment = CertPaymentFactory(result=modx.CertResult(id=7_000_001), paid_at=now - MINUTE)
    run = later_run(client_factory, now, 15)
    assert run.waiting_by_reason == {"payment:payment_result_missing": 1}
    CertResultFactory(id=7_000_001, user=user, test=test)
    assert later_run(client_factory, now, 30).purchases_found == 1
    buyer.refresh_from_db()
    assert buyer.payment_id == payment.id


def test_a_payment_whose_type_becomes_known_is_matched(buyer, client_factory, now):
    payment = _payment(cert_type=9, at=now - MINUTE)
    run = later_run(client_factory, now, 15)
    assert run.waiting_by_reason == {"payment:unknown_certificate_type": 1}
    with modx_writes_allowed():
        modx.CertTest.objects.using("modx").filter(pk=payment.result.test_id).update(
            type=modx.CERT_TYPE_LANGUAGE
        )
    assert later_run(client_factory, now, 30).purchases_found == 1
    assert waiting("payments") == {}


def test_a_payment_waiting_for_its_type_is_matched_when_a_funnel_takes_the_type(
    buyer, client_factory, now
):
    """Nothing changes in MODX: the operator sets the funnel's certificate type in the
    admin, and the next run decides the waiting payment again."""
    from funnels.models import Funnel

    payment = _payment(cert_type=9, at=now - MINUTE)
    assert later_run(client_factory, now, 15).waiting_by_reason == {
        "payment:unknown_certificate_type": 1
    }
    assert later_run(client_factory, now, 30).purchases_found == 0
    Funnel.objects.filter(slug="language").update(certificate_type=9)
    assert later_run(client_factory, now, 45).purchases_found == 1
    buyer.refresh_from_db()
    assert buyer.payment_id == payment.id
    assert waiting("payments") == {}


def test_an_old_broken_payment_is_history_not_a_waiting_row(buyer, client_factory, now):
    _payment(email="first@example", at=now - 400 * DAY)
    run = later_run(client_factory, now, 15)
    assert run.waiting_by_reason == {}
    assert run.skipped_by_reason == {"payment:invalid_email": 1}


# --- the list's own rules (no database) --------------------------------------------------


def _waiter(modx_id, *, reason="empty_email", seen, days=30):
    return Waiter(modx_id=modx_id, reason=reason, email="", fingerprint="f",
                  first_seen_at=seen, recheck_until=seen + days * DAY)


def test_an_unchanged_row_is_decided_again_only_for_a_clock_reason(now):
    rows = {1: _waiter(1, seen=now), 2: _waiter(2, reason="completed_in_future", seen=now)}
    listed = RecheckList(source="s", rows=rows, period=30 * DAY, limit=10,
                         clock_reasons=frozenset({"completed_in_future"}))
    assert not listed.needs_decision(modx_id=1, fingerprint="f")
    assert listed.needs_decision(modx_id=1, fingerprint="g")
    assert listed.needs_decision(modx_id=2, fingerprint="f")
    assert listed.needs_decision(modx_id=3, fingerprint="f")  # not on the list


def test_plan_keeps_the_first_seen_time_and_says_only_new_reasons(now):
    listed = RecheckList(source="s", rows={1: _waiter(1, seen=now - DAY)}, period=30 * DAY,
                         limit=10)
    changes = listed.plan(
        decided=[], now=now,
        waiting={1: (Waiting("empty_email", email="x"), "g"), 2: (Waiting("no_test_id"), "h")},
    )
    assert changes.upsert[1].first_seen_at == now - DAY
    assert changes.upsert[2].first_seen_at == now
    assert [w.modx_id for w in changes.newly_waiting] == [2]
