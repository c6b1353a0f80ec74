"""A MariaDB server of the test's own, to stop, crash and restart under a running job.

The shared server of the test run cannot be restarted (other tests and other checkouts
use it), so a test that needs a real restart starts its own: `mariadb-install-db` into a
fresh directory, then `mariadbd` on its own port and socket, no network name lookups, a
small buffer pool. It always goes away: `close()` (the context manager, in a `finally`)
stops the server and removes the directory; the server dies with the test process
(PR_SET_PDEATHSIG) if that is killed; and directories left by a killed test process are
removed by the next one.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PREFIX = "testizer-private-mariadb-"
BINARIES = ("mariadb-install-db", "mariadbd")
PR_SET_PDEATHSIG = 1


def private_mariadb_available() -> bool:
    return all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in BINARIES)


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stale_directories_remove() -> None:
    """Directories of servers whose test process was killed before it could clean up."""
    for directory in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        pid_file = directory / "mariadbd.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            continue  # still running: another test's server
        except (OSError, ValueError):
            shutil.rmtree(directory, ignore_errors=True)


class PrivateMariaDB:
    def __init__(self, *, name: str = "server") -> None:
        _stale_directories_remove()
        self.directory = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.name = name
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._install()

    # --- life cycle ----------------------------------------------------------------------

    def _install(self) -> None:
        command = [
            _binary("mariadb-install-db"), "--no-defaults", f"--datadir={self.directory / 'data'}",
            "--auth-root-authentication-method=normal", "--skip-test-db",
        ]
        if os.geteuid() == 0:
            command.append("--user=root")
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {done.stdout}{done.stderr}")

    def start(self, *, timeout: float = 60) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [
            _binary("mariadbd"), "--no-defaults", f"--datadir={self.directory / 'data'}",
            f"--port={self.port}", "--bind-address=127.0.0.1",
            f"--socket={self.directory / 'mariadbd.sock'}",
            f"--pid-file={self.directory / 'mariadbd.pid'}",
            f"--log-error={self.directory / 'error.log'}",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=64M",
            "--max-connections=100",
        ]
        if os.geteuid() == 0:
            command.append("--user=root")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private MariaDB did not start: {self.error_log()[-2000:]}")
            time.sleep(0.1)

    def stop(self, *, crash: bool = False, timeout: float = 60) -> None:
        """SIGTERM: an orderly shutdown, as `systemctl restart` does. crash: SIGKILL, as
        the kernel's OOM killer or a power cut does; InnoDB recovers at the next start."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def restart(self, *, crash: bool = False) -> None:
        self.stop(crash=crash)
        self.start()

    def close(self) -> None:
        try:
            self.stop(crash=True)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateMariaDB:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- use -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self, database: str | None = None):
        import MySQLdb

        kwargs = {"database": database} if database else {}
        return MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", password="",
                               charset="utf8mb4", autocommit=True, connect_timeout=2, **kwargs)

    def ping(self) -> bool:
        try:
            self.connect().close()
            return True
        except Exception:  # noqa: BLE001 - not up (yet)
            return False

    def execute(self, sql: str, database: str | None = None) -> list[tuple]:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def error_log(self) -> str:
        try:
            return (self.directory / "error.log").read_text(errors="replace")
        except OSError:
            return ""
