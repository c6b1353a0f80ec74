"""Dashboard numbers and job health, computed against a pinned clock."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connections
from django.db.utils import load_backend
from django.test.utils import CaptureQueriesContext

from funnels.models import Funnel, SyncRun, SyncRunItem, SyncStatus
from funnels.modx.models import TestResult
from funnels.selectors.dashboard import (
    admin_status_get,
    dashboard_get,
    funnels_without_list_get,
    live_mode_blockers_get,
    modx_results_count,
    period_starts,
    run_health_get,
)
from funnels.services.runtime import dry_run_set
from funnels.tests.factories import (
    FunnelEntryFactory,
    SyncRunFactory,
    SyncRunItemFactory,
    TestResultFactory,
)

UTC = dt.UTC
BOTH = pytest.mark.django_db(databases=["default", "modx"])

# conftest's CURRENT_TIME: Saturday 2026-11-28 15:30 UTC, 18:30 in Moscow.
TODAY_START = dt.datetime(2026, 11, 27, 21, 0, tzinfo=UTC)  # Sat 00:00 Moscow
WEEK_START = dt.datetime(2026, 11, 22, 21, 0, tzinfo=UTC)  # Mon 23 Nov 00:00 Moscow
SECOND = dt.timedelta(seconds=1)


@pytest.fixture
def modx_unreachable():
    """Point the MODX alias at a database that cannot be opened: a real failure."""
    original = connections["modx"]
    broken_settings = dict(original.settings_dict)
    if original.vendor == "sqlite":
        broken_settings["NAME"] = "/nonexistent-directory/modx.sqlite3"
    else:
        # Nothing listens on port 1: the connection is refused at once.
        broken_settings.update(HOST="127.0.0.1", PORT=1)
    broken = load_backend(broken_settings["ENGINE"]).DatabaseWrapper(broken_settings, "modx")
    connections["modx"] = broken
    try:
        yield
    finally:
        broken.close()
        connections["modx"] = original


def test_period_starts_are_local_midnights(now, settings):
    assert period_starts(now=now, tz_name="Europe/Moscow") == (TODAY_START, WEEK_START)
    # Monday 01:30 in Moscow is still Sunday in UTC: the local calendar decides.
    monday_night = dt.datetime(2026, 11, 29, 22, 30, tzinfo=UTC)
    monday = dt.datetime(2026, 11, 29, 21, 0, tzinfo=UTC)
    assert period_starts(now=monday_night, tz_name="Europe/Moscow") == (monday, monday)
    assert period_starts(now=now, tz_name="UTC") == (
        dt.datetime(2026, 11, 28, tzinfo=UTC),
        dt.datetime(2026, 11, 23, tzinfo=UTC),
    )


@BOTH
def test_dashboard_counts_entries_and_purchases_by_local_day_and_week(now):
    for entered in (TODAY_START, now - SECOND):
        FunnelEntryFactory(entered_at=entered)  # today
    for entered in (TODAY_START - SECOND, WEEK_START):
        FunnelEntryFactory(entered_at=entered)  # this week, not today
    FunnelEntryFactory(entered_at=WEEK_START - SECOND)  # last week
    old = dt.datetime(2026, 11, 1, tzinfo=UTC)
    FunnelEntryFactory(entered_at=old, certificate_purchased=True,
                       certificate_purchased_at=TODAY_START + SECOND)
    FunnelEntryFactory(entered_at=old, certificate_purchased=True,
                       certificate_purchased_at=WEEK_START)
    FunnelEntryFactory(entered_at=old, certificate_purchased=True,
                       certificate_purchased_at=WEEK_START - SECOND)

    dashboard = dashboard_get(now=now)

    assert (dashboard.entries.today, dashboard.entries.week) == (2, 4)
    assert (dashboard.purchases.today, dashboard.purchases.week) == (1, 2)
    assert (dashboard.today_start, dashboard.week_start) == (TODAY_START, WEEK_START)


@BOTH
def test_dashboard_counts_pending_and_failed_syncs(now):
    for status, n in ((SyncStatus.PENDING, 2), (SyncStatus.FAILED, 3), (SyncStatus.SYNCED, 4)):
        for _ in range(n):
            FunnelEntryFactory(sync_status=status)
    dashboard = dashboard_get(now=now)
    assert (dashboard.sync_pending, dashboard.sync_failed) == (2, 3)


@BOTH
def test_dashboard_compares_new_test_results_with_new_entries_over_the_last_day(now):
    day_ago = now - dt.timedelta(days=1)
    old = TestResultFactory(completed_at=day_ago - SECOND)
    recent = [
        TestResultFactory(completed_at=completed)
        for completed in (day_ago, now - dt.timedelta(hours=3), now - dt.timedelta(minutes=5),
                          now - dt.timedelta(minutes=1), now - dt.timedelta(hours=20))
    ]
    TestResultFactory(completed_at=None)
    FunnelEntryFactory(entered_at=now - dt.timedelta(hours=3))
    FunnelEntryFactory(entered_at=day_ago - SECOND)
    live = SyncRunFactory(started_at=now - dt.timedelta(hours=2), dry_run=False, skipped=3)
    # Counted by the result's time, like the MODX count: two of the day's results were
    # skipped (one of them in two funnels); the older result's skip is outside the day,
    # even though the run that skipped it is inside it.
    for result, slug in ((recent[0], "language"), (recent[0], "non_language"),
                         (recent[2], ""), (old, "")):
        SyncRunItemFactory(run=live, action=SyncRunItem.Action.SKIPPED, source_id=result.pk,
                           reason="duplicate_in_batch" if slug else "invalid_email",
                           funnel_type=slug)
    # A dry run re-reads what live runs already handled.
    dry = SyncRunFactory(started_at=now - dt.timedelta(hours=1), dry_run=True, skipped=40)
    SyncRunItemFactory(run=dry, action=SyncRunItem.Action.SKIPPED, source_id=recent[1].pk,
                       reason="invalid_email")

    dashboard = dashboard_get(now=now)

    assert dashboard.modx_results_last_day == 5
    assert dashboard.entries_last_day == 1
    assert dashboard.skipped_last_day == 2
    assert dashboard.unaccounted_last_day == 2
    assert dashboard.modx_unreachable is False


@BOTH
def test_dashboard_lists_the_last_runs_newest_first(now):
    runs = [SyncRunFactory(started_at=now - dt.timedelta(minutes=15 * n)) for n in range(12)]
    dashboard = dashboard_get(now=now)
    assert [r.pk for r in dashboard.last_runs] == [r.pk for r in runs[:10]]


@BOTH
def test_dashboard_costs_a_constant_number_of_queries(now, django_assert_num_queries):
    def measure() -> tuple[int, int]:
        # runs, entries, purchases, sync states, and the day's skips and waiting results
        # once MODX has results of the day
        expected = 6 if TestResult.objects.exists() else 4
        with CaptureQueriesContext(connections["modx"]) as modx_queries:
            with django_assert_num_queries(expected):
                dashboard_get(now=now)
        return len(modx_queries.captured_queries)

    assert measure() == 1
    for n in range(30):
        FunnelEntryFactory(entered_at=now - dt.timedelta(hours=n), sync_status=SyncStatus.FAILED)
        TestResultFactory(completed_at=now - dt.timedelta(hours=n))
        SyncRunFactory(started_at=now - dt.timedelta(minutes=15 * n))
    assert measure() == 1


@BOTH
def test_dashboard_still_answers_when_modx_is_unreachable(now, modx_unreachable):
    FunnelEntryFactory(entered_at=now - dt.timedelta(hours=1))
    dashboard = dashboard_get(now=now)
    assert dashboard.modx_unreachable is True
    assert dashboard.modx_results_last_day is None
    assert dashboard.unaccounted_last_day is None
    assert dashboard.entries.today == 1


@BOTH
def test_modx_results_count_reports_unreachable_as_none(now, modx_unreachable):
    assert modx_results_count(since=now) is None


# --- Health -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_no_run_at_all_is_stale(now):
    health = run_health_get(now=now)
    assert health.stale is True
    assert health.last_completed_run is None and health.last_run_broken is False


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status, minutes_ago, stale, broken",
    [
        (SyncRun.Status.SUCCESS, 10, False, False),
        (SyncRun.Status.SUCCESS, 29, False, False),  # 15-minute schedule: up to 30 is fine
        (SyncRun.Status.SUCCESS, 31, True, False),
        (SyncRun.Status.PARTIAL, 10, False, False),  # it ran to the end
        # As funnels_health judges it (selectors.health): a held run completed its reads.
        (SyncRun.Status.HELD, 10, False, False),
        (SyncRun.Status.FAILED, 10, True, True),
        (SyncRun.Status.CRASHED, 10, True, True),
    ],
)
def test_health_of_a_single_run(now, settings, status, minutes_ago, stale, broken):
    settings.FUNNELS_SCHEDULE_MINUTES = 15
    finished = now - dt.timedelta(minutes=minutes_ago)
    SyncRunFactory(started_at=finished - dt.timedelta(seconds=20), finished_at=finished,
                   status=status)
    health = run_health_get(now=now)
    assert (health.stale, health.last_run_broken) == (stale, broken)
    assert health.schedule_minutes == 15


@pytest.mark.django_db
def test_a_failure_after_a_recent_success_warns_but_is_not_stale(now):
    SyncRunFactory(started_at=now - dt.timedelta(minutes=20), status=SyncRun.Status.SUCCESS)
    failed = SyncRunFactory(started_at=now - dt.timedelta(minutes=5), status=SyncRun.Status.FAILED)
    health = run_health_get(now=now)
    assert health.last_run_broken is True and health.last_finished_run == failed
    assert health.stale is False


@pytest.mark.django_db
def test_a_run_in_progress_does_not_hide_the_previous_failure(now):
    failed = SyncRunFactory(started_at=now - dt.timedelta(minutes=16),
                            status=SyncRun.Status.CRASHED)
    SyncRunFactory(started_at=now - dt.timedelta(minutes=1), finished_at=None,
                   status=SyncRun.Status.RUNNING)
    health = run_health_get(now=now)
    assert health.last_finished_run == failed and health.last_run_broken is True


@pytest.mark.django_db
def test_a_success_after_a_failure_clears_the_warning(now):
    SyncRunFactory(started_at=now - dt.timedelta(minutes=20), status=SyncRun.Status.FAILED)
    SyncRunFactory(started_at=now - dt.timedelta(minutes=5), status=SyncRun.Status.SUCCESS)
    health = run_health_get(now=now)
    assert (health.stale, health.last_run_broken) == (False, False)


@pytest.mark.django_db
def test_admin_status_reports_the_stored_mode(now, django_user_model, django_assert_num_queries):
    user = django_user_model.objects.create_user("op", password="pw-for-tests-1")
    SyncRunFactory(started_at=now - dt.timedelta(minutes=3))
    with django_assert_num_queries(2):  # the mode row and the last finished run
        assert admin_status_get(now=now).dry_run is True
    dry_run_set(user=user, value=False)
    assert admin_status_get(now=now).dry_run is False


# --- Live-mode readiness ----------------------------------------------------------------


@pytest.mark.django_db
def test_live_mode_needs_an_api_key(settings):
    settings.BREVO_LANGUAGE_LIST_ID, settings.BREVO_NON_LANGUAGE_LIST_ID = 1, 2
    settings.BREVO_API_KEY = ""
    assert len(live_mode_blockers_get()) == 1
    settings.BREVO_API_KEY = "xkeysib-present"
    assert live_mode_blockers_get() == []


@pytest.mark.django_db
def test_active_funnels_without_a_list_are_named(settings):
    Funnel.objects.filter(slug="language").update(brevo_list_id=5, active=True)
    Funnel.objects.filter(slug="non_language").update(brevo_list_id=None, active=True)
    settings.BREVO_NON_LANGUAGE_LIST_ID = None
    Funnel.objects.create(slug="off", name="Off", test_kind="any", certificate_type=1,
                          active=False)
    assert [f.slug for f in funnels_without_list_get()] == ["non_language"]
