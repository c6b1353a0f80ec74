import datetime as dt
import io

import pytest
from django.core.management import call_command

from funnels.models import FunnelEntry
from funnels.selectors.health import run_health
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def english(settings):
    # Assertions read the English source strings; the default language is Russian.
    settings.LANGUAGE_CODE = "en"


def _health(now):
    out = io.StringIO()
    code = 0
    try:
        call_command("funnels_health", "--as-of", now.isoformat(), stdout=out)
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue()


def _run(now, *, minutes_ago, status="success", **kwargs):
    finished = now - dt.timedelta(minutes=minutes_ago)
    return SyncRunFactory(
        started_at=finished - dt.timedelta(seconds=20), finished_at=finished, status=status,
        **kwargs,
    )


def test_ok_when_a_run_completed_recently(now, settings):
    settings.FUNNELS_SCHEDULE_MINUTES = 15
    run = _run(now, minutes_ago=10)
    code, out = _health(now)
    assert code == 0
    assert out.strip() == f"OK: last run #{run.pk} completed 10 min ago (live)"


def test_critical_when_no_run_ever_completed(now):
    SyncRunFactory(status="failed", started_at=now - dt.timedelta(minutes=5))
    code, out = _health(now)
    assert code == 2
    assert out.startswith("CRITICAL: no run has completed yet")


def test_critical_when_the_last_completed_run_is_older_than_twice_the_schedule(now, settings):
    settings.FUNNELS_SCHEDULE_MINUTES = 15
    run = _run(now, minutes_ago=29)
    assert _health(now)[0] == 0
    code, out = _health(now + dt.timedelta(minutes=2))  # now 31 min old
    assert code == 2
    assert out.strip() == (
        f"CRITICAL: last completed run #{run.pk} finished 31 min ago (limit 30 min)"
    )


def test_warning_after_a_recent_failure(now):
    _run(now, minutes_ago=40, status="success")
    failed = _run(now, minutes_ago=25, status="crashed")
    _run(now, minutes_ago=10, status="success")
    code, out = _health(now)
    assert code == 1
    assert out.startswith("WARNING: 1 of the last 3 runs failed")
    assert f"#{failed.pk}" in out


def test_warning_when_the_last_run_had_brevo_failures(now):
    _run(now, minutes_ago=5, status="partial", contacts_failed=2)
    code, out = _health(now)
    assert code == 1
    assert "2 contacts failed" in out


def test_warning_for_a_run_without_heartbeat(now, settings):
    settings.FUNNELS_SCHEDULE_MINUTES = 15
    _run(now, minutes_ago=5)
    SyncRunFactory(status="running", finished_at=None, started_at=now - dt.timedelta(hours=2),
                   heartbeat_at=now - dt.timedelta(minutes=45))
    code, out = _health(now)
    assert code == 1
    assert "no heartbeat for 45 min" in out


def test_dry_runs_keep_the_job_healthy_and_say_so(now):
    _run(now, minutes_ago=3, dry_run=True)
    code, out = _health(now)
    assert code == 0 and "(dry run)" in out


def test_health_reads_a_constant_number_of_queries(now, django_assert_max_num_queries):
    for minutes in range(0, 600, 15):
        _run(now, minutes_ago=minutes)
    # Three for the runs, one for whether the flood guard holds anything, one count of the
    # rows another writer left in funnel_entries, the runtime row (is the schedule paused?),
    # the latest proof that nobody is lost.
    with django_assert_max_num_queries(7):
        assert run_health(now=now).level == "OK"


def test_critical_while_the_flood_guard_holds_contacts(now):
    _run(now, minutes_ago=5)
    held_by = _run(now, minutes_ago=1, status="held", contacts_held=2)
    for email in ("a@example.com", "b@example.com"):
        FunnelEntryFactory(email=email, sync_status="held", run=held_by)
    code, out = _health(now)
    assert code == 2
    assert out.startswith(f"CRITICAL: 2 new contacts held back from Brevo by the flood "
                          f"guard (run #{held_by.pk})")
    FunnelEntry.objects.update(sync_status="pending")  # released
    assert _health(now)[0] == 0
