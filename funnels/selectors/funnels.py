"""Reads of our own funnel tables that the sync engine needs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from django.conf import settings
from django.db.models import BinaryField, F, Func, Q
from django.db.models.functions import Lower, Trim
from django.db.models.lookups import Exact

from funnels.brevo.attributes import AttributeNames
from funnels.models import Funnel, FunnelEntry, SyncState, SyncStatus

# The two standard funnels may take their list from the environment, so that a fresh
# installation configured only through .env works; a list id saved on the row wins.
_SETTINGS_LIST_IDS = {
    "language": "BREVO_LANGUAGE_LIST_ID",
    "non_language": "BREVO_NON_LANGUAGE_LIST_ID",
}


def funnels_all() -> list[Funnel]:
    return list(Funnel.objects.order_by("id"))


def funnel_accepts(*, funnel: Funnel, kind: str | None, test_id: int | None) -> bool:
    """Does a result of this test (kind and id) qualify for the funnel?"""
    if test_id is None:
        return False
    if funnel.test_kind != Funnel.TestKind.ANY and funnel.test_kind != kind:
        return False
    wanted = funnel.test_ids or []
    return not wanted or test_id in {int(t) for t in wanted}


def funnel_list_id(*, funnel: Funnel) -> int | None:
    if funnel.brevo_list_id:
        return int(funnel.brevo_list_id)
    setting = _SETTINGS_LIST_IDS.get(funnel.slug)
    value = getattr(settings, setting, None) if setting else None
    return int(value) if value else None


def funnel_list_ids(*, funnels: list[Funnel] | None = None) -> dict[str, int | None]:
    """Funnel slug -> Brevo list id, for the given funnels (default: every funnel row).
    A run looks them up once and hands them to each phase."""
    if funnels is None:
        funnels = funnels_all()
    return {funnel.slug: funnel_list_id(funnel=funnel) for funnel in funnels}


def funnel_attribute_names() -> dict[str, AttributeNames]:
    """Funnel slug -> the Brevo attributes it writes, for every funnel row."""
    return {
        slug: AttributeNames(funnel_type=funnel_type, purchased=purchased,
                             purchased_at=purchased_at)
        for slug, funnel_type, purchased, purchased_at in Funnel.objects.values_list(
            "slug", "attribute_funnel_type", "attribute_purchased", "attribute_purchased_at"
        )
    }


# MySQL's documented DATETIME minimum: every date this job writes passes (a MODX result
# dated 1970 too). A zero date (which MariaDB without strict SQL mode stores in a NOT NULL
# column and mysqlclient reads as None) and NULL both fail `entered_at >= this`, in the
# database, before Python ever sees the row.
EARLIEST_ENTRY = dt.datetime(1000, 1, 1, tzinfo=dt.timezone.utc)


class _AsBytes(Func):
    """The value as bytes: compared with no collation (case) and no PAD SPACE."""

    template = "CAST(%(expressions)s AS BLOB)"
    output_field = BinaryField()

    def as_mysql(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection,
                              template="CAST(%(expressions)s AS BINARY)", **extra)


def funnel_entry_usable_q() -> Q:
    """THE definition of a funnel_entries row this job can use; every read of entries
    that a run acts on applies it, and what fails it is reported and left alone.

    Rows we write always pass. Rows another writer put in our table (the earlier tool's
    cron, on a server without strict SQL mode, inserting only its own columns) fail on
    at least one point: a zero or NULL `entered_at`, a `sync_status` that is none of ours
    (such an insert leaves it empty), or an email not in our normalised form (surrounding
    spaces or capitals). The email is compared as bytes: the column's collation would
    call "Anna@X.com " equal to "anna@x.com" on MariaDB.
    """
    email = _AsBytes(F("email"))
    normalised = _AsBytes(Lower(Trim(F("email"))))
    return (
        Q(entered_at__gte=EARLIEST_ENTRY)
        & Q(sync_status__in=SyncStatus.values)
        & Q(email__gt="")
        & Q(Exact(email, normalised))
    )


def funnel_entries_unusable_count() -> int:
    """Rows of funnel_entries this job cannot use (funnels_health, the admin filter).
    One pass over the table: for monitoring, never part of a run."""
    return FunnelEntry.objects.exclude(funnel_entry_usable_q()).count()


class ExistingEntry(NamedTuple):
    id: int
    entered_at: dt.datetime
    previous_entered_at: dt.datetime | None


def funnel_entries_existing(
    *, emails: Iterable[str], funnel_types: Iterable[str]
) -> dict[tuple[str, str, int | None], ExistingEntry]:
    """(email, funnel_type, test_id) -> the entry these people already have: ONE query,
    served by idx_email_funnel. The times let a writer keep previous_entered_at."""
    emails = sorted(set(emails))
    funnel_types = sorted(set(funnel_types))
    if not emails or not funnel_types:
        return {}
    return {
        (email, funnel_type, test_id): ExistingEntry(pk, entered_at, previous)
        for email, funnel_type, test_id, pk, entered_at, previous in FunnelEntry.objects.filter(
            funnel_entry_usable_q(), email__in=emails, funnel_type__in=funnel_types
        ).values_list(
            "email", "funnel_type", "test_id", "id", "entered_at", "previous_entered_at"
        )
    }


def watermark_get(*, key: str) -> int | None:
    """The last MODX id fully handled by `key`'s reader; None before the first live run."""
    return SyncState.objects.filter(key=key).values_list("last_id", flat=True).first()


@dataclass(frozen=True)
class WatermarkState:
    """An incremental reader's position: every id up to `last_id` has been handled, except
    `gaps`, the ids that were missing when the watermark moved past them, each with the
    time it was first seen missing. `stored` is False until the SyncState row exists."""

    key: str
    last_id: int
    gaps: Mapping[int, dt.datetime] = field(default_factory=dict)
    stored: bool = True


def watermark_gaps_decode(value) -> dict[int, dt.datetime]:
    """SyncState.gaps ({iso time: [ids]}) -> {id: aware UTC time}."""
    gaps: dict[int, dt.datetime] = {}
    for seen, ids in (value or {}).items():
        when = dt.datetime.fromisoformat(seen)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        for gap_id in ids:
            gap_id = int(gap_id)
            # The same id twice (never written so, but cheap to tolerate): the earliest wins.
            if gap_id not in gaps or when < gaps[gap_id]:
                gaps[gap_id] = when
    return gaps


def watermark_gaps_encode(gaps: Mapping[int, dt.datetime]) -> dict[str, list[int]]:
    """{id: time} -> SyncState.gaps, grouped by time, both levels sorted."""
    grouped: dict[str, list[int]] = {}
    for gap_id, when in sorted(gaps.items(), key=lambda item: (item[1], item[0])):
        seen = when.astimezone(dt.timezone.utc).isoformat()
        grouped.setdefault(seen, []).append(int(gap_id))
    return grouped


def watermark_state_get(*, key: str) -> WatermarkState | None:
    """The watermark and its gaps in one query; None before the first live run."""
    row = SyncState.objects.filter(key=key).values_list("last_id", "gaps").first()
    if row is None:
        return None
    last_id, gaps = row
    return WatermarkState(key=key, last_id=last_id, gaps=watermark_gaps_decode(gaps))
