"""run_funnels as cron starts it, with every alert channel wired to a loopback receiver:
the ping URL, Sentry (SENTRY_DSN, real sentry-sdk envelopes) and the admins' SMTP server.
"""

from __future__ import annotations

import re

import pytest

from funnels.tests.alert_support import PingReceiver, SentryReceiver, SmtpSink
from funnels.tests.sync_support import (
    API_KEY,
    manage_run,
    subprocess_env,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"], transaction=True)


@pytest.fixture
def receivers():
    with PingReceiver() as ping, SentryReceiver() as sentry, SmtpSink() as smtp:
        yield ping, sentry, smtp


def test_a_failed_run_and_a_lost_database_reach_ping_sentry_and_mail_then_recovery(
    live_two_people, fake_brevo, receivers, tmp_path
):
    ping, sentry, smtp = receivers
    env = subprocess_env(
        fake=fake_brevo, log_file=tmp_path / "app.log",
        FUNNELS_PING_URL=ping.url, SENTRY_DSN=sentry.dsn,
        ADMINS="ops@example.com,lead@example.com", EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(smtp.port), FUNNELS_ALERT_STATE_FILE=str(tmp_path / "alerts.json"),
        FUNNELS_INITIAL_LOOKBACK_DAYS="3650", BREVO_MAX_RETRIES="0",
    )

    refused = manage_run("run_funnels", env={**env, "BREVO_API_KEY": "xkeysib-wrong-0000-key"})
    lost = manage_run("run_funnels", env={**env, "MODX_DATABASE_URL": "mysql://r@127.0.0.1:1/m"})
    fine = manage_run("run_funnels", env=env)
    again = manage_run("run_funnels", env=env)

    assert [refused.returncode, lost.returncode, fine.returncode, again.returncode] == [1, 75, 0, 0]
    base = "/ping/run-token"
    assert ping.paths == [
        f"{base}/start", f"{base}/fail",  # Brevo refused the key
        f"{base}/start", f"{base}/fail",  # MODX unreachable, after our lock was taken
        f"{base}/start", base,
        f"{base}/start", base,
    ]

    events = sentry.events()
    assert [e["tags"]["outcome"] for e in events] == ["failed", "database"]
    assert events[0]["level"] == "error"
    assert re.match(r"run #\d+ failed \(live\); ", events[0]["message"])
    assert "Brevo rejected the API key (401)" in events[0]["message"]
    assert events[1]["message"].startswith("database unavailable: (200")
    assert events[0]["fingerprint"] == ["run_funnels", "failed"]
    everything = str(sentry.items)
    assert API_KEY not in everything and "xkeysib-wrong-0000-key" not in everything

    assert smtp.subjects() == [
        "[Testizer Funnels] run_funnels: failed",
        "[Testizer Funnels] run_funnels: working again after 2 runs",
    ]
    assert sorted(smtp.messages[0]["To"].split(", ")) == ["lead@example.com", "ops@example.com"]
    assert re.search(r"Outcome: run #\d+ failed \(live\); ", smtp.bodies()[0])
    assert "Last problem: database unavailable" in smtp.bodies()[1]


def test_without_settings_no_channel_is_tried(live_two_people, fake_brevo, tmp_path):
    env = subprocess_env(fake=fake_brevo, log_file=tmp_path / "app.log",
                         FUNNELS_ALERT_STATE_FILE=str(tmp_path / "alerts.json"),
                         FUNNELS_INITIAL_LOOKBACK_DAYS="3650",
                         BREVO_API_KEY="xkeysib-wrong-0000-key")
    done = manage_run("run_funnels", env=env)
    assert done.returncode == 1 and done.stderr == ""
    log = (tmp_path / "app.log").read_text()
    assert "not delivered" not in log and "not sent" not in log
