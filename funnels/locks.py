"""The run lock: one run_funnels at a time, and a dead holder never blocks the next run.

MySQL/MariaDB: ``GET_LOCK(name, 0)`` on the connection the run keeps for its whole life.
The server releases it when that connection ends, which is what happens when the process
dies (SIGKILL, OOM, reboot), so no stale-lock clean-up is ever needed. Before each commit
the run asks ``IS_USED_LOCK(name) = CONNECTION_ID()``: if the connection was silently
re-opened (the lock went with the old one), we stop instead of writing next to another run.

SQLite: ``fcntl.flock`` on a file beside the database file. The kernel drops the lock when
the process's descriptor closes, again including SIGKILL. Before each commit we check the
file we locked is still the file on disk (someone deleting it would let a second process
lock a fresh file).

The lock name is scoped to the database name so that two installations (or two test runs)
sharing one MariaDB server do not exclude each other.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import connections
from django.utils import timezone

MYSQL_LOCK_NAME_MAX = 64


class RunLockError(Exception):
    """Base for lock problems."""


class RunLockBusy(RunLockError):
    """Another live process holds the lock."""

    def __init__(self, message: str, *, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class RunLockLost(RunLockError):
    """We no longer hold the lock we took: stop before writing anything more."""


@dataclass
class _Holder:
    pid: int
    hostname: str
    since: str

    @classmethod
    def me(cls, *, now: datetime) -> _Holder:
        return cls(pid=os.getpid(), hostname=socket.gethostname(), since=now.isoformat())


def lock_name_for(*, base: str, database: str) -> str:
    """MySQL lock names are server-wide and at most 64 characters."""
    name = f"{base}:{database}"
    if len(name) <= MYSQL_LOCK_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{base[: MYSQL_LOCK_NAME_MAX - 17]}:{digest}"


class RunLock:
    """Acquire with ``acquire()``, verify with ``check()``, let go with ``release()``."""

    def __init__(
        self, *, alias: str = "default", name: str | None = None, connection=None
    ) -> None:
        self.alias = alias
        self._connection = connection
        self.base_name = name or settings.FUNNELS_LOCK_NAME
        self.held = False
        self._fd: int | None = None
        self._path: Path | None = None

    # -- public -----------------------------------------------------------------------

    @property
    def connection(self):
        return self._connection if self._connection is not None else connections[self.alias]

    @property
    def vendor(self) -> str:
        return self.connection.vendor

    def acquire(self, *, now: datetime | None = None) -> None:
        now = now or timezone.now()
        if self.vendor == "mysql":
            self._mysql_acquire()
        elif self.vendor == "sqlite":
            self._file_acquire(now=now)
        else:  # pragma: no cover - settings accept only these two engines
            raise RunLockError(f"no run lock for database vendor {self.vendor!r}")
        self.held = True

    def check(self) -> None:
        """Raise RunLockLost unless this process still holds the lock."""
        if not self.held:
            raise RunLockLost("the run lock is not held")
        if self.vendor == "mysql":
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", [self.mysql_name])
                (ours,) = cursor.fetchone()
            if ours != 1:
                self.held = False
                raise RunLockLost("the run lock was lost (database connection was re-opened)")
        else:
            assert self._fd is not None and self._path is not None
            try:
                on_disk = os.stat(self._path).st_ino
            except FileNotFoundError:
                on_disk = None
            if on_disk != os.fstat(self._fd).st_ino:
                self.held = False
                raise RunLockLost(f"the run lock file {self._path} was removed or replaced")

    def release(self) -> None:
        if self.vendor == "mysql":
            if self.held:
                try:
                    with self.connection.cursor() as cursor:
                        cursor.execute("SELECT RELEASE_LOCK(%s)", [self.mysql_name])
                except Exception:  # noqa: BLE001 - a closed connection released it already
                    pass
        elif self._fd is not None:
            # Closing the descriptor drops the flock; the file itself stays (removing it
            # would race with a process that has just opened it).
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # -- MySQL / MariaDB ----------------------------------------------------------------

    @property
    def mysql_name(self) -> str:
        return lock_name_for(
            base=self.base_name, database=str(self.connection.settings_dict["NAME"])
        )

    def _mysql_acquire(self) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", [self.mysql_name])
            (got,) = cursor.fetchone()
            if got == 1:
                return
            cursor.execute("SELECT IS_USED_LOCK(%s)", [self.mysql_name])
            (holder_connection,) = cursor.fetchone()
        raise RunLockBusy(
            "another run holds the run lock",
            holder={"connection_id": holder_connection},
        )

    # -- SQLite ---------------------------------------------------------------------------

    @property
    def file_path(self) -> Path:
        database = Path(str(self.connection.settings_dict["NAME"]))
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.base_name)
        return database.with_name(f"{database.name}.{safe}.lock")

    def _file_acquire(self, *, now: datetime) -> None:
        path = self.file_path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _file_holder(fd)
            os.close(fd)
            raise RunLockBusy("another run holds the run lock", holder=holder) from None
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the message the next process prints; informative only.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_Holder.me(now=now).__dict__).encode(), 0)
        self._fd, self._path = fd, path


def _file_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
