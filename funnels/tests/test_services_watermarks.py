import datetime as dt

import pytest

from funnels.models import SyncState
from funnels.selectors.funnels import (
    WatermarkState,
    watermark_gaps_decode,
    watermark_gaps_encode,
    watermark_state_get,
)
from funnels.services.watermarks import (
    watermark_after_gap_reads,
    watermark_after_new_rows,
    watermark_gap_batches,
    watermark_save,
)
from funnels.tests.factories import SyncRunFactory

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


def _state(last_id, gaps=None, *, stored=True):
    return WatermarkState(key="k", last_id=last_id, gaps=gaps or {}, stored=stored)


def test_new_rows_move_the_watermark_and_the_ids_passed_become_gaps():
    move = watermark_after_new_rows(state=_state(10), ids=[14, 11, 15], now=T0)
    assert move.after.last_id == 15
    assert move.after.gaps == {12: T0, 13: T0}
    assert (move.gaps_added, move.gaps_dropped, move.ids_untracked) == (2, 0, 0)
    assert move.changed


def test_gaps_seen_before_keep_their_first_seen_time():
    move = watermark_after_new_rows(state=_state(10, {8: T0}), ids=[12], now=T0 + HOUR)
    assert move.after.gaps == {8: T0, 11: T0 + HOUR}


def test_no_rows_no_move():
    move = watermark_after_new_rows(state=_state(10, {8: T0}), ids=[], now=T0)
    assert move.after == move.before
    assert not move.changed


def test_rows_at_or_below_the_watermark_are_a_caller_error():
    with pytest.raises(ValueError):
        watermark_after_new_rows(state=_state(10), ids=[10, 11], now=T0)


def test_only_the_highest_ids_of_a_long_hole_are_kept():
    move = watermark_after_new_rows(
        state=_state(0), ids=[1_000_000, 1_000_003], now=T0, hole_span=5
    )
    assert sorted(move.after.gaps) == [999_995, 999_996, 999_997, 999_998, 999_999,
                                       1_000_001, 1_000_002]
    assert move.ids_untracked == 999_999 - 5


def test_the_list_is_bounded_oldest_first_then_lowest_id():
    state = _state(20, {3: T0 - HOUR, 2: T0, 5: T0})
    move = watermark_after_new_rows(state=state, ids=[22, 24], now=T0 + HOUR, limit=3)
    # Five gaps for three places: the one seen first goes, then the lower of the two of T0.
    assert move.after.gaps == {5: T0, 21: T0 + HOUR, 23: T0 + HOUR}
    assert move.gaps_dropped == 2


def test_gap_reads_remove_what_was_found_and_what_expired():
    state = _state(50, {10: T0, 11: T0 + 30 * MINUTE, 12: T0, 13: T0})
    move = watermark_after_gap_reads(
        state=state, read_ids=[10, 11, 12], found_ids=[12], now=T0 + HOUR + MINUTE,
        grace=HOUR,
    )
    # 12 appeared; 10 is older than the grace period; 11 is not yet; 13 was not read.
    assert move.after.gaps == {11: T0 + 30 * MINUTE, 13: T0}
    assert move.after.last_id == 50
    assert (move.gaps_filled, move.gaps_expired) == (1, 1)


def test_a_gap_is_kept_for_exactly_the_grace_period():
    state = _state(50, {10: T0})
    kept = watermark_after_gap_reads(state=state, read_ids=[10], found_ids=[], now=T0 + HOUR,
                                     grace=HOUR)
    assert not kept.changed
    dropped = watermark_after_gap_reads(
        state=state, read_ids=[10], found_ids=[], now=T0 + HOUR + dt.timedelta(seconds=1),
        grace=HOUR,
    )
    assert dropped.after.gaps == {}


def test_gap_batches_are_in_id_order():
    state = _state(100, {n: T0 for n in (9, 3, 7, 1, 5)})
    assert watermark_gap_batches(state=state, size=2) == [[1, 3], [5, 7], [9]]
    assert watermark_gap_batches(state=_state(100)) == []


def test_gaps_are_stored_grouped_by_time_and_read_back_the_same():
    gaps = {7: T0, 3: T0, 9: T0 + HOUR}
    stored = watermark_gaps_encode(gaps)
    assert stored == {"2026-11-28T15:00:00+00:00": [3, 7], "2026-11-28T16:00:00+00:00": [9]}
    assert watermark_gaps_decode(stored) == gaps
    assert watermark_gaps_decode({}) == {} and watermark_gaps_decode(None) == {}


@pytest.mark.django_db
def test_save_writes_the_move_and_refuses_a_watermark_moved_by_someone_else():
    run = SyncRunFactory()
    first = watermark_after_new_rows(state=_state(0, stored=False), ids=[2], now=T0)
    assert watermark_save(move=first, run=run, stamp=T0)
    assert watermark_state_get(key="k") == _state(2, {1: T0})
    second = watermark_after_new_rows(state=watermark_state_get(key="k"), ids=[4], now=T0)
    SyncState.objects.filter(key="k").update(last_id=3)
    assert not watermark_save(move=second, run=run, stamp=T0)
    assert watermark_state_get(key="k") == _state(3, {1: T0})


@pytest.mark.django_db
def test_save_of_an_unchanged_watermark_writes_nothing(django_assert_num_queries):
    state = _state(5, {4: T0})
    move = watermark_after_gap_reads(state=state, read_ids=[4], found_ids=[], now=T0,
                                     grace=HOUR)
    with django_assert_num_queries(0):
        assert watermark_save(move=move, run=None, stamp=T0)
