"""The schedule's pause switch: admin (permission, audit), run_funnels, funnels_health."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from funnels.models import SyncRun
from funnels.selectors.health import OK, WARNING, run_health
from funnels.services.runtime import runtime_settings_get
from funnels.services.schedule import schedule_pause_set
from funnels.tests.factories import SyncRunFactory
from funnels.tests.sync_support import run_funnels_command

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

SCHEDULE_URL = reverse("admin:funnels_schedule")
INDEX_URL = reverse("admin:index")


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"


_call = run_funnels_command


def test_pausing_needs_its_own_permission(django_user_model, client):
    user = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    client.force_login(user)
    assert client.post(SCHEDULE_URL, {"schedule": "pause"}).status_code == 403
    assert runtime_settings_get().schedule_paused is False
    assert 'id="funnels-schedule-denied"' in client.get(INDEX_URL).content.decode()


def test_pause_and_resume_are_audited_and_shown_in_the_header(admin_client, admin_user):
    response = admin_client.post(SCHEDULE_URL, {"schedule": "pause"})
    assert response.status_code == 302
    row = runtime_settings_get()
    assert row.schedule_paused is True and row.schedule_paused_at is not None
    html = admin_client.get(INDEX_URL).content.decode()
    assert 'id="funnels-schedule-paused"' in html
    assert "schedule paused" in html  # the audit line, in words
    # Every admin page carries the badge, like the mode.
    runs = admin_client.get(reverse("admin:funnels_syncrun_changelist")).content.decode()
    assert 'id="funnels-schedule-paused"' in runs

    admin_client.post(SCHEDULE_URL, {"schedule": "resume"})
    assert runtime_settings_get().schedule_paused is False
    assert 'id="funnels-schedule-paused"' not in admin_client.get(INDEX_URL).content.decode()
    assert list(LogEntry.objects.order_by("id").values_list("change_message", flat=True)) == [
        "schedule: paused", "schedule: resumed",
    ]
    assert admin_client.post(SCHEDULE_URL, {"schedule": "sideways"}).status_code == 400


def test_a_scheduled_run_records_paused_and_exits_6_at_once(admin_user, settings):
    schedule_pause_set(user=admin_user, paused=True, now=dt.datetime.now(dt.UTC))
    code, _out, _err = _call("--trigger", "cron", "--dry-run")
    assert code == 6
    run = SyncRun.objects.get()
    assert (run.status, run.trigger, run.results_read) == ("paused", "cron", 0)
    assert run.finished_at is not None


def test_a_run_by_hand_needs_the_explicit_flag_while_paused(admin_user):
    schedule_pause_set(user=admin_user, paused=True, now=dt.datetime.now(dt.UTC))
    code, _out, err = _call("--dry-run")
    assert code == 6 and "--ignore-pause" in err
    assert SyncRun.objects.count() == 0
    code, out, err = _call("--dry-run", "--ignore-pause")
    assert code == 0, err
    assert SyncRun.objects.get().status == "success"


def test_health_warns_once_the_pause_is_old(admin_user, settings):
    settings.FUNNELS_PAUSE_WARN_MINUTES = 60
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    SyncRunFactory(status="success", started_at=now - dt.timedelta(hours=5),
                   finished_at=now - dt.timedelta(hours=5))
    schedule_pause_set(user=admin_user, paused=True, now=now - dt.timedelta(minutes=30))
    # Paused on purpose: no completed run is expected, and that is not CRITICAL.
    assert run_health(now=now).level == OK
    late = run_health(now=now + dt.timedelta(minutes=31))
    assert late.level == WARNING and "paused" in late.message
