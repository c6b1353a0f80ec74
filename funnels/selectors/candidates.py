"""New MODX test results since the watermark, with each test's kind resolved.

Reads only the MODX alias and never joins across databases (MODX and our tables may live
on different servers). Every query is a primary-key range or an IN list on an indexed
column, so the cost of a run grows with the rows it reads, not with the table:

    SELECT ... FROM simpletest_users WHERE Id > %s ORDER BY Id LIMIT %s
    SELECT ... FROM simpletest_users WHERE Id IN (%s, ...)   (the watermark's gaps)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connections
from django.db.models import Max, Min

from funnels.emails import email_check
from funnels.modx.digests import digest_sql, id_table_param, id_table_sql
from funnels.modx.models import Test, TestLanguage, TestResult

KIND_LANGUAGE = "language"
KIND_NON_LANGUAGE = "non_language"


@dataclass(frozen=True, slots=True)
class Candidate:
    result_id: int
    raw_email: str | None
    test_id: int | None
    completed_at: datetime | None  # aware; None when MODX has no Datep
    kind: str | None  # KIND_LANGUAGE / KIND_NON_LANGUAGE; None when test_id is NULL


class KindResolver:
    """Test id -> kind, filled lazily with two IN queries per batch of unseen ids.

    simpletest_test.Id is not unique: a test id counts as a language test when ANY of its
    rows points at an existing language. A test id with no simpletest_test row at all is
    a non-language test, as the definition ("every other test") says.
    """

    def __init__(self) -> None:
        self._kinds: dict[int, str] = {}

    def kinds_for(self, test_ids: Iterable[int]) -> dict[int, str]:
        wanted = {t for t in test_ids if t is not None}
        unseen = wanted - self._kinds.keys()
        if unseen:
            self._load(unseen)
        return {t: self._kinds[t] for t in wanted}

    def _load(self, test_ids: set[int]) -> None:
        rows = list(
            Test.objects.filter(test_id__in=sorted(test_ids)).values_list("test_id", "lang_id")
        )
        lang_ids = {lang for _, lang in rows if lang}
        languages = (
            set(TestLanguage.objects.filter(id__in=sorted(lang_ids)).values_list("id", flat=True))
            if lang_ids
            else set()
        )
        for test_id in test_ids:
            self._kinds[test_id] = KIND_NON_LANGUAGE
        for test_id, lang_id in rows:
            if lang_id in languages:
                self._kinds[test_id] = KIND_LANGUAGE


_COLUMNS = ("id", "email", "test_id", "completed_at")


def _candidates(rows: list[tuple], *, kinds: KindResolver) -> list[Candidate]:
    resolved = kinds.kinds_for(test_id for _, _, test_id, _ in rows)
    return [
        Candidate(
            result_id=result_id,
            raw_email=email,
            test_id=test_id,
            completed_at=completed_at,
            kind=resolved.get(test_id) if test_id is not None else None,
        )
        for result_id, email, test_id, completed_at in rows
    ]


def candidates_chunk(
    *, after_id: int, limit: int, kinds: KindResolver
) -> list[Candidate]:
    """At most `limit` results with Id > after_id, in id order."""
    rows = list(
        TestResult.objects.filter(id__gt=after_id)
        .order_by("id")
        .values_list(*_COLUMNS)[:limit]
    )
    return _candidates(rows, kinds=kinds)


def candidates_by_ids(*, ids: Iterable[int], kinds: KindResolver) -> list[Candidate]:
    """The results with these ids that exist now, in id order: one primary-key IN query
    (callers pass a batch of the watermark's gaps, not an unbounded list)."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    rows = list(
        TestResult.objects.filter(id__in=wanted)
        .order_by("id")
        .values_list(*_COLUMNS)
    )
    return _candidates(rows, kinds=kinds)


def _digest_sql() -> str:
    q = connections[TestResult.objects.db].ops.quote_name
    column = {name: q(TestResult._meta.get_field(name).column) for name in _COLUMNS}
    return digest_sql(
        numbers=[column["id"], column["test_id"], column["completed_at"]],
        email=column["email"],
    )


def candidates_columns_by_ids(*, ids: Iterable[int], digest: bool = False) -> list[tuple]:
    """(Id, Email, TestId, Datep) of the results with these ids, as the MODX cursor returns
    them (no conversion, no objects): what a recheck compares before reading a row whole.
    `digest` (only where `digests_supported()`): a fifth column, the row's digest
    (funnels/modx/digests.py), from the same statement."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    connection = connections[TestResult.objects.db]
    q = connection.ops.quote_name
    columns = ", ".join(q(TestResult._meta.get_field(name).column) for name in _COLUMNS)
    if digest:
        columns += ", " + _digest_sql()
    placeholders = ", ".join(["%s"] * len(wanted))
    sql = (f"SELECT {columns} FROM {q(TestResult._meta.db_table)} "
           f"WHERE {q(TestResult._meta.pk.column)} IN ({placeholders})")
    with connection.cursor() as cursor:
        cursor.execute(sql, wanted)
        return cursor.fetchall()


def candidates_digest_total(*, ids: Sequence[int]) -> tuple[int, int]:
    """(how many of these results exist, the sum of their digests): one query returning one
    row, whatever the number of ids (only where `digests_supported()`)."""
    connection = connections[TestResult.objects.db]
    q = connection.ops.quote_name
    sql = (f"SELECT COUNT(*), SUM({_digest_sql()}) FROM {id_table_sql(alias='w')} "
           f"JOIN {q(TestResult._meta.db_table)} "
           f"ON {q(TestResult._meta.pk.column)} = w.wanted_id")
    with connection.cursor() as cursor:
        cursor.execute(sql, [id_table_param(ids)])
        count, total = cursor.fetchone()
    return int(count), int(total or 0)


def candidates_stream(
    *, after_id: int, chunk_size: int, kinds: KindResolver | None = None
) -> Iterator[list[Candidate]]:
    """Chunks until MODX has nothing newer: a backlog of any size is worked off."""
    kinds = kinds or KindResolver()
    while True:
        chunk = candidates_chunk(after_id=after_id, limit=chunk_size, kinds=kinds)
        if not chunk:
            return
        yield chunk
        after_id = chunk[-1].result_id


# Rows on each side of a probe whose completion times decide where a first run starts.
START_WINDOW = 10


def _completion_times(*, at_or_after: int | None = None, before: int | None = None,
                      limit: int) -> list[tuple[int, datetime]]:
    """(id, Datep) of the `limit` rows with a completion time nearest to an id, going up
    from `at_or_after` or down from `before`: one primary-key range read."""
    rows = TestResult.objects.filter(completed_at__isnull=False)
    if at_or_after is not None:
        rows = rows.filter(id__gte=at_or_after).order_by("id")
    else:
        rows = rows.filter(id__lt=before).order_by("-id")
    # MySQL's zero date (0000-00-00) is NOT NULL in SQL but None once read: no time either.
    return [(i, t) for i, t in rows.values_list("id", "completed_at")[:limit] if t is not None]


def _typical_time(probe: int) -> tuple[int, datetime] | None:
    """The first dated row at or after `probe`, and the median completion time of it and
    its neighbours, as many on each side as both sides have (up to START_WINDOW): on rows
    in time order that is the row's own time, and one row with a wild date (a typo, a
    clock error, an old row re-dated) cannot move it."""
    above = _completion_times(at_or_after=probe, limit=START_WINDOW + 1)
    if not above:
        return None
    below = _completion_times(before=above[0][0], limit=START_WINDOW)
    side = min(START_WINDOW, len(below), len(above) - 1)
    window = sorted(t for _, t in below[:side] + above[: side + 1])
    return above[0][0], window[len(window) // 2]


def candidates_start_id(*, since: date) -> int:
    """The watermark for a first run: the result just before the first one completed on
    `since` (0 if there is none), so that reading after it starts with that first one.

    `since` is a calendar day in TIME_ZONE. Ids grow with time, so the first result of the
    day is found by a binary search over ids, comparing at each probe the median
    completion time around it rather than one row's: a single row dated years ahead or
    inside the look-back at an old id (neither rare in MODX) would otherwise move the
    start to it and send years of results. About two primary-key reads per probe, a
    first run only. Not simply "first id - 1": ids between the previous result and the
    first one have no visible row, and may be rows still being committed, so the first
    chunk records them as the watermark's gaps like any other ids it passes. With no
    result since that day, start after the newest result.
    """
    start = datetime.combine(since, time.min, tzinfo=ZoneInfo(settings.TIME_ZONE))
    bounds = TestResult.objects.aggregate(low=Min("id"), high=Max("id"))
    if bounds["low"] is None:
        return 0
    low, high = bounds["low"], bounds["high"] + 1
    first: int | None = None
    while low < high:
        middle = (low + high) // 2
        typical = _typical_time(middle)
        if typical is None or typical[1] >= start:
            # Only undated rows from here on: the newest, tests still in progress. They
            # count as recent (they wait on the recheck list until they have a time).
            high = middle
            first = typical[0] if typical is not None else middle
        else:
            low = typical[0] + 1
    if first is None:
        return bounds["high"]
    before = TestResult.objects.filter(id__lt=first).aggregate(before=Max("id"))["before"]
    return before or 0


def candidates_for_email(*, email: str) -> list[Candidate]:
    """Every result whose email normalises to `email` (explain_funnel only).

    MODX has no index on Email and stores it as typed (case, padding, Unicode domains),
    so this scans with a LIKE on the local part and compares normalised values here. It
    is a by-hand diagnostic, never part of a run.
    """
    local = email.rpartition("@")[0]
    rows = list(
        TestResult.objects.filter(email__icontains=f"{local}@")
        .order_by("id")
        .values_list(*_COLUMNS)
    )
    matching = [row for row in rows if email_check(row[1]).email == email]
    return _candidates(matching, kinds=KindResolver())
