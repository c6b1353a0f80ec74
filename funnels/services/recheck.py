"""Recheck lists: MODX rows that could not be decided yet, read again by every run.

A test result with no email, or an invalid one, no completion time, no test id, or a
completion time in the future; a payment whose result, buyer or certificate test row is
missing, whose buyer email is invalid or whose certificate type no funnel knows: MODX
fills such rows in or corrects them after they first appear, so deciding on the first
read (skip for good) loses the person, and guessing (enter them now) sends the wrong
thing. They wait instead, on the list of their reader (`RecheckRow.source` = the
watermark key), for FUNNELS_RECHECK_DAYS from when they were first seen; every run re-reads
them by primary key and decides those that have become decidable exactly like new rows,
in the transaction that takes them off the list. At the end of the period a row is
dropped, and the run says so with the reason it waited for.

Cost: a run reads the list's ids and digests (one query on our database) and asks MODX
for the count and digest sum of those rows (one query, one row back; funnels/modx/
digests.py); only when they differ, or on a database without digests (SQLite), are the
rows read lightly by primary key (IN lists of up to 10,000) and compared by fingerprint.
A row whose decision inputs are unchanged and whose reason does not depend on the clock
is not decided again and writes nothing, so a run with nothing new costs the same few
queries whatever the list holds, up to FUNNELS_RECHECK_MAX_ROWS rows per source (oldest
dropped first past it).

The transitions are pure (RecheckList); `recheck_save` writes one chunk's changes inside
the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from django.db import connections

from funnels.models import RecheckRow, SyncRun


@dataclass(frozen=True, slots=True)
class Waiting:
    """Why a row cannot be decided yet. `clock` marks a reason that time alone can lift
    (a completion time in the future), so the row is decided again on every read even when
    MODX did not change it."""

    reason: str
    email: str = ""
    clock: bool = False
    test_id: int | None = None  # a result's test, for the run item (not stored)


@dataclass(slots=True)
class Waiter:
    """One row on a list, as stored."""

    modx_id: int
    reason: str
    email: str
    fingerprint: str
    # Loaded only when needed (a reason that changed, a row dropped): converting two
    # datetimes per row was most of an idle run's cost with 10,000 rows waiting.
    first_seen_at: dt.datetime | None
    recheck_until: dt.datetime | None
    clock: bool = False
    test_id: int | None = None
    expired: bool = False  # recheck_until <= the run's time, computed by the database
    # MODX's digest of the row as `fingerprint` saw it (funnels/modx/digests.py); None
    # until known. A row whose fingerprint changes gets None: the two must describe one
    # reading of the row.
    digest: int | None = None


def fingerprint_of(*values: str | int | bool | None) -> str:
    """A short, stable digest of the columns a decision reads. Times come as MODX stored
    them (funnels.modx.times.modx_time_text), so a row read whole and the same row read
    lightly give one digest."""
    text = "\x1f".join(["" if v is None else str(v) for v in values])
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


@dataclass
class RecheckChanges:
    """What one chunk does to a list: rows put on it or whose reason changed (upserted),
    rows taken off it (decided, vanished, expired or over the bound)."""

    upsert: dict[int, Waiter] = field(default_factory=dict)
    remove: set[int] = field(default_factory=set)
    # For the run's record: rows first put on the list (or whose reason changed), and rows
    # dropped, with the reason they had waited for.
    newly_waiting: list[Waiter] = field(default_factory=list)
    expired: list[Waiter] = field(default_factory=list)
    vanished: list[Waiter] = field(default_factory=list)
    overflow: list[Waiter] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.upsert or self.remove)


class RecheckList:
    """A reader's list in memory for the run: loaded once, changed chunk by chunk."""

    def __init__(
        self, *, source: str, rows: Mapping[int, Waiter], period: dt.timedelta, limit: int,
        clock_reasons: frozenset[str] = frozenset(),
    ) -> None:
        self.source = source
        self.rows: dict[int, Waiter] = dict(rows)
        self.period = period
        self.limit = limit
        self.clock_reasons = clock_reasons
        for waiter in self.rows.values():
            waiter.clock = waiter.reason in clock_reasons

    def ids(self) -> list[int]:
        return sorted(self.rows)

    def needs_decision(self, *, modx_id: int, fingerprint: str) -> bool:
        """A re-read row is decided again when MODX changed it or the clock may have."""
        waiter = self.rows.get(modx_id)
        return waiter is None or waiter.fingerprint != fingerprint or waiter.clock

    def plan(
        self, *, decided: Iterable[int], waiting: Mapping[int, tuple[Waiting, str]],
        now: dt.datetime,
    ) -> RecheckChanges:
        """Rows of one chunk: `decided` ids leave the list; `waiting` ids (with their
        fingerprint) join it or stay, with their reason brought up to date."""
        changes = RecheckChanges()
        for modx_id in decided:
            if modx_id in self.rows:
                changes.remove.add(modx_id)
        # Rows already waiting whose state changed keep their times: load them, in one
        # query, only for those.
        self.times_load([
            modx_id for modx_id, (why, fingerprint) in waiting.items()
            if modx_id in self.rows and (
                self.rows[modx_id].reason, self.rows[modx_id].email,
                self.rows[modx_id].fingerprint,
            ) != (why.reason, why.email[:255], fingerprint)
        ])
        for modx_id, (why, fingerprint) in waiting.items():
            known = self.rows.get(modx_id)
            if known is None:
                waiter = Waiter(
                    modx_id=modx_id, reason=why.reason, email=why.email[:255],
                    fingerprint=fingerprint, first_seen_at=now,
                    recheck_until=now + self.period, clock=why.clock, test_id=why.test_id,
                )
                changes.upsert[modx_id] = waiter
                changes.newly_waiting.append(waiter)
            elif (known.reason, known.email, known.fingerprint) != (
                why.reason, why.email[:255], fingerprint
            ):
                waiter = Waiter(
                    modx_id=modx_id, reason=why.reason, email=why.email[:255],
                    fingerprint=fingerprint, first_seen_at=known.first_seen_at,
                    recheck_until=known.recheck_until, clock=why.clock, test_id=why.test_id,
                )
                changes.upsert[modx_id] = waiter
                if known.reason != why.reason:
                    changes.newly_waiting.append(waiter)
        return changes

    def plan_drops(
        self, *, read_ids: Iterable[int], found_ids: Iterable[int], still_waiting: Iterable[int],
        now: dt.datetime,
    ) -> RecheckChanges:
        """After a re-read of `read_ids`: rows MODX no longer has leave the list, and so do
        rows still waiting whose period is over."""
        changes = RecheckChanges()
        found = set(found_ids)
        for modx_id in read_ids:
            waiter = self.rows.get(modx_id)
            if waiter is None:
                continue
            if modx_id not in found:
                changes.remove.add(modx_id)
                changes.vanished.append(waiter)
        for modx_id in still_waiting:
            waiter = self.rows.get(modx_id)
            if waiter is not None and waiter.expired:
                changes.remove.add(modx_id)
                changes.expired.append(waiter)
        return changes

    def bound(self, changes: RecheckChanges) -> None:
        """Past the limit, the rows first seen longest ago leave (they have waited most)."""
        size = len((self.rows.keys() | changes.upsert.keys()) - changes.remove)
        over = size - self.limit
        if over <= 0:
            return
        merged = {**self.rows, **changes.upsert}
        self.times_load([i for i, w in merged.items() if w.first_seen_at is None])
        candidates = sorted(
            (w for i, w in merged.items() if i not in changes.remove),
            key=lambda w: (w.first_seen_at, w.modx_id),
        )
        for waiter in candidates[:over]:
            changes.remove.add(waiter.modx_id)
            changes.upsert.pop(waiter.modx_id, None)
            changes.overflow.append(waiter)

    def times_load(self, ids) -> None:
        """Fill in first seen / recheck until for these rows (one query), for the rare
        paths that need them."""
        missing = sorted(i for i in ids if i in self.rows and self.rows[i].first_seen_at is None)
        for start in range(0, len(missing), 5000):
            for modx_id, first_seen_at, recheck_until in RecheckRow.objects.filter(
                source=self.source, modx_id__in=missing[start:start + 5000]
            ).values_list("modx_id", "first_seen_at", "recheck_until"):
                self.rows[modx_id].first_seen_at = first_seen_at
                self.rows[modx_id].recheck_until = recheck_until

    def apply(self, changes: RecheckChanges) -> None:
        """The in-memory list after `changes` were committed (or planned, in a dry run)."""
        for modx_id in changes.remove:
            self.rows.pop(modx_id, None)
        for modx_id, waiter in changes.upsert.items():
            if modx_id not in changes.remove:
                self.rows[modx_id] = waiter


def recheck_list_load(
    *, source: str, period: dt.timedelta, limit: int, clock_reasons: frozenset[str],
    now: dt.datetime,
) -> RecheckList:
    """The list of `source` in one query (the unique key's leading column): what a re-read
    compares, and whether each row's period is over, decided by the database."""
    # A raw cursor: the ORM's row converters were a third of an idle run's cost with
    # 10,000 rows waiting, for five columns that need no conversion.
    connection = connections[RecheckRow.objects.db]

    def q(name: str) -> str:
        return connection.ops.quote_name(RecheckRow._meta.get_field(name).column)

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {q('modx_id')}, {q('reason')}, {q('email')}, {q('fingerprint')}, "
            f"CASE WHEN {q('recheck_until')} <= %s THEN 1 ELSE 0 END, {q('digest')} "
            f"FROM {connection.ops.quote_name(RecheckRow._meta.db_table)} "
            f"WHERE {q('source')} = %s",
            [connection.ops.adapt_datetimefield_value(now), source],
        )
        rows = {
            modx_id: Waiter(
                modx_id=modx_id, reason=reason, email=email, fingerprint=fingerprint,
                first_seen_at=None, recheck_until=None, expired=bool(expired), digest=digest,
            )
            for modx_id, reason, email, fingerprint, expired, digest in cursor.fetchall()
        }
    return RecheckList(
        source=source, rows=rows, period=period, limit=limit, clock_reasons=clock_reasons
    )


@dataclass(frozen=True)
class RecheckSummary:
    """A list as an idle run needs it: its ids, how many digests it knows and their sum,
    and whether any row needs more than the digest check (a reason the clock can lift, or
    its period over)."""

    ids: list[int]
    total: int  # the sum of the known digests
    unknown: int  # rows without a digest yet
    attention: bool


def recheck_summary_load(
    *, source: str, clock_reasons: frozenset[str], now: dt.datetime
) -> RecheckSummary:
    """One query, three small numbers a row: what a run with nothing changed reads of the
    list instead of the whole of it."""
    connection = connections[RecheckRow.objects.db]

    def q(name: str) -> str:
        return connection.ops.quote_name(RecheckRow._meta.get_field(name).column)

    clock = ", ".join(["%s"] * len(clock_reasons))
    attention = f"{q('recheck_until')} <= %s" + (
        f" OR {q('reason')} IN ({clock})" if clock_reasons else ""
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {q('modx_id')}, {q('digest')}, CASE WHEN {attention} THEN 1 ELSE 0 END "
            f"FROM {connection.ops.quote_name(RecheckRow._meta.db_table)} "
            f"WHERE {q('source')} = %s",
            [connection.ops.adapt_datetimefield_value(now), *sorted(clock_reasons), source],
        )
        rows = cursor.fetchall()
    digests = [digest for _, digest, _ in rows if digest is not None]
    return RecheckSummary(
        ids=sorted(modx_id for modx_id, _, _ in rows),
        total=sum(digests),
        unknown=len(rows) - len(digests),
        attention=any(flag for _, _, flag in rows),
    )


def recheck_digests_save(*, source: str, digests: Mapping[int, int]) -> None:
    """Store MODX's digests of rows whose fingerprint they were read with; call inside the
    transaction of the chunk that read them. One UPDATE per 1,000 rows, written by hand:
    the ORM's Case/When took 2.4 s to build for 9,000 rows, this under 0.2 s."""
    connection = connections[RecheckRow.objects.db]
    q = connection.ops.quote_name
    modx_id = q(RecheckRow._meta.get_field("modx_id").column)
    size = min(1000, ((connection.features.max_query_params or 3001) - 1) // 3)
    ids = sorted(digests)
    with connection.cursor() as cursor:
        for start in range(0, len(ids), size):
            part = ids[start:start + size]
            cursor.execute(
                f"UPDATE {q(RecheckRow._meta.db_table)} "
                f"SET {q(RecheckRow._meta.get_field('digest').column)} = CASE {modx_id} "
                + " ".join(["WHEN %s THEN %s"] * len(part))
                + f" END WHERE {q(RecheckRow._meta.get_field('source').column)} = %s "
                f"AND {modx_id} IN ({', '.join(['%s'] * len(part))})",
                [*(v for i in part for v in (i, digests[i])), source, *part],
            )


def recheck_save(
    *, source: str, changes: RecheckChanges, run: SyncRun | None, now: dt.datetime
) -> None:
    """Write one chunk's changes; call inside the transaction that handles its rows. A row
    already on the list keeps its first-seen and until times (not in update_fields)."""
    keep = {i: w for i, w in changes.upsert.items() if i not in changes.remove}
    if changes.remove:
        ids = sorted(changes.remove)
        for start in range(0, len(ids), 1000):
            RecheckRow.objects.filter(source=source, modx_id__in=ids[start:start + 1000]).delete()
    if keep:
        # MySQL's ON DUPLICATE KEY UPDATE takes no conflict target (any unique key fires);
        # SQLite's ON CONFLICT needs one.
        target = (
            {"unique_fields": ["source", "modx_id"]}
            if connections[RecheckRow.objects.db].features.supports_update_conflicts_with_target
            else {}
        )
        RecheckRow.objects.bulk_create(
            [
                RecheckRow(
                    source=source, modx_id=w.modx_id, reason=w.reason, email=w.email,
                    fingerprint=w.fingerprint, digest=w.digest,
                    first_seen_at=w.first_seen_at or now,
                    recheck_until=w.recheck_until or now, run=run,
                )
                for w in keep.values()
            ],
            batch_size=1000,
            update_conflicts=True,
            update_fields=["reason", "email", "fingerprint", "digest", "run"],
            **target,
        )
