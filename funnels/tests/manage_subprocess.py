"""Run manage.py in a child process with a clean environment, and scratch MariaDB schemas.

Start-up, migrate and adoption are about what a fresh process does with its environment,
so these tests run the real command line rather than call_command in the test process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from django.conf import settings

MANAGE = Path(settings.BASE_DIR) / "manage.py"


def manage_run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`python manage.py ARGS` with only PATH and `env` set (no .env file is read).

    English output, so that assertions on messages hold once a catalogue exists.
    """
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TESTIZER_ENV_FILE": "/dev/null",
        "LANGUAGE_CODE": "en",
    }
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env={**clean, **env}, capture_output=True, text=True, timeout=timeout,
        cwd=MANAGE.parent, stdin=subprocess.DEVNULL,
    )


def mariadb_server() -> dict[str, str]:
    """Host, port and credentials of the MariaDB the test run uses."""
    db = settings.DATABASES["default"]
    return {
        "host": str(db.get("HOST") or "127.0.0.1"),
        "port": str(db.get("PORT") or 3306),
        "user": str(db.get("USER") or "root"),
        "password": str(db.get("PASSWORD") or ""),
    }


def mariadb_url(name: str) -> str:
    server = mariadb_server()
    auth = quote(server["user"], safe="")
    if server["password"]:
        auth += ":" + quote(server["password"], safe="")
    return f"mysql://{auth}@{server['host']}:{server['port']}/{name}"


def mariadb_connect(name: str | None = None):
    import MySQLdb

    server = mariadb_server()
    kwargs = {"database": name} if name else {}
    return MySQLdb.connect(
        host=server["host"], port=int(server["port"]), user=server["user"],
        password=server["password"], charset="utf8mb4", autocommit=True, **kwargs,
    )


def mariadb_query(name: str, sql: str) -> list[tuple]:
    connection = mariadb_connect(name)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())
    finally:
        connection.close()


@contextlib.contextmanager
def mariadb_scratch(prefix: str) -> Iterator[str]:
    """A uniquely named, empty database, dropped afterwards whatever happened."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = mariadb_connect()
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def sql_script_run(connection, path: Path) -> None:
    """Execute a file of ;-terminated statements (the shared DDL files)."""
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
    )
    with connection.cursor() as cursor:
        for statement in text.split(";"):
            if statement.strip():
                cursor.execute(statement)


# The stand-in DDL of the MODX schema and of the earlier tool's tables: verbatim copies
# kept in the repository (a clone has nothing beside it).
MODX_DDL = Path(settings.BASE_DIR) / "bench" / "modx_schema.sql"
LEGACY_DDL = Path(settings.BASE_DIR) / "docs" / "legacy_funnel_entries.sql"
