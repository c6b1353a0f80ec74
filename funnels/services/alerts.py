"""Someone hears about a run that went wrong, without watching the admin.

Called once at the end of every `run_funnels` command, whatever its outcome:

- the ping URL (FUNNELS_PING_URL, healthchecks.io style) gets `<url>` after a run that did
  its work (success; paused on purpose) and `<url>/fail` after a failed, crashed, partial
  or held run, a database that could not be reached, or a configuration refused; a run
  refused because another one holds the lock sends nothing (the holder reports);
- Sentry (SENTRY_DSN) gets one event per such run, grouped by outcome, with the traceback
  when there is one;
- ADMINS get one short email when an incident begins, none while it lasts, and one when a
  run succeeds again. The incident lives in FUNNELS_ALERT_STATE_FILE, a small JSON file:
  it must survive between cron runs and work when the database is the thing that is down.
  An email that could not be sent is tried again by the next run.

No channel may fail the run or change its exit code: each failure is logged as a warning
(without the URL, DSN or password) and the others still go out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.mail import mail_admins
from django.utils.translation import gettext as _

from funnels.logging_filters import redact
from funnels.services.pings import ping_send

logger = logging.getLogger("funnels.alerts")

# Outcomes beyond the SyncRun statuses, named by the command.
BUSY = "busy"  # another run holds the lock (exit 3)
DATABASE = "database"  # our database or MODX unreachable or lost mid-run (exit 75)
CONFIG = "config"  # a setting refused (exit 78)

PROBLEMS = frozenset({"failed", "crashed", "partial", "held", DATABASE, CONFIG})
# A paused schedule is someone's decision, not an incident, and proves nothing either way.
WORKING = frozenset({"success"})
PING_SUCCESS = frozenset({"success", "paused"})
SENTRY_WARNING = frozenset({"partial", "held"})


@dataclass(frozen=True)
class AlertsSent:
    ping: str | None  # "success", "fail" or None (not sent or not configured)
    sentry: bool
    email: str | None  # "opened", "recovered" or None


@dataclass
class Incident:
    since: str
    status: str
    line: str
    runs: int = 1
    notified_at: str | None = None
    last_status: str = ""
    last_line: str = ""

    @classmethod
    def from_json(cls, data: dict) -> Incident:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def alerts_send(
    *, status: str, line: str, now: datetime, run_id: int | None = None,
    error: BaseException | None = None,
) -> AlertsSent:
    """Tell the ping URL, Sentry and the admins about one command's outcome."""
    line = redact(line)
    ping = None
    if status in PING_SUCCESS:
        ping = "success" if ping_send(event="success") else None
    elif status in PROBLEMS:
        ping = "fail" if ping_send(event="fail") else None
    sentry = status in PROBLEMS and _sentry_send(
        status=status, line=line, run_id=run_id, error=error
    )
    email = None
    if status in PROBLEMS or status in WORKING:
        email = _incident_mail(status=status, line=line, now=now)
    return AlertsSent(ping=ping, sentry=sentry, email=email)


# --- Sentry ------------------------------------------------------------------------------


def _sentry_send(*, status: str, line: str, run_id: int | None, error: BaseException | None) -> bool:
    if not settings.SENTRY_DSN:
        return False
    try:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            scope.set_tag("outcome", status)
            if run_id is not None:
                scope.set_tag("run_id", str(run_id))
            scope.fingerprint = ["run_funnels", status]
            if error is not None:
                scope.set_extra("line", line)
                sentry_sdk.capture_exception(error)
            else:
                sentry_sdk.capture_message(
                    line, level="warning" if status in SENTRY_WARNING else "error"
                )
        # The process exits right after the command: send now, not in the background.
        sentry_sdk.flush(timeout=5)
        return True
    except Exception as exc:  # noqa: BLE001 - monitoring must not fail the run
        logger.warning("Sentry event not sent: %s", type(exc).__name__)
        return False


# --- One email per incident --------------------------------------------------------------


@contextlib.contextmanager
def _state_locked(path: Path):
    """The incident file, locked against a second command ending at the same moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def incident_read(*, path: Path) -> Incident | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("alert state %s unreadable (%s): starting afresh", path, type(exc).__name__)
        return None
    return Incident.from_json(data) if data else None


def _incident_write(*, path: Path, incident: Incident | None) -> None:
    """Replace the file whole (write a temporary file, fsync, rename): a crash leaves the
    old state or the new one, never half of one."""
    data = incident.__dict__ if incident is not None else {}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _incident_mail(*, status: str, line: str, now: datetime) -> str | None:
    path = Path(settings.FUNNELS_ALERT_STATE_FILE)
    stamp = now.astimezone(UTC).isoformat(timespec="seconds")
    try:
        with _state_locked(path):
            incident = incident_read(path=path)
            if status in PROBLEMS:
                if incident is None:
                    incident = Incident(since=stamp, status=status, line=line)
                else:
                    incident.runs += 1
                incident.last_status, incident.last_line = status, line
                sent = None
                if incident.notified_at is None and _mail(*_opened_text(incident)):
                    incident.notified_at = stamp
                    sent = "opened"
                _incident_write(path=path, incident=incident)
                return sent
            if incident is None:
                return None
            # Working again: say so if anyone was told it was broken; close it either way.
            sent = "recovered" if incident.notified_at and _mail(
                *_recovered_text(incident, line=line, now=stamp)
            ) else None
            _incident_write(path=path, incident=None)
            return sent
    except OSError as exc:
        logger.warning("alert state %s not written: %s", path, type(exc).__name__)
        return None


def _mail(subject: str, body: str) -> bool:
    if not settings.ADMINS:
        return False
    try:
        mail_admins(subject, body, fail_silently=False)
        return True
    except Exception as exc:  # noqa: BLE001 - SMTP down: the next run tries again
        logger.warning("alert email not sent (%s): will try again at the next run",
                       redact(f"{type(exc).__name__}: {exc}")[:200])
        return False


def _opened_text(incident: Incident) -> tuple[str, str]:
    subject = _("run_funnels: %(status)s") % {"status": incident.status}
    body = "\n".join([
        _("The funnel job did not finish its work."),
        "",
        _("Since: %(since)s") % {"since": incident.since},
        _("Outcome: %(line)s") % {"line": incident.line},
        "",
        _("No more emails while this lasts; one more when a run succeeds again. "
          "Details: the admin's Runs page, logs/app.log and logs/cron.log."),
    ])
    return subject, body


def _recovered_text(incident: Incident, *, line: str, now: str) -> tuple[str, str]:
    subject = _("run_funnels: working again after %(runs)s runs") % {"runs": incident.runs}
    body = "\n".join([
        _("The funnel job works again."),
        "",
        _("Problem from %(since)s to %(now)s, %(runs)s runs: %(first)s")
        % {"since": incident.since, "now": now, "runs": incident.runs, "first": incident.line},
        _("Last problem: %(line)s") % {"line": incident.last_line or incident.line},
        _("Now: %(line)s") % {"line": line},
    ])
    return subject, body
