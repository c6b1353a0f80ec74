"""The job as cron runs it: the line `manage.py crontab add` installs, and the README's
plain cron line, each run by /bin/sh in cron's bare environment (`env -i
PATH=/usr/bin:/bin`). For every outcome the line exits with the documented code and
appends exactly one line to the cron log.

The machine's crontab is never touched: CRONTAB_EXECUTABLE points at a fake `crontab`
that keeps the table in a file of the test's own directory.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from funnels.locks import RunLock
from funnels.models import SyncRun
from funnels.tests.sync_support import (
    switched_to_live,
    LANG_TEST,
    OTHER_TEST,
    database_url,
    default_rows_restore,
    manage_run,
    modx_catalogue,
    modx_result,
    modx_rows_delete,
)

BASE_DIR = Path(settings.BASE_DIR)
BARE = ["env", "-i", "PATH=/usr/bin:/bin"]
EXIT = {"success": 0, "failed": 1, "busy": 3, "partial": 4, "database": 75, "config": 78}

FAKE_CRONTAB = """#!/bin/sh
# crontab -l | crontab FILE, kept beside this script instead of the user's real table.
table="$(dirname "$0")/table"
if [ "$1" = "-l" ]; then cat "$table" 2>/dev/null; exit 0; fi
cp "$1" "$table"
"""

pytestmark = pytest.mark.django_db(databases=["default", "modx"], transaction=True)


class CronSetup:
    def __init__(self, tmp_path: Path, fake) -> None:
        self.dir = tmp_path
        self.env_file = tmp_path / "funnels.env"
        self.cron_log = tmp_path / "cron.log"
        self.crontab = tmp_path / "crontab"
        self.crontab.write_text(FAKE_CRONTAB)
        self.crontab.chmod(0o755)
        self.values = {
            "LANGUAGE_CODE": "en",
            "DATABASE_URL": database_url("default"),
            "MODX_DATABASE_URL": database_url("modx"),
            "TIME_ZONE": settings.TIME_ZONE,
            "MODX_TIME_ZONE": settings.MODX_TIME_ZONE,
            "LOG_FILE": str(tmp_path / "app.log"),
            "CRON_LOG_FILE": str(self.cron_log),
            "CRONTAB_EXECUTABLE": str(self.crontab),
            "FUNNELS_INITIAL_LOOKBACK_DAYS": "3650",
            "BREVO_BASE_URL": fake.base_url,
            "BREVO_API_KEY": fake.api_key,
            "BREVO_LANGUAGE_LIST_ID": "1",
            "BREVO_NON_LANGUAGE_LIST_ID": "2",
            "BREVO_REQUESTS_PER_SECOND": "1000",
            "BREVO_MAX_RETRIES": "0",
        }
        self.write_env()

    def write_env(self, **changes: str) -> None:
        values = {**self.values, **changes}
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def install(self, job: int = 0) -> str:
        """`manage.py crontab add` as the operator runs it; the command part of the line of
        CRONJOBS entry `job` (0 run_funnels, 1 audit_brevo)."""
        done = manage_run("crontab", "add", env={"TESTIZER_ENV_FILE": str(self.env_file)})
        assert done.returncode == 0, done.stdout + done.stderr
        lines = [l for l in (self.dir / "table").read_text().splitlines() if l.strip()]
        # One line per CRONJOBS entry, in its order: run_funnels first, then audit_brevo.
        assert len(lines) == len(settings.CRONJOBS), lines
        line = lines[job]
        match = re.fullmatch(r"(\S+\s+){5}(?P<command>.+?)\s+# django-cronjobs for \S+", line)
        assert match, line
        return match["command"]

    def readme_line(self) -> str:
        """The README's plain cron line, for a checkout at BASE_DIR and this test's files."""
        blocks = re.findall(r"```cron\n(.+?)\n```", (BASE_DIR / "README.md").read_text(), re.S)
        [line] = [b for b in blocks if "manage.py run_funnels" in b]
        command = line.split(None, 5)[5]
        assert command.startswith("cd /srv/testizer-funnels && "), command
        return (
            command.replace("/srv/testizer-funnels", str(BASE_DIR))
            .replace("logs/cron.log", str(self.cron_log))
            # What a crontab line `TESTIZER_ENV_FILE=...` above the job would do; with the
            # .env in the project folder the line needs nothing else.
            .replace(" && ", f" && TESTIZER_ENV_FILE={self.env_file} ", 1)
        )

    def run(self, command: str) -> tuple[int, list[str]]:
        before = self.cron_log.read_text() if self.cron_log.exists() else ""
        done = subprocess.run([*BARE, "/bin/sh", "-c", command], capture_output=True,
                              text=True, timeout=120, cwd="/")
        assert done.stdout == done.stderr == "", (done.stdout, done.stderr)  # all in the log
        after = self.cron_log.read_text()
        assert after.startswith(before)
        return done.returncode, after[len(before):].splitlines()


@pytest.fixture
def cron(tmp_path, fake_brevo):
    default_rows_restore()
    modx_catalogue()
    modx_result("ann@example.com", LANG_TEST)
    modx_result("bob@example.com", OTHER_TEST)
    yield CronSetup(tmp_path, fake_brevo)
    modx_rows_delete()
    default_rows_restore()


def _live() -> None:
    switched_to_live()


def _outcome(name: str, cron: CronSetup, fake) -> None:
    """Arrange the world so the next run ends with outcome `name`."""
    if name == "partial":
        _live()
        fake.faults.add("500", count=None)
    elif name == "failed":
        _live()
        cron.write_env(BREVO_API_KEY="xkeysib-not-the-right-key-0000")
    elif name == "config":
        cron.write_env(APP_DRY_RUN="maybe")
    elif name == "database":
        cron.write_env(MODX_DATABASE_URL="mysql://reader@127.0.0.1:1/modx")


EXPECTED_LINE = {
    "success": r"run #\d+ success \(dry run\); 2 results read; 2 entries would be added; .*",
    "partial": r"run #\d+ partial \(live\); .* 0 contacts sent, 2 failed, .*",
    "failed": r"run #\d+ failed \(live\); .* - error: Brevo rejected the API key \(401\).*",
    "busy": r"another run_funnels is running \(since .*",
    "config": r"configuration error: APP_DRY_RUN='maybe' is not a boolean; .*",
    "database": r"database unavailable: \(200\d, \"Can't connect to .*127\.0\.0\.1.*",
}


@pytest.mark.parametrize("line", ["installed", "readme"])
@pytest.mark.parametrize("outcome", list(EXIT))
def test_every_outcome_through_cron_is_its_exit_code_and_one_line(cron, fake_brevo, line, outcome):
    command = cron.install() if line == "installed" else cron.readme_line()
    if line == "installed":
        assert "manage.py crontab run " in command and str(cron.cron_log) in command
    _outcome(outcome, cron, fake_brevo)
    lock = RunLock() if outcome == "busy" else None
    if lock is not None:
        lock.acquire()
    try:
        code, lines = cron.run(command)
    finally:
        if lock is not None:
            lock.release()

    assert code == EXIT[outcome], lines
    assert len(lines) == 1, lines
    assert re.fullmatch(EXPECTED_LINE[outcome], lines[0]), lines[0]
    assert "Traceback" not in lines[0]
    if outcome in ("success", "partial", "failed"):
        assert SyncRun.objects.get().trigger == "cron"


def test_the_installed_line_is_what_django_crontab_writes_and_names_its_job(cron):
    command = cron.install()
    # cd to the project, the chosen .env kept, the venv's Python, our log: nothing else.
    assert command.startswith(f"cd {BASE_DIR} && TESTIZER_ENV_FILE={cron.env_file} ")
    assert command.endswith(f"crontab run {command.split('crontab run ')[1].split()[0]} "
                            f">> {cron.cron_log} 2>&1")
    shown = manage_run("crontab", "show", env={"TESTIZER_ENV_FILE": str(cron.env_file)})
    assert "run_funnels" in shown.stdout


def test_a_line_left_from_an_older_schedule_says_so_in_one_line(cron):
    command = cron.install()
    job_hash = command.split("crontab run ")[1].split()[0]
    code, lines = cron.run(command.replace(job_hash, "0" * 32))
    assert code == 78
    assert lines == [f"configuration error: no job with hash '{'0' * 32}' in CRONJOBS; "
                     "run `manage.py crontab add` again"]


def test_the_daily_audit_line_runs_the_audit_then_the_proof(cron, fake_brevo):
    command = cron.install(job=1)
    _live()  # in a dry run the proof is skipped (nobody is entered)
    code, lines = cron.run(command)
    assert code == 0, lines
    assert re.fullmatch(r"audit #\d+ success \(full\): .*", lines[0]), lines
    assert re.fullmatch(r"proof #\d+ success: .*", lines[1]), lines
    assert len(lines) == 2 and "Traceback" not in "".join(lines)

    fake_brevo.faults.add("500", count=None)
    cron.write_env(BREVO_MAX_RETRIES="0")
    code, lines = cron.run(command)
    assert code == 4, lines
    assert lines[0].startswith("audit #") and " partial " in lines[0]
