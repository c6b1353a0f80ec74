"""app.log is appended to by several processes at once (cron, every web worker) and
rotated by logrotate underneath them (docs/logrotate.conf): no record may be lost or torn.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
WRITERS = 4
RECORDS = 1500
ROTATIONS = 6

# One process of the application: Django set up from the environment as manage.py does,
# records through the project's LOGGING (the "funnels" logger, the file handler).
WRITER = """
import os, sys, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testizer_funnels.settings")
import django
django.setup()
import logging
logger = logging.getLogger("funnels.logtest")
print("ready", flush=True)
sys.stdin.readline()
for n in range(int(sys.argv[1])):
    logger.info("writer %s record %s %s", sys.argv[2], n, "x" * 200)
    if n % 50 == 0:
        time.sleep(0.01)
"""


def _rotate_config(tmp_path: Path, log: Path) -> Path:
    """docs/logrotate.conf's app.log stanza for this file, without su/ownership/compress."""
    shipped = (BASE_DIR / "docs" / "logrotate.conf").read_text().splitlines()
    directives = [line.split("#")[0].strip() for line in shipped]
    assert "copytruncate" not in directives and "delaycompress" in directives
    config = tmp_path / "logrotate.conf"
    config.write_text(f"{log} {{\n    rotate 100\n    missingok\n    create 0640\n}}\n")
    return config


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_processes_writing_while_logrotate_rotates_lose_no_record(tmp_path):
    log = tmp_path / "app.log"
    env = {
        "PATH": "/usr/bin:/bin", "TESTIZER_ENV_FILE": "/dev/null", "LOG_FILE": str(log),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MODX_DATABASE_URL": f"sqlite:///{tmp_path / 'modx.sqlite3'}",
    }
    config = _rotate_config(tmp_path, log)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(RECORDS), str(n)], env=env,
                         cwd=BASE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for n in range(WRITERS)
    ]
    try:
        for writer in writers:
            assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        for writer in writers:  # all start at once
            writer.stdin.write("go\n")
            writer.stdin.flush()
        rotations = 0
        while rotations < ROTATIONS and any(w.poll() is None for w in writers):
            time.sleep(0.05)
            subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(config)],
                           check=True, capture_output=True)
            rotations += 1
        for writer in writers:
            assert writer.wait(timeout=120) == 0, writer.stderr.read()
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
            writer.communicate()

    files = sorted(tmp_path.glob("app.log*"))
    assert rotations >= 3 and len(files) >= 4, (rotations, files)  # really rotated mid-way
    lines = [line for path in files for line in path.read_text().splitlines()]
    record = re.compile(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO funnels\.logtest: \d+ "
        r"writer (\d) record (\d+) x{200}"
    )
    torn = [line for line in lines if not record.fullmatch(line)]
    assert torn == []
    seen = Counter(record.fullmatch(line).groups() for line in lines)
    expected = {(str(w), str(n)) for w in range(WRITERS) for n in range(RECORDS)}
    assert set(seen) == expected  # none lost
    assert max(seen.values()) == 1  # none twice


def test_app_log_is_written_by_a_handler_that_follows_a_rotation():
    handler = settings.LOGGING["handlers"]["file"]
    assert handler["class"] == "logging.handlers.WatchedFileHandler"
    assert "maxBytes" not in handler  # rotation is logrotate's, never the processes'
