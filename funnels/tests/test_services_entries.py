import datetime as dt
from types import SimpleNamespace

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from funnels.codes import SkipReason, Source
from funnels.locks import RunLockLost
from funnels.models import Funnel, FunnelEntry, RecheckRow, SyncRun, SyncRunItem, SyncState
from funnels.selectors.candidates import (
    KindResolver,
    candidates_by_ids,
    candidates_chunk,
)
from funnels.selectors.funnels import (
    WatermarkState,
    funnel_list_id,
    funnels_all,
    watermark_state_get,
)
from funnels.services.entries import EntryPlanner
from funnels.services.flood_guard import FloodGuard
from funnels.services.modx_reader import ModxReader
from funnels.services.results import ResultSource
from funnels.services.watermarks import (
    WatermarkMoved,
    watermark_advance,
    watermark_after_gap_reads,
    watermark_after_new_rows,
)
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory
from funnels.tests.sync_support import (
    LANG_TEST,
    LANG_TEST_2,
    OTHER_TEST,
    modx_result,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])


class _Lock:
    def __init__(self, *, lost: bool = False) -> None:
        self.lost = lost
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.lost:
            raise RunLockLost("lost")


def _planner() -> EntryPlanner:
    funnels = funnels_all()
    list_ids = {f.slug: funnel_list_id(funnel=f) for f in funnels}
    return EntryPlanner(funnels=funnels, list_ids=list_ids)


def _move(candidates, *, after_id, now):
    """The watermark move a run makes for this chunk (from the stored state, if any)."""
    state = watermark_state_get(key=Source.RESULTS) or WatermarkState(
        key=Source.RESULTS, last_id=after_id, stored=False
    )
    return watermark_after_new_rows(state=state, ids=[c.result_id for c in candidates], now=now)


def _commit(*, run, candidates, now, move, lock, planner=None):
    """One chunk through the MODX reader, as a run commits it; what the source counted."""
    source = ResultSource(
        run=run, planner=planner or _planner(), guard=FloodGuard(limit=0),
        now=now, since=now.date(),
    )
    reader = ModxReader(source=source, run=run, now=now, chunk_size=1000, lock=lock)
    reader.commit(candidates, move=move)
    return SimpleNamespace(
        added=source.added, skipped_by_reason=source.skipped,
        last_id=candidates[-1].result_id if candidates else 0,
        waiting=reader.result.waiting_by_reason,
    )


def _process(now, *, dry_run=False, planner=None, lock=None, after_id=0, limit=1000):
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, dry_run=dry_run, finished_at=None)
    candidates = candidates_chunk(after_id=after_id, limit=limit, kinds=KindResolver())
    outcome = _commit(
        run=run, candidates=candidates, now=now, planner=planner,
        lock=lock or _Lock(), move=_move(candidates, after_id=after_id, now=now),
    )
    return run, outcome


def _skips(run):
    return sorted(
        SyncRunItem.objects.filter(run=run, action="skipped").values_list("reason", flat=True)
    )


def test_both_funnels_are_filled_by_test_kind(configured, now):
    lang = modx_result("anna@example.com", LANG_TEST)
    other = modx_result("boris@example.com", OTHER_TEST)
    run, outcome = _process(now)
    assert outcome.added == 2
    entries = {e.funnel_type: e for e in FunnelEntry.objects.all()}
    assert entries["language"].email == "anna@example.com"
    assert entries["language"].user_id == lang.id
    assert entries["language"].test_id == LANG_TEST
    assert entries["non_language"].email == "boris@example.com"
    assert entries["non_language"].test_id == OTHER_TEST
    assert entries["non_language"].user_id == other.id
    assert {e.sync_status for e in entries.values()} == {"pending"}
    assert {e.run_id for e in entries.values()} == {run.id}
    added = SyncRunItem.objects.filter(run=run, action="added")
    assert {i.entry_id for i in added} == {e.id for e in entries.values()}


def test_invalid_and_empty_emails_wait_for_a_recheck_with_their_reason(configured, now):
    modx_result(None)
    modx_result("   ")
    bad = modx_result("not-an-email")
    modx_result(" Good@Example.com ")
    run, outcome = _process(now)
    assert outcome.added == 1
    assert FunnelEntry.objects.get().email == "good@example.com"
    assert _skips(run) == []
    assert dict(outcome.waiting) == {"empty_email": 2, "invalid_email": 1}
    waiting = SyncRunItem.objects.filter(run=run, action="waiting")
    assert sorted(waiting.values_list("reason", flat=True)) == [
        "empty_email", "empty_email", "invalid_email"
    ]
    row = RecheckRow.objects.get(modx_id=bad.id)
    assert (row.source, row.reason, row.email) == ("test_results", "invalid_email", "not-an-email")
    assert row.recheck_until == now + dt.timedelta(days=30)


def test_once_means_one_entry_per_person_and_funnel(configured, now):
    modx_result("anna@example.com", LANG_TEST)
    modx_result("ANNA@example.com ", LANG_TEST)  # same person, same batch
    modx_result("anna@example.com", LANG_TEST_2)  # same person, another language test
    run, outcome = _process(now)
    assert FunnelEntry.objects.count() == 1
    assert _skips(run) == ["duplicate_in_batch", "duplicate_in_batch"]
    # A later run sees the committed entry.
    modx_result("anna@example.com", LANG_TEST_2)
    run2, _ = _process(now, after_id=SyncState.objects.get(key="test_results").last_id)
    assert FunnelEntry.objects.count() == 1
    assert _skips(run2) == ["already_in_funnel"]


def test_per_test_means_one_entry_per_person_and_test(configured, now):
    Funnel.objects.filter(slug="language").update(reentry=Funnel.Reentry.PER_TEST)
    modx_result("anna@example.com", LANG_TEST)
    modx_result("anna@example.com", LANG_TEST_2)
    modx_result("anna@example.com", LANG_TEST)
    run, _ = _process(now)
    assert sorted(FunnelEntry.objects.values_list("test_id", flat=True)) == [LANG_TEST, LANG_TEST_2]
    assert _skips(run) == ["duplicate_in_batch"]


def test_an_entry_adopted_with_an_unknown_test_still_counts_for_once(configured, now):
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", test_id=0)
    modx_result("anna@example.com", LANG_TEST)
    run, outcome = _process(now)
    assert outcome.added == 0
    assert _skips(run) == ["already_in_funnel"]


def test_a_funnel_limited_to_some_tests_takes_only_those(configured, now):
    Funnel.objects.filter(slug="language").update(test_ids=[LANG_TEST_2])
    modx_result("anna@example.com", LANG_TEST)
    modx_result("boris@example.com", LANG_TEST_2)
    run, _ = _process(now)
    assert list(FunnelEntry.objects.values_list("email", flat=True)) == ["boris@example.com"]
    assert _skips(run) == ["no_matching_funnel"]


def test_an_any_kind_funnel_takes_both_kinds(configured, now):
    Funnel.objects.create(
        slug="everyone", name="Everyone", test_kind="any", certificate_type=1, brevo_list_id=9
    )
    modx_result("anna@example.com", LANG_TEST)
    modx_result("boris@example.com", OTHER_TEST)
    _process(now)
    assert FunnelEntry.objects.filter(funnel_type="everyone").count() == 2


def test_inactive_funnel_and_missing_list_id_are_reasons(configured, now, settings):
    settings.BREVO_NON_LANGUAGE_LIST_ID = None
    Funnel.objects.filter(slug="language").update(active=False)
    Funnel.objects.filter(slug="non_language").update(brevo_list_id=None)
    modx_result("anna@example.com", LANG_TEST)
    modx_result("boris@example.com", OTHER_TEST)
    run, outcome = _process(now, dry_run=True)
    assert outcome.added == 0
    assert _skips(run) == ["funnel_inactive", "no_list_id"]


def test_null_test_id_is_never_written_and_waits(configured, now):
    modx_result("anna@example.com", None)
    run, _ = _process(now)
    assert FunnelEntry.objects.count() == 0
    assert _skips(run) == []
    assert RecheckRow.objects.get().reason == SkipReason.NO_TEST_ID


def test_entry_time_is_the_completion_time(configured, now):
    done = dt.datetime(2026, 11, 27, 8, 15, tzinfo=dt.timezone.utc)
    modx_result("anna@example.com", completed_at=done)
    _process(now)
    entry = FunnelEntry.objects.get()
    assert entry.entered_at == done
    assert entry.test_completed_at == done


def test_a_result_without_a_completion_time_is_not_a_completed_test_yet(configured, now):
    row = modx_result("anna@example.com", completed_at=None)
    run, _ = _process(now)
    assert FunnelEntry.objects.count() == 0
    item = SyncRunItem.objects.get(run=run)
    assert (item.action, item.reason, item.source_id) == ("waiting", "no_completion_time", row.id)
    assert RecheckRow.objects.get().email == "anna@example.com"


def test_a_completion_time_within_the_clock_skew_is_clamped_to_the_run_time(
    configured, now, settings
):
    settings.FUNNELS_CLOCK_SKEW_MINUTES = 10
    soon = now + dt.timedelta(minutes=9)
    modx_result("anna@example.com", completed_at=soon)
    run, _ = _process(now)
    entry = FunnelEntry.objects.get()
    assert entry.entered_at == now
    assert entry.test_completed_at == soon
    assert "slightly after the run's time" in SyncRunItem.objects.get(run=run).detail


def test_a_completion_time_further_in_the_future_waits(configured, now, settings):
    settings.FUNNELS_CLOCK_SKEW_MINUTES = 10
    modx_result("anna@example.com", completed_at=now + dt.timedelta(minutes=11))
    modx_result("boris@example.com", completed_at=now + dt.timedelta(days=300))
    run, outcome = _process(now)
    assert FunnelEntry.objects.count() == 0
    assert dict(outcome.waiting) == {"completed_in_future": 2}


def test_a_result_older_than_the_funnels_maximum_age_is_not_entered(
    configured, now, settings
):
    settings.FUNNELS_MAX_AGE_DAYS = 30
    settings.TIME_ZONE = "UTC"
    Funnel.objects.filter(slug="non_language").update(max_age_days=2)
    # 2026-11-28 15:30 UTC: 30 days back is the day 2026-10-29, from its midnight.
    modx_result("edge@example.com", completed_at=dt.datetime(2026, 10, 29, tzinfo=dt.UTC))
    modx_result("old@example.com", completed_at=dt.datetime(2026, 10, 28, 23, 59, tzinfo=dt.UTC))
    modx_result("young@example.com", OTHER_TEST,
                completed_at=dt.datetime(2026, 11, 26, 0, 0, tzinfo=dt.UTC))
    modx_result("aged@example.com", OTHER_TEST,
                completed_at=dt.datetime(2026, 11, 25, 23, 0, tzinfo=dt.UTC))
    run, outcome = _process(now)
    assert sorted(FunnelEntry.objects.values_list("email", flat=True)) == [
        "edge@example.com", "young@example.com"
    ]
    assert dict(outcome.skipped_by_reason) == {"completed_too_long_ago": 2}


def test_watermark_moves_with_the_entries_of_its_chunk(configured, now):
    rows = [modx_result(f"p{n}@example.com") for n in range(3)]
    lock = _Lock()
    _process(now, lock=lock)
    assert SyncState.objects.get(key="test_results").last_id == rows[-1].id
    assert lock.checks == 1


def test_a_lost_lock_rolls_back_entries_items_and_watermark(configured, now):
    modx_result("anna@example.com")
    watermark_advance(key="test_results", last_id=0, run=None)
    with pytest.raises(RunLockLost):
        _process(now, lock=_Lock(lost=True))
    assert FunnelEntry.objects.count() == 0
    assert SyncRunItem.objects.count() == 0
    assert SyncState.objects.get(key="test_results").last_id == 0


def test_watermark_never_moves_back(db):
    watermark_advance(key="test_results", last_id=50, run=None)
    watermark_advance(key="test_results", last_id=20, run=None)
    assert SyncState.objects.get(key="test_results").last_id == 50


def test_dry_run_writes_only_its_plan(configured, now):
    modx_result("anna@example.com", LANG_TEST)
    modx_result("bad")
    run, outcome = _process(now, dry_run=True)
    assert outcome.added == 1
    assert FunnelEntry.objects.count() == 0
    assert not SyncState.objects.filter(key="test_results").exists()
    assert not RecheckRow.objects.exists()
    assert sorted(SyncRunItem.objects.filter(run=run).values_list("action", flat=True)) == [
        "waiting", "would_add",
    ]


def test_dry_run_remembers_its_plan_across_chunks(configured, now):
    modx_result("anna@example.com", LANG_TEST)
    modx_result("anna@example.com", LANG_TEST_2)
    planner = _planner()
    run, first = _process(now, dry_run=True, planner=planner, limit=1)
    run2, second = _process(now, dry_run=True, planner=planner, after_id=first.last_id, limit=1)
    assert (first.added, second.added) == (1, 0)
    assert _skips(run2) == ["duplicate_in_batch"]


def _chunk_queries(now, size):
    for n in range(size):
        modx_result(f"q{size}-{n}@example.com", LANG_TEST if n % 2 else OTHER_TEST)
        if n % 3 == 0:
            FunnelEntryFactory(email=f"q{size}-{n}@example.com", funnel_type="non_language")
    after = SyncState.objects.get(key="test_results").last_id
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)
    candidates = candidates_chunk(after_id=after, limit=1000, kinds=KindResolver())
    move = _move(candidates, after_id=after, now=now)
    with CaptureQueriesContext(connections["default"]) as queries:
        _commit(run=run, candidates=candidates, now=now, lock=_Lock(), move=move)
    return len(queries)


def test_queries_per_chunk_do_not_grow_with_the_chunk(configured, now):
    watermark_advance(key="test_results", last_id=0, run=None)
    small = _chunk_queries(now, 5)
    large = _chunk_queries(now, 120)
    assert FunnelEntry.objects.filter(email__startswith="q120-").count() > 100
    # No per-row query: 115 more rows may only add a few INSERT batches (SQLite caps the
    # number of parameters per statement), never one query per row.
    assert large - small <= 4


def test_a_watermark_moved_by_someone_else_rolls_the_chunk_back(configured, now):
    modx_result("anna@example.com")
    watermark_advance(key=Source.RESULTS, last_id=0, run=None)
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)
    candidates = candidates_chunk(after_id=0, limit=10, kinds=KindResolver())
    move = _move(candidates, after_id=0, now=now)
    SyncState.objects.filter(key=Source.RESULTS).update(last_id=7)  # another writer
    with pytest.raises(WatermarkMoved):
        _commit(run=run, candidates=candidates, now=now, lock=_Lock(), move=move)
    assert FunnelEntry.objects.count() == 0
    assert SyncRunItem.objects.count() == 0
    assert SyncState.objects.get(key=Source.RESULTS).last_id == 7


def test_ids_passed_without_a_row_are_kept_as_gaps_with_the_watermark(configured, now):
    first = modx_result("anna@example.com")
    modx_result("boris@example.com", id=first.id + 3)
    watermark_advance(key=Source.RESULTS, last_id=first.id - 1, run=None)
    _process(now, after_id=first.id - 1)
    state = watermark_state_get(key=Source.RESULTS)
    assert state.last_id == first.id + 3
    assert state.gaps == {first.id + 1: now, first.id + 2: now}


def test_a_late_row_leaves_the_gap_list_with_its_entries_or_not_at_all(configured, now):
    first = modx_result("anna@example.com")
    modx_result("boris@example.com", id=first.id + 2)
    watermark_advance(key=Source.RESULTS, last_id=first.id - 1, run=None)
    _process(now, after_id=first.id - 1)
    late = modx_result("late@example.com", id=first.id + 1)
    state = watermark_state_get(key=Source.RESULTS)
    candidates = candidates_by_ids(ids=sorted(state.gaps), kinds=KindResolver())
    move = watermark_after_gap_reads(state=state, read_ids=sorted(state.gaps),
                                     found_ids=[late.id], now=now, grace=dt.timedelta(hours=1))
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)

    def create(lock):
        return _commit(run=run, candidates=candidates, now=now, lock=lock, move=move)

    with pytest.raises(RunLockLost):
        create(_Lock(lost=True))
    assert not FunnelEntry.objects.filter(user_id=late.id).exists()
    assert watermark_state_get(key=Source.RESULTS).gaps == {late.id: now}
    assert create(_Lock()).added == 1
    assert FunnelEntry.objects.filter(user_id=late.id).count() == 1
    assert watermark_state_get(key=Source.RESULTS).gaps == {}


# --- previous_entered_at (what the reports count people by) ----------------------------


def _previous_by_test(email="anna@example.com"):
    return dict(
        FunnelEntry.objects.filter(email=email, funnel_type="language").values_list(
            "test_id", "previous_entered_at"
        )
    )


def test_new_entries_link_to_existing_ones_and_to_each_other_in_time_order(configured, now):
    Funnel.objects.filter(slug="language").update(reentry=Funnel.Reentry.PER_TEST)
    t = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", test_id=900,
                       entered_at=t)
    # The chunk reads LANG_TEST first although its result is the later one.
    modx_result("anna@example.com", LANG_TEST, completed_at=t + dt.timedelta(days=2))
    modx_result("anna@example.com", LANG_TEST_2, completed_at=t + dt.timedelta(days=1))
    _process(now)
    assert _previous_by_test() == {
        900: None,
        LANG_TEST_2: t,
        LANG_TEST: t + dt.timedelta(days=1),
    }


def test_a_late_entry_before_an_existing_one_relinks_it_in_the_same_transaction(
    configured, now
):
    Funnel.objects.filter(slug="language").update(reentry=Funnel.Reentry.PER_TEST)
    t = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", test_id=900,
                       entered_at=t)
    FunnelEntryFactory(email="anna@example.com", funnel_type="language", test_id=901,
                       entered_at=t + dt.timedelta(days=4))
    assert _previous_by_test() == {900: None, 901: t}
    modx_result("anna@example.com", LANG_TEST, completed_at=t + dt.timedelta(days=2))
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, finished_at=None)
    candidates = candidates_chunk(after_id=0, limit=1000, kinds=KindResolver())

    def create(lock):
        return _commit(run=run, candidates=candidates, now=now, lock=lock, move=None)

    with pytest.raises(RunLockLost):
        create(_Lock(lost=True))
    assert _previous_by_test() == {900: None, 901: t}
    assert create(_Lock()).added == 1
    assert _previous_by_test() == {
        900: None,
        LANG_TEST: t,
        901: t + dt.timedelta(days=2),
    }
