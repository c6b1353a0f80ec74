"""services/alerts.py against loopback receivers: the ping, one email per incident."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import translation

from funnels.services import alerts
from funnels.tests.alert_support import PingReceiver, SmtpSink

T0 = dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)


@pytest.fixture
def ping():
    with PingReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def wired(settings, tmp_path, ping, smtp):
    settings.FUNNELS_PING_URL = ping.url
    settings.SENTRY_DSN = ""
    settings.ADMINS = [("", "ops@example.com")]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp.port
    settings.FUNNELS_ALERT_STATE_FILE = tmp_path / "alert-state.json"
    with translation.override("en"):
        yield settings


def _send(status: str, n: int, line: str | None = None) -> alerts.AlertsSent:
    return alerts.alerts_send(status=status, line=line or f"run #{n} {status}", now=T0 + n * STEP,
                              run_id=n)


def test_an_incident_is_one_email_when_it_begins_and_one_when_it_ends(wired, ping, smtp):
    outcomes = ["success", "failed", "failed", "partial", "held", "database", "success",
                "success"]
    sent = [_send(status, n) for n, status in enumerate(outcomes, start=1)]

    assert [s.ping for s in sent] == ["success", "fail", "fail", "fail", "fail", "fail",
                                      "success", "success"]
    assert ping.paths == ["/ping/run-token" + ("" if s == "success" else "/fail")
                          for s in outcomes]
    assert [s.email for s in sent] == [None, "opened", None, None, None, None, "recovered", None]
    assert smtp.subjects() == [
        "[Testizer Funnels] run_funnels: failed",
        "[Testizer Funnels] run_funnels: working again after 5 runs",
    ]
    opened, recovered = smtp.bodies()
    assert "Since: 2026-11-28T16:00:00+00:00" in opened and "Outcome: run #2 failed" in opened
    assert "one more when a run succeeds again" in opened
    assert ("Problem from 2026-11-28T16:00:00+00:00 to 2026-11-28T17:15:00+00:00, 5 runs: "
            "run #2 failed") in recovered
    assert "Last problem: run #6 database" in recovered and "Now: run #7 success" in recovered
    assert [m["To"] for m in smtp.messages] == ["ops@example.com"] * 2
    assert json.loads(wired.FUNNELS_ALERT_STATE_FILE.read_text()) == {}


def test_the_incident_is_remembered_in_the_file_between_processes(wired, smtp):
    _send("failed", 1)
    state = json.loads(wired.FUNNELS_ALERT_STATE_FILE.read_text())
    assert state["status"] == "failed" and state["runs"] == 1
    assert state["notified_at"] == "2026-11-28T15:45:00+00:00"
    # What the next cron process finds: the file alone, nothing in memory.
    assert alerts.incident_read(path=wired.FUNNELS_ALERT_STATE_FILE).since == state["since"]
    _send("config", 2)
    assert len(smtp.messages) == 1
    assert json.loads(wired.FUNNELS_ALERT_STATE_FILE.read_text())["runs"] == 2


def test_an_email_that_could_not_be_sent_is_sent_by_the_next_run(wired, smtp, caplog):
    smtp.refuse = True
    assert _send("failed", 1).email is None
    assert "alert email not sent" in caplog.text
    assert json.loads(wired.FUNNELS_ALERT_STATE_FILE.read_text())["notified_at"] is None
    smtp.refuse = False
    assert _send("failed", 2).email == "opened"
    assert _send("failed", 3).email is None
    assert _send("success", 4).email == "recovered"
    assert len(smtp.messages) == 2


def test_no_recovery_email_when_nobody_was_told(wired, smtp):
    wired.ADMINS = []
    _send("partial", 1)
    wired.ADMINS = [("", "ops@example.com")]
    assert _send("success", 2).email is None
    assert smtp.messages == []
    assert json.loads(wired.FUNNELS_ALERT_STATE_FILE.read_text()) == {}


def test_busy_and_paused_are_not_incidents(wired, ping, smtp):
    assert _send("busy", 1) == alerts.AlertsSent(ping=None, sentry=False, email=None)
    assert _send("paused", 2).ping == "success"
    _send("failed", 3)
    _send("paused", 4)
    _send("busy", 5)
    assert len(smtp.messages) == 1  # still the one incident, not over
    assert ping.paths == ["/ping/run-token", "/ping/run-token/fail", "/ping/run-token"]


def test_channels_that_are_down_never_raise_and_never_log_their_secrets(settings, tmp_path, caplog):
    settings.FUNNELS_PING_URL = "http://127.0.0.1:1/ping/secret-ping-token"
    settings.ADMINS = [("", "ops@example.com")]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 1
    settings.EMAIL_HOST_PASSWORD = "smtp-secret-password"
    settings.FUNNELS_ALERT_STATE_FILE = tmp_path / "alert-state.json"
    sent = _send("failed", 1)
    assert sent == alerts.AlertsSent(ping=None, sentry=False, email=None)
    assert "ping fail not delivered" in caplog.text and "alert email not sent" in caplog.text
    assert "secret-ping-token" not in caplog.text and "smtp-secret-password" not in caplog.text
