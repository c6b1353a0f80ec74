import datetime as dt

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from funnels.modx.models import TestResult
from funnels.selectors.candidates import (
    KIND_LANGUAGE,
    KIND_NON_LANGUAGE,
    KindResolver,
    candidates_by_ids,
    candidates_chunk,
    candidates_for_email,
    candidates_start_id,
    candidates_stream,
)
from funnels.tests.factories import TestFactory, TestLanguageFactory
from funnels.tests.sync_support import (
    LANG_TEST,
    OTHER_TEST,
    OTHER_TEST_2,
    modx_result,
)
from funnels.routers import modx_writes_allowed

pytestmark = pytest.mark.django_db(databases=["default", "modx"])


def test_kind_is_language_iff_the_lang_id_has_a_language_row(catalogue):
    orphan = 77  # a TestId with no simpletest_test row at all
    rows = [
        modx_result("a@example.com", LANG_TEST),
        modx_result("b@example.com", OTHER_TEST),
        modx_result("c@example.com", OTHER_TEST_2),
        modx_result("d@example.com", orphan),
        modx_result("e@example.com", None),
    ]
    chunk = candidates_chunk(after_id=0, limit=10, kinds=KindResolver())
    assert [c.result_id for c in chunk] == [r.id for r in rows]
    assert [c.kind for c in chunk] == [
        KIND_LANGUAGE, KIND_NON_LANGUAGE, KIND_NON_LANGUAGE, KIND_NON_LANGUAGE, None,
    ]


def test_test_id_repeated_in_simpletest_test_is_language_if_any_row_is(catalogue):
    TestLanguageFactory(id=5)
    TestFactory(test_id=50, lang_id=0)
    TestFactory(test_id=50, lang_id=5)
    modx_result("a@example.com", 50)
    [candidate] = candidates_chunk(after_id=0, limit=10, kinds=KindResolver())
    assert candidate.kind == KIND_LANGUAGE


def test_null_lang_id_is_non_language(catalogue):
    TestFactory(test_id=60, lang_id=None)
    modx_result("a@example.com", 60)
    [candidate] = candidates_chunk(after_id=0, limit=10, kinds=KindResolver())
    assert candidate.kind == KIND_NON_LANGUAGE


def test_stream_starts_after_the_watermark_and_works_off_any_backlog(catalogue):
    rows = [modx_result(f"p{n}@example.com") for n in range(23)]
    chunks = list(candidates_stream(after_id=rows[2].id, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5]
    assert [c.result_id for chunk in chunks for c in chunk] == [r.id for r in rows[3:]]


def test_chunk_query_is_a_primary_key_range_with_a_limit(catalogue):
    modx_result("a@example.com")
    with CaptureQueriesContext(connections["modx"]) as queries:
        candidates_chunk(after_id=0, limit=7, kinds=KindResolver())
    sql = queries.captured_queries[0]["sql"].upper()
    assert '"ID" >' in sql.replace("`", '"')
    assert 'ORDER BY' in sql and "LIMIT 7" in sql


def test_kinds_are_resolved_once_per_run_not_once_per_chunk(catalogue):
    for n in range(6):
        modx_result(f"p{n}@example.com", LANG_TEST if n % 2 else OTHER_TEST)
    kinds = KindResolver()
    with CaptureQueriesContext(connections["modx"]) as first:
        candidates_chunk(after_id=0, limit=3, kinds=kinds)
    with CaptureQueriesContext(connections["modx"]) as second:
        candidates_chunk(after_id=3, limit=3, kinds=kinds)
    assert len(first) == 3  # results, tests, languages
    assert len(second) == 1  # results only: both test ids are known


def test_null_completion_time_is_kept_as_none(catalogue):
    modx_result("a@example.com", completed_at=None)
    [candidate] = candidates_chunk(after_id=0, limit=10, kinds=KindResolver())
    assert candidate.completed_at is None


def test_completion_time_is_read_as_an_aware_datetime(catalogue):
    moment = dt.datetime(2026, 11, 20, 7, 30, tzinfo=dt.timezone.utc)
    modx_result("a@example.com", completed_at=moment)
    [candidate] = candidates_chunk(after_id=0, limit=10, kinds=KindResolver())
    assert candidate.completed_at == moment
    assert candidate.completed_at.utcoffset() is not None


def test_start_id_is_the_result_just_before_the_first_result_of_the_day(catalogue, settings):
    settings.TIME_ZONE = "Europe/Moscow"
    utc = dt.timezone.utc
    older = modx_result("older@example.com", completed_at=dt.datetime(2026, 11, 1, tzinfo=utc))
    old = modx_result("old@example.com", completed_at=dt.datetime(2026, 11, 19, 20, 59, tzinfo=utc))
    # 21:00 UTC on the 19th is midnight of the 20th in Moscow.
    first = modx_result("new@example.com", completed_at=dt.datetime(2026, 11, 19, 21, 0, tzinfo=utc))
    modx_result("later@example.com", completed_at=None)
    assert first.id == old.id + 1
    assert candidates_start_id(since=dt.date(2026, 11, 20)) == old.id
    assert candidates_start_id(since=dt.date(2026, 11, 19)) == older.id


def test_start_id_leaves_ids_without_a_row_above_it_for_the_first_chunk(catalogue):
    # Ids between the previous result and the first one of the day have no visible row:
    # they may be rows still being committed, so reading starts below them and the first
    # chunk records them as the watermark's gaps.
    before = modx_result("before@example.com",
                         completed_at=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))
    modx_result("first@example.com", id=before.id + 3)
    assert candidates_start_id(since=dt.date(2026, 11, 20)) == before.id


def test_start_id_with_no_result_before_the_first_of_the_day_is_zero(catalogue):
    modx_result("first@example.com")
    assert candidates_start_id(since=dt.date(2026, 11, 20)) == 0


def test_start_id_with_nothing_recent_is_after_the_newest_result(catalogue):
    newest = modx_result(
        "old@example.com", completed_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    )
    assert candidates_start_id(since=dt.date(2026, 11, 20)) == newest.id


def test_start_id_on_an_empty_table_is_zero():
    assert candidates_start_id(since=dt.date(2026, 11, 20)) == 0


def test_results_for_an_email_match_however_it_was_typed(catalogue):
    a = modx_result("  Anna@Example.COM ")
    b = modx_result("anna@example.com", OTHER_TEST)
    modx_result("anna@example.org")
    modx_result("joanna@example.com")
    found = candidates_for_email(email="anna@example.com")
    assert [c.result_id for c in found] == [a.id, b.id]
    assert [c.kind for c in found] == [KIND_LANGUAGE, KIND_NON_LANGUAGE]


def test_results_for_an_internationalised_domain_match_its_punycode(catalogue):
    typed = modx_result("Ivan@Пример.рф")
    [found] = candidates_for_email(email="ivan@xn--e1afmkfd.xn--p1ai")
    assert found.result_id == typed.id


def test_results_by_id_are_those_that_exist_now_in_one_query(catalogue):
    a = modx_result("a@example.com", LANG_TEST)
    b = modx_result("b@example.com", OTHER_TEST)
    with CaptureQueriesContext(connections["modx"]) as queries:
        found = candidates_by_ids(ids=[b.id, a.id + 1000, a.id, b.id], kinds=KindResolver())
    assert [(c.result_id, c.kind) for c in found] == [
        (a.id, KIND_LANGUAGE), (b.id, KIND_NON_LANGUAGE),
    ]
    # The results, then the test kinds (tests and languages) of the ids not seen before.
    assert len(queries) == 3
    with CaptureQueriesContext(connections["modx"]) as queries:
        assert candidates_by_ids(ids=[], kinds=KindResolver()) == []
    assert len(queries) == 0


# --- the first run's start cannot be moved by outlier dates --------------------------------


def _history(days=60, per_day=4):
    """Results in id order, one every 6 hours over `days` days up to 2026-11-28."""
    end = dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)
    rows = []
    for n in range(days * per_day, 0, -1):
        rows.append(modx_result(f"h{n}@example.com",
                                completed_at=end - dt.timedelta(hours=6 * n)))
    return rows


def _first_on_or_after(rows, day):
    start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.timezone.utc)
    return next(r for r in rows if r.completed_at >= start)


@pytest.mark.parametrize("where", ["before", "inside", "after"])
def test_outlier_dates_do_not_move_the_first_runs_start(catalogue, settings, where):
    settings.TIME_ZONE = "UTC"
    since = dt.date(2026, 10, 29)
    rows = _history()
    expected = _first_on_or_after(rows, since).id - 1
    with modx_writes_allowed():
        if where == "before":
            # A recent id dated long ago (an import, a wrong year): it is read, and the
            # planner finds it too old; the start does not move.
            modx_result("old@example.com", completed_at=dt.datetime(2019, 1, 1, tzinfo=dt.UTC))
        else:
            # An old id dated inside the look-back, or years ahead: taken as the start by
            # the old "lowest id at or after since", it would send two months of history.
            moment = (dt.datetime(2026, 11, 20, tzinfo=dt.UTC) if where == "inside"
                      else dt.datetime(2031, 5, 5, tzinfo=dt.UTC))
            TestResult.objects.using("modx").filter(pk=rows[10].pk).update(completed_at=moment)
    assert candidates_start_id(since=since) == expected


def test_a_cluster_of_outliers_does_not_move_the_start_either(catalogue, settings):
    settings.TIME_ZONE = "UTC"
    rows = _history()
    with modx_writes_allowed():
        for row in rows[20:24]:
            TestResult.objects.using("modx").filter(pk=row.pk).update(
                completed_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
            )
    since = dt.date(2026, 10, 29)
    assert candidates_start_id(since=since) == _first_on_or_after(rows, since).id - 1


def test_undated_newest_rows_are_read_by_the_first_run(catalogue):
    old = modx_result("old@example.com", completed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    modx_result("running@example.com", completed_at=None)
    assert candidates_start_id(since=dt.date(2026, 11, 20)) == old.id
