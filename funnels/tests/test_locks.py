import os
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connections

from funnels.locks import MYSQL_LOCK_NAME_MAX, RunLock, RunLockBusy, RunLockLost, lock_name_for
from funnels.tests.sync_support import database_url, default_rows_restore

pytestmark = pytest.mark.django_db

_HOLD_AND_WAIT = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testizer_funnels.settings")
import django
django.setup()
from funnels.locks import RunLock
RunLock().acquire()
print("locked", os.getpid(), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def other_connection():
    """A second connection to the same database, as another process would have."""
    connection = connections.create_connection("default")
    yield connection
    connection.close()


def _acquire_eventually(lock: RunLock, *, seconds: float = 5.0) -> None:
    """The server notices a killed client's closed socket within moments, not at once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            lock.acquire()
            return
        except RunLockBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_acquire_check_release_and_again():
    lock = RunLock()
    lock.acquire()
    lock.check()
    lock.release()
    with pytest.raises(RunLockLost):
        lock.check()
    again = RunLock()
    again.acquire()
    again.release()


def test_a_second_holder_is_refused_while_the_first_holds(other_connection):
    first = RunLock()
    first.acquire()
    try:
        with pytest.raises(RunLockBusy) as refused:
            RunLock(connection=other_connection).acquire()
        if connections["default"].vendor == "sqlite":
            assert refused.value.holder["pid"] == os.getpid()
        else:
            assert refused.value.holder["connection_id"]
    finally:
        first.release()
    second = RunLock(connection=other_connection)
    second.acquire()
    second.release()


def test_two_databases_do_not_share_a_lock_name():
    a = lock_name_for(base="testizer_funnels.run_funnels", database="shop")
    b = lock_name_for(base="testizer_funnels.run_funnels", database="shop_staging")
    assert a != b
    long = lock_name_for(base="testizer_funnels.run_funnels", database="x" * 200)
    assert len(long) <= MYSQL_LOCK_NAME_MAX
    assert long != lock_name_for(base="testizer_funnels.run_funnels", database="y" * 200)


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"].endswith("mysql"), reason="SQLite lock file"
)
def test_sqlite_lock_file_replaced_under_us_is_a_lost_lock():
    lock = RunLock()
    lock.acquire()
    try:
        os.unlink(lock.file_path)
        with pytest.raises(RunLockLost):
            lock.check()
    finally:
        lock.release()


@pytest.mark.mariadb_only
@pytest.mark.django_db(transaction=True)
def test_mariadb_reopened_connection_is_a_lost_lock():
    try:
        lock = RunLock()
        lock.acquire()
        # Django reconnects transparently after a close; the lock went with the old session.
        connections["default"].close()
        with pytest.raises(RunLockLost):
            lock.check()
        lock.release()
    finally:
        default_rows_restore()


@pytest.mark.django_db(transaction=True)
def test_a_holder_killed_with_sigkill_does_not_block_the_next_run(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TESTIZER_ENV_FILE": "/dev/null",
        "DATABASE_URL": database_url("default"),
        "MODX_DATABASE_URL": database_url("modx"),
        "LOG_FILE": str(tmp_path / "app.log"),
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_WAIT], env=env, cwd=settings.BASE_DIR,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = holder.stdout.readline()
        assert line.startswith("locked"), holder.stderr.read()
        with pytest.raises(RunLockBusy):
            RunLock().acquire()
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait(timeout=10)
        lock = RunLock()
        _acquire_eventually(lock)
        lock.check()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
        holder.stderr.close()
        holder.stdin.close()
        default_rows_restore()
