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
from collections.abc import Iterable, Sequence

DAY_SECONDS = 86400
HOUR_SECONDS = 3600
# Local days are numbered from this date (day 0), in SQL and in Python alike.
EPOCH = dt.date(1970, 1, 1)


def day_number(*, day: dt.date) -> int:
    return (day - EPOCH).days


def day_of_number(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=number)


def day_ranges(*, days: Iterable[int], zone: dt.tzinfo) -> list[tuple[dt.datetime, dt.datetime]]:
    """Numbered local days as [from, to) instants (aware UTC), consecutive days merged into
    one range: one range of entered_at each in a query."""
    runs: list[list[int]] = []
    for day in sorted(set(days)):
        if runs and runs[-1][1] == day - 1:
            runs[-1][1] = day
        else:
            runs.append([day, day])
    return [
        (local_midnight(day=day_of_number(first), zone=zone),
         local_midnight(day=day_of_number(last + 1), zone=zone))
        for first, last in runs
    ]


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
        step = min(at + DAY_SECONDS, end)
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


class Dialect:
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


class Sql:
    """Text with its parameters, so pieces keep their placeholders in order."""

    def __init__(self, text: str = "", params: Sequence = ()) -> None:
        self.text = text
        self.params = list(params)

    def __add__(self, other: Sql | str) -> Sql:
        if isinstance(other, str):
            return Sql(self.text + other, self.params)
        return Sql(self.text + other.text, self.params + other.params)

    def __radd__(self, other: str) -> Sql:
        return Sql(other + self.text, self.params)


def offset_sql(segments: list[tuple[int, int]], seconds: str) -> Sql:
    """The zone's UTC offset at `seconds` (an SQL expression), segment by segment."""
    if len(segments) == 1:
        return Sql("%s", [segments[0][1]])
    sql = Sql("(CASE")
    for (_, offset), (next_start, _next) in zip(segments, segments[1:]):
        sql += Sql(f" WHEN {seconds} < %s THEN %s", [next_start, offset])
    return sql + Sql(" ELSE %s END)", [segments[-1][1]])


def local_seconds_sql(*, dialect: Dialect, column: str, segments: list[tuple[int, int]]) -> Sql:
    """Unix seconds of a stored datetime `column` read as the zone's wall clock."""
    seconds = dialect.epoch(column)
    return Sql(f"({seconds} + ") + offset_sql(segments, seconds) + ")"


def local_day_sql(*, dialect: Dialect, column: str, segments: list[tuple[int, int]]) -> Sql:
    """The local day number (from EPOCH) of a stored datetime `column`: the one spelling
    the report and its rollup share, so that both put an entry on the same day."""
    local = local_seconds_sql(dialect=dialect, column=column, segments=segments)
    return Sql(dialect.div(local.text, DAY_SECONDS), local.params)


def ranges_sql(*, column: str, ranges: Sequence[tuple]) -> Sql:
    """`column` within any of the [from, to) ranges (parameters already adapted)."""
    return Sql(
        "(" + " OR ".join([f"({column} >= %s AND {column} < %s)"] * len(ranges)) + ")",
        [value for pair in ranges for value in pair],
    )
