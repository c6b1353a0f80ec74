"""The report read from the runs' rollup equals the report counted from the entries,
exactly, on both databases: after a rebuild, with days dirty, after a refresh, in Moscow
and in a zone with summer time (reports/rollup.py, funnels/services/report_rollup.py)."""

from __future__ import annotations

import datetime as dt
import random
import re
import zoneinfo

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from funnels.models import (
    ControlPeriod,
    ExperimentGroup,
    Funnel,
    FunnelEntry,
    ReportRollup,
    ReportRollupDirty,
    ReportRollupState,
    SyncStatus,
)
from funnels.services.entries import entries_previous_refresh
from funnels.local_days import day_number
from funnels.services.report_rollup import (
    report_days_dirty_mark,
    report_rollup_refresh,
)
from reports.rollup import days_follow_midnights
from reports.selectors import conversion_report
from reports.tests.helpers import utc

pytestmark = pytest.mark.django_db

D = dt.date
H = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
AS_OF = utc(2027, 2, 1)
# Around summer time in Berlin (2026-03-29 and 2026-10-25) and over Moscow's New Year.
SPAN_FROM = utc(2026, 2, 20)
SPAN_DAYS = 260


def _purchase_after(rng: random.Random) -> dt.timedelta | None:
    """Every edge of the window: at entry, whole hours, exactly 1, 7, 30 and 365 days and
    a second more, and the usual spread."""
    return rng.choice([
        None, None, None, dt.timedelta(0), H, 5 * H + dt.timedelta(seconds=1), DAY,
        DAY + dt.timedelta(seconds=1), 7 * DAY, 30 * DAY, 30 * DAY + dt.timedelta(seconds=1),
        29 * DAY + 23 * H + dt.timedelta(seconds=3599), 365 * DAY, 365 * DAY + H,
        dt.timedelta(seconds=rng.randrange(0, 40 * 86400)),
        dt.timedelta(seconds=rng.randrange(0, 400 * 86400)),
    ])


def _moment(rng: random.Random, zone: dt.tzinfo) -> dt.datetime:
    """A random second of the span, often just before or at a local midnight."""
    day = SPAN_FROM + dt.timedelta(days=rng.randrange(SPAN_DAYS))
    local = day.astimezone(zone).date()
    midnight = dt.datetime.combine(local, dt.time(), tzinfo=zone).astimezone(dt.timezone.utc)
    kind = rng.randrange(4)
    if kind == 0:
        return midnight
    if kind == 1:
        return midnight - dt.timedelta(seconds=1)
    return day + dt.timedelta(seconds=rng.randrange(86400), microseconds=rng.randrange(2) * 500000)


def _people(*, seed: int, zone: dt.tzinfo, n: int = 160, tests_from: int = 100) -> None:
    """People with one to three entries per funnel (other tests), purchases as the sync
    sets them (each entry the earliest purchase at or after it) plus some rows whose
    purchase predates the entry, refunds (none), control and treatment in periods 0-2,
    funnels started before, at, after the purchase or never."""
    rng = random.Random(seed)
    for slug in ("language", "non_language"):
        funnel = Funnel.objects.get(slug=slug)
        ControlPeriod.objects.get_or_create(
            funnel=funnel, number=1, defaults={"share": 20, "started_at": SPAN_FROM},
        )
        ControlPeriod.objects.get_or_create(
            funnel=funnel, number=2, defaults={"share": 0, "started_at": SPAN_FROM + 90 * DAY},
        )
    rows = []
    for i in range(n):
        slug = rng.choice(["language", "non_language"])
        times = sorted(_moment(rng, zone) for _ in range(rng.choice([1, 1, 2, 3])))
        if len(times) > 1 and rng.random() < 0.2:
            times[1] = times[0]  # two entries at the same second: ordered by id
        after = _purchase_after(rng)
        paid = None if after is None else times[0] + after
        control = rng.random() < 0.3
        period = rng.choice([0, 1, 1, 2])
        for k, entered in enumerate(times):
            bought = paid if paid is not None and paid >= entered else None
            if bought is None and paid is not None and rng.random() < 0.3:
                bought = paid  # a purchase before the entry: never counted
            started = rng.choice([
                None, entered, entered + 30 * dt.timedelta(minutes=1),
                (bought or entered) + H, bought,
            ])
            rows.append(FunnelEntry(
                email=f"p{i}@example.com", funnel_type=slug, user_id=i, test_id=tests_from + k,
                entered_at=entered, test_completed_at=entered,
                certificate_purchased=bought is not None, certificate_purchased_at=bought,
                experiment_group=ExperimentGroup.CONTROL if control else ExperimentGroup.TREATMENT,
                control_period=period,
                sync_status=SyncStatus.CONTROL if control else SyncStatus.SYNCED,
                funnel_started_at=started,
            ))
    FunnelEntry.objects.bulk_create(rows)
    entries_previous_refresh(keys={(r.funnel_type, r.email) for r in rows})


REQUESTS = [
    dict(date_from=D(2026, 2, 20), date_to=D(2026, 11, 6), group_by="funnel", window_days=30),
    dict(date_from=D(2026, 3, 1), date_to=D(2026, 10, 31), group_by="week", window_days=1),
    dict(date_from=D(2026, 3, 25), date_to=D(2026, 4, 5), group_by="day", window_days=7),
    dict(date_from=D(2026, 4, 1), date_to=D(2026, 9, 30), group_by="month", window_days=365),
    dict(date_from=D(2026, 6, 10), date_to=D(2026, 6, 20), group_by="day", window_days=30),
    dict(date_from=D(2026, 10, 24), date_to=D(2026, 10, 26), group_by="day", window_days=2),
    dict(date_from=D(2026, 5, 1), date_to=D(2026, 5, 31), group_by="test", window_days=30),
]


def _reports(zone) -> list:
    return [
        conversion_report(**request, tz=zone, as_of=AS_OF) for request in REQUESTS
    ]


def _from_entries(zone) -> list:
    """The same reports without the rollup (its state row removed, then restored)."""
    with transaction.atomic():
        ReportRollupState.objects.all().delete()
        reports = _reports(zone)
        transaction.set_rollback(True)
    return reports


def _assert_same(zone) -> None:
    expected = _from_entries(zone)
    actual = _reports(zone)
    for request, want, got in zip(REQUESTS, expected, actual):
        assert got == want, request


def _reads(zone) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        _reports(zone)
    return [q["sql"] for q in captured.captured_queries]


@pytest.mark.parametrize("zone_name", ["Europe/Moscow", "Europe/Berlin"])
def test_the_rollup_gives_the_report_of_the_entries_exactly(funnels, settings, zone_name):
    settings.TIME_ZONE = zone_name
    zone = zoneinfo.ZoneInfo(zone_name)
    _people(seed=12, zone=zone)
    # Something to count in every request, converted people and both groups included.
    plain = _from_entries(zone)
    assert [bool(r.totals.entered) for r in plain] == [True] * len(REQUESTS), \
        [r.totals for r in plain]
    assert sum(bool(r.totals.converted) for r in plain) >= len(REQUESTS) - 1
    assert any(r.lift.rows for r in _from_entries(zone))

    result = report_rollup_refresh(rebuild=True)
    assert result.full and result.rows == ReportRollup.objects.count() > 0
    assert not ReportRollupDirty.objects.exists()
    _assert_same(zone)
    # Clean: the entries are read only for the test grouping, which the rollup lacks.
    reads = [sql for sql in _reads(zone) if "funnel_entries" in sql]
    assert len(reads) == 1 and "test_id" in reads[0]

    # Changes, each marked as the writers mark them: new people and re-entries (their
    # previous entries relinked), purchases set, moved and withdrawn, funnels started.
    changed = list(FunnelEntry.objects.order_by("id")[::25])
    for n, entry in enumerate(changed):
        if n % 3 == 0:
            entry.certificate_purchased_at = entry.entered_at + 2 * H + n * DAY
        elif n % 3 == 1:
            entry.certificate_purchased_at = None
        entry.funnel_started_at = entry.funnel_started_at or entry.entered_at + H
        entry.save(update_fields=["certificate_purchased_at", "funnel_started_at"])
    report_days_dirty_mark(times=[e.entered_at for e in changed])
    # Re-entries of existing people under other tests (their links are refreshed).
    _people(seed=13, zone=zone, n=8, tests_from=200)
    report_days_dirty_mark(times=FunnelEntry.objects.filter(
        email__in=[f"p{i}@example.com" for i in range(8)]
    ).values_list("entered_at", flat=True))
    assert ReportRollupDirty.objects.exists()
    _assert_same(zone)

    result = report_rollup_refresh()
    assert not result.full and result.days > 0
    assert not ReportRollupDirty.objects.exists()
    _assert_same(zone)

    # A change nobody marks shows in the entries, not in the rollup: the report did read
    # the rollup (which is why every writer must mark).
    entry = FunnelEntry.objects.filter(certificate_purchased_at__isnull=True).earliest("id")
    FunnelEntry.objects.filter(id=entry.id).update(
        certificate_purchased_at=entry.entered_at + H, previous_entered_at=None,
    )
    assert _from_entries(zone) != _reports(zone)


def test_a_rebuild_in_another_zone_is_not_read_and_the_next_refresh_redoes_it(
    funnels, settings
):
    zone = zoneinfo.ZoneInfo("Europe/Moscow")
    _people(seed=3, zone=zone, n=40)
    report_rollup_refresh(rebuild=True)
    settings.TIME_ZONE = "Europe/Berlin"
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    # Berlin's report from a Moscow rollup would be wrong by a day: entries are read.
    assert not any(re.search(r"FROM [`\"]report_rollup[`\"] ", sql) for sql in _reads(berlin))
    assert report_rollup_refresh().full
    assert ReportRollupState.objects.get().time_zone == "Europe/Berlin"
    _assert_same(berlin)


def test_a_rollup_never_built_is_built_whole_by_the_first_refresh(funnels):
    """A new install: the migration found no entries, so the first live run's refresh
    builds it; without that the report would count from the entries forever."""
    zone = zoneinfo.ZoneInfo("Europe/Moscow")
    _people(seed=4, zone=zone, n=5)
    assert not ReportRollupState.objects.exists()
    result = report_rollup_refresh()
    assert result.full and result.rows == ReportRollup.objects.count() > 0
    assert ReportRollupState.objects.get().time_zone == "Europe/Moscow"
    _assert_same(zone)


def test_a_report_from_a_clean_rollup_reads_no_entries_and_stays_five_queries(
    funnels, django_assert_num_queries
):
    _people(seed=5, zone=zoneinfo.ZoneInfo("Europe/Moscow"), n=30)
    report_rollup_refresh(rebuild=True)
    # Funnels, the rollup's state, period, previous period, control periods, the lift.
    with django_assert_num_queries(6):
        conversion_report(date_from=D(2026, 3, 1), date_to=D(2026, 10, 31))
    # A dirty day in the period: one more read each, of that day's entries.
    report_days_dirty_mark(times=[utc(2026, 5, 5, 12)])
    with django_assert_num_queries(8):
        conversion_report(date_from=D(2026, 3, 1), date_to=D(2026, 10, 31))


def test_days_follow_midnights_only_where_clock_changes_keep_them():
    assert days_follow_midnights(date_from=D(2026, 1, 1), date_to=D(2026, 12, 31),
                                 zone=zoneinfo.ZoneInfo("Europe/Berlin"))
    # Cuba moves its clocks at midnight (00:00 -> 01:00 in March): that day starts at the
    # jump, which is local_midnight's answer, so the rollup serves it. Samoa skipped
    # 2011-12-30 altogether: the date jumps two days, and the entries are read.
    havana = zoneinfo.ZoneInfo("America/Havana")
    assert days_follow_midnights(date_from=D(2026, 3, 1), date_to=D(2026, 3, 31), zone=havana)
    assert days_follow_midnights(date_from=D(2026, 11, 1), date_to=D(2026, 11, 3), zone=havana)
    assert not days_follow_midnights(date_from=D(2011, 12, 20), date_to=D(2012, 1, 3),
                                     zone=zoneinfo.ZoneInfo("Pacific/Apia"))


def test_marks_are_local_days_of_the_site_zone(settings):
    settings.TIME_ZONE = "Europe/Moscow"
    # 20:59:59 UTC is 23:59:59 in Moscow; 21:00 UTC is the next day there.
    report_days_dirty_mark(times=[utc(2026, 11, 10, 20, 59, 59), utc(2026, 11, 11, 21), None])
    assert set(ReportRollupDirty.objects.values_list("day", flat=True)) == {
        day_number(day=D(2026, 11, 10)), day_number(day=D(2026, 11, 12)),
    }
    report_days_dirty_mark(times=[utc(2026, 11, 10, 12)])  # already marked: ignored
    assert ReportRollupDirty.objects.count() == 2
