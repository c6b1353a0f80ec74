"""Local days in a time zone without the database's time zone tables, and the few SQL
spellings that differ between MariaDB and SQLite: shared by the conversion report
(reports/selectors.py) and the report rollup the runs keep (services/report_rollup.py),
which must compute the same local day for an entry to the second.

Local days come from UTC seconds plus the zone's offset; the offset changes (summer time)
within a range are found in Python and written into the query as a CASE: MariaDB's time
zone tables are often empty, and CONVERT_TZ would then return NULL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

_DAY = 86400
_HOUR = 3600


def local_midnight(*, day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The aware UTC instant at which `day` begins in `zone`."""
    naive = dt.datetime.combine(day, dt.time())
    # fold=0 picks the first of two midnights in a backward jump; a midnight skipped by a
    # forward jump resolves to the first instant after it, as zoneinfo does.
    return naive.replace(tzinfo=zone).astimezone(dt.timezone.utc)


def _offset_at(seconds: int, zone: dt.tzinfo) -> int:
    instant = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).astimezone(zone)
    return int(instant.utcoffset().total_seconds())


def offset_segments(*, start: int, end: int, zone: dt.tzinfo) -> list[tuple[int, int]]:
    """[(from_second, utc_offset)] covering [start, end) in Unix seconds.

    Offsets are sampled once a day and a change is located to the second by bisection;
    no zone changes its offset twice within a day.
    """
    current = _offset_at(start, zone)
    segments = [(start, current)]
    at = start
    while at < end:
        step = min(at + _DAY, end)
        if _offset_at(step, zone) == current:
            at = step
            continue
        low, high = at, step
        while high - low > 1:
            middle = (low + high) // 2
            if _offset_at(middle, zone) == current:
                low = middle
            else:
                high = middle
        current = _offset_at(high, zone)
        segments.append((high, current))
        at = high
    return segments


class _Dialect:
    """The few SQL spellings that differ; every literal % is doubled (params follow)."""

    def __init__(self, vendor: str) -> None:
        if vendor not in {"sqlite", "mysql"}:
            raise NotImplementedError(f"conversion reports do not support {vendor}")
        self.vendor = vendor

    def epoch(self, value: str) -> str:
        """Unix seconds of a stored (naive UTC) datetime, without any time zone tables."""
        if self.vendor == "sqlite":
            return f"CAST(strftime('%%s', {value}) AS INTEGER)"
        return f"TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', {value})"

    def div(self, left: str, right: int) -> str:
        # Both operands are non-negative integers here, so truncation is floor division.
        if self.vendor == "sqlite":
            return f"(({left}) / {right})"
        return f"(({left}) DIV {right})"

    def year_month(self, seconds: str) -> str:
        """YYYYMM of Unix seconds read as a naive local time."""
        if self.vendor == "sqlite":
            return f"CAST(strftime('%%Y%%m', {seconds}, 'unixepoch') AS INTEGER)"
        return (
            "EXTRACT(YEAR_MONTH FROM DATE_ADD('1970-01-01 00:00:00',"
            f" INTERVAL ({seconds}) SECOND))"
        )


class _Sql:
    """Text with its parameters, so pieces keep their placeholders in order."""

    def __init__(self, text: str = "", params: Sequence = ()) -> None:
        self.text = text
        self.params = list(params)

    def __add__(self, other: _Sql | str) -> _Sql:
        if isinstance(other, str):
            return _Sql(self.text + other, self.params)
        return _Sql(self.text + other.text, self.params + other.params)

    def __radd__(self, other: str) -> _Sql:
        return _Sql(other + self.text, self.params)


def _offset_sql(segments: list[tuple[int, int]], seconds: str) -> _Sql:
    """The zone's UTC offset at `seconds` (an SQL expression), segment by segment."""
    if len(segments) == 1:
        return _Sql("%s", [segments[0][1]])
    sql = _Sql("(CASE")
    for (_, offset), (next_start, _next) in zip(segments, segments[1:]):
        sql += _Sql(f" WHEN {seconds} < %s THEN %s", [next_start, offset])
    return sql + _Sql(" ELSE %s END)", [segments[-1][1]])
