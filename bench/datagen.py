"""Synthetic MODX tables and funnel_entries at benchmark scale, loaded into MariaDB fast.

The rows are generated from a seed and a clock, streamed to tab-separated files in chunks
and loaded with `LOAD DATA LOCAL INFILE` (or, when the server refuses local files,
multi-row INSERTs), so a million rows take seconds and the generator never holds a whole
table in memory.

The data is laid out so that each scenario has a known answer:

* results 1..H (H = results - backfill) are history: people `p<n>` whose entries are
  already in funnel_entries; the results watermark is set to H;
* results H+1..results are the backfill: new people `b<n>` who must reach Brevo;
* funnel_entries: `entries` rows over the last year for people `p<n>`, one or two each
  (one per funnel), already synced, some already converted by the old payments;
* payments 1..(payments - new_payments) are history (watermark at their end); the
  `new_payments` are inserted by `new_payments_load` just before the purchase scenario.

It writes to scratch databases only: every name must contain "bench" (see
`scratch_name_check`), so a mistyped flag cannot reach a real database. MODX writes go
straight through MySQLdb, never through the read-only "modx" alias of the application.
"""

from __future__ import annotations

import math
import os
import random
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import MySQLdb

from funnels.emails import email_as_typed, email_check

BENCH_DIR = Path(__file__).resolve().parent
# A verbatim copy of the shared stand-in DDL (domain/modx_schema.sql): the columns and
# keys production is known to have. Kept beside the benchmark so CI does not depend on a
# folder outside the repository; --modx-schema points at another file (e.g. a dump of
# production's DDL).
DEFAULT_MODX_DDL = BENCH_DIR / "modx_schema.sql"

LANGUAGE = "language"
NON_LANGUAGE = "non_language"
LIST_IDS = {LANGUAGE: 1, NON_LANGUAGE: 2}
LANGUAGES = [1, 2, 3, 4, 5]
LANGUAGE_TESTS = list(range(1, 21))
NON_LANGUAGE_TESTS = list(range(21, 41))
ALL_TESTS = LANGUAGE_TESTS + NON_LANGUAGE_TESTS
# modx_cert_test rows: id -> type (1 language, 2 non-language).
CERT_TESTS = {1: 1, 2: 2, 3: 1}
CERT_TEST_FOR = {LANGUAGE: (1, 3), NON_LANGUAGE: (2,)}
PAID = 2
DOMAINS = ["example.com", "mail.example.org", "test.example.net", "пример.рф"]
INVALID_EMAILS = [None, "", "   ", "not-an-email", "bad@", "@nodomain.com", "a b@x.com"]

# How the purchase sync schedules its watch list (funnels/services/purchase_writes.py:
# FUNNELS_PURCHASE_RECHECK_DAYS at its default, RECHECK_STEPS, RECHECK_LATEST), copied
# because this module runs without Django settings; a test checks the copy is current.
WATCH_HORIZON = timedelta(days=30)
WATCH_SEEN_AFTER = timedelta(minutes=15)  # a cron period after the payment was made
RECHECK_STEPS: tuple[tuple[timedelta, timedelta], ...] = (
    # (watched for less than, read again after)
    (timedelta(hours=1), timedelta(minutes=10)),
    (timedelta(days=1), timedelta(hours=1)),
    (timedelta(days=7), timedelta(hours=6)),
)
RECHECK_LATEST = timedelta(days=1)

_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
LOAD_CHUNK_ROWS = 100_000
INSERT_CHUNK_ROWS = 5_000


@dataclass(frozen=True)
class Scale:
    results: int = 1_000_000
    payments: int = 200_000
    backfill: int = 100_000
    entries: int = 1_000_000
    new_results: int = 1_000
    new_payments: int = 5_000
    # Rows that cannot be decided yet, inserted after the steady-state run: they wait on
    # the recheck lists (services/recheck.py), re-read by every run.
    waiting_results: int = 8_000
    waiting_payments: int = 2_000

    def __post_init__(self) -> None:
        if self.backfill > self.results:
            raise ValueError("backfill cannot exceed results")
        if self.new_payments > self.payments:
            raise ValueError("new payments cannot exceed payments")
        if min(self.results, self.payments, self.entries, self.backfill) < 1:
            raise ValueError("every size must be at least 1")
        if min(self.waiting_results, self.waiting_payments) < 0:
            raise ValueError("waiting rows cannot be negative")

    @property
    def history(self) -> int:
        return self.results - self.backfill

    @property
    def old_payments(self) -> int:
        return self.payments - self.new_payments

    @property
    def waiting(self) -> int:
        return self.waiting_results + self.waiting_payments

    @property
    def new_payments_first_id(self) -> int:
        # The waiting payments are inserted (and read) before the new ones, so they take
        # the ids right after the history and the new payments come after them: ids that
        # a run has passed are never filled in later.
        return self.old_payments + self.waiting_payments + 1


# 5,000 payments: over 100 of them in the watch list, consecutive ids that cover every
# residue of the watch schedule's spread (payment_id % 100), so every 15 minutes a tiny
# steady-state run has watched payments due, as a full-scale one has (one chunk at most
# either way), and their query counts compare.
TINY = Scale(
    results=2_000, payments=5_000, backfill=500, entries=2_000, new_results=200,
    new_payments=100, waiting_results=800, waiting_payments=200,
)


# ------------------------------------------------------------------------ the server


@dataclass(frozen=True)
class Server:
    """A MariaDB server reached over TCP; the password never appears in repr or logs."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = field(default="", repr=False)

    @classmethod
    def from_url(cls, url: str) -> Server:
        parts = urlsplit(url)
        if parts.scheme not in {"mysql", "mariadb"}:
            raise ValueError("the benchmark needs a mysql://user:password@host:port URL")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
        )

    def url(self, database: str) -> str:
        from urllib.parse import quote

        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"mysql://{auth}@{self.host}:{self.port}/{database}"

    def display(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self, database: str | None = None, *, local_infile: bool = False):
        kwargs: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": self.user,
            "password": self.password, "charset": "utf8mb4", "autocommit": True,
        }
        if database:
            kwargs["database"] = database
        if local_infile:
            kwargs["local_infile"] = 1
        return MySQLdb.connect(**kwargs)


def scratch_name_check(name: str) -> str:
    if not _NAME_RE.match(name) or "bench" not in name.lower():
        raise ValueError(
            f"{name!r} is not a benchmark scratch database: the name must contain 'bench' "
            "and only letters, digits and underscores"
        )
    return name


def databases_reset(*, server: Server, names: Sequence[str]) -> None:
    """Drop and create the scratch databases (and only those)."""
    for name in names:
        scratch_name_check(name)
    conn = server.connect()
    try:
        cursor = conn.cursor()
        for name in names:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
    finally:
        conn.close()


def databases_drop(*, server: Server, names: Sequence[str]) -> None:
    for name in names:
        scratch_name_check(name)
    conn = server.connect()
    try:
        cursor = conn.cursor()
        for name in names:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def ddl_statements(path: Path) -> list[str]:
    text = "\n".join(
        line for line in Path(path).read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("--")
    )
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def modx_schema_create(*, server: Server, database: str, ddl_path: Path = DEFAULT_MODX_DDL) -> None:
    scratch_name_check(database)
    conn = server.connect(database)
    try:
        cursor = conn.cursor()
        for statement in ddl_statements(ddl_path):
            cursor.execute(statement)
    finally:
        conn.close()


# ------------------------------------------------------------------------ loading rows


def _field(value: Any) -> str:
    """One value in LOAD DATA's default text format; datetimes must be naive already."""
    kind = type(value)
    if kind is str:
        if "\\" in value or "\t" in value or "\n" in value:
            return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        return value
    if value is None:
        return "\\N"
    if kind is bool:
        return "1" if value else "0"
    return str(value)


def local_infile_allowed(conn) -> bool:
    cursor = conn.cursor()
    cursor.execute("SELECT @@GLOBAL.local_infile")
    return bool(int(cursor.fetchone()[0]))


def _chunked(rows: Iterable[Sequence[Any]], size: int) -> Iterator[list[Sequence[Any]]]:
    chunk: list[Sequence[Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def rows_load(
    *, conn, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
    method: str = "auto",
) -> int:
    """Write rows into `table`; returns how many. `method`: auto, infile or insert.

    The connection must have been opened with local_infile=True for the infile method.
    """
    if method not in {"auto", "infile", "insert"}:
        raise ValueError(f"unknown load method {method!r}")
    if method == "auto":
        method = "infile" if local_infile_allowed(conn) else "insert"
    column_sql = ", ".join(f"`{c}`" for c in columns)
    cursor = conn.cursor()
    total = 0
    if method == "insert":
        sql = f"INSERT INTO `{table}` ({column_sql}) VALUES ({', '.join(['%s'] * len(columns))})"
        for chunk in _chunked(rows, INSERT_CHUNK_ROWS):
            # mysqlclient turns executemany of INSERT ... VALUES into multi-row statements.
            cursor.executemany(sql, chunk)
            total += len(chunk)
        conn.commit()
        return total
    fd, path = tempfile.mkstemp(prefix="bench_load_", suffix=".tsv")
    os.close(fd)
    try:
        for chunk in _chunked(rows, LOAD_CHUNK_ROWS):
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                handle.write("".join("\t".join(map(_field, row)) + "\n" for row in chunk))
            cursor.execute(
                f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` CHARACTER SET utf8mb4 "
                "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
                f"({column_sql})",
                (path,),
            )
            total += len(chunk)
        conn.commit()
    finally:
        os.unlink(path)
    return total


def table_columns(*, conn, table: str) -> dict[str, dict[str, Any]]:
    cursor = conn.cursor()
    cursor.execute(
        "SELECT COLUMN_NAME, IS_NULLABLE, COLUMN_DEFAULT, EXTRA FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        (table,),
    )
    return {
        name: {"nullable": nullable == "YES", "default": default, "extra": extra}
        for name, nullable, default, extra in cursor.fetchall()
    }


# ------------------------------------------------------------------------ the data


def _ascii(email: str) -> str:
    checked = email_check(email)
    assert checked.email is not None, email
    return checked.email


_ASCII_DOMAINS = [_ascii(f"x@{domain}").split("@")[1] for domain in DOMAINS]


def _funnel_of_test(test_id: int) -> str:
    return LANGUAGE if test_id <= LANGUAGE_TESTS[-1] else NON_LANGUAGE


@dataclass
class LoadReport:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    method: str = ""


class BenchData:
    """Deterministic generator of every row the benchmark loads, and the expected answers.

    `now` is the benchmark's clock (aware, UTC): history lies before it, the backfill in
    the two days before it, new rows in the minutes before it.
    """

    def __init__(
        self, *, scale: Scale, now: datetime, seed: int = 20261128,
        modx_time_zone: str = "Europe/Moscow",
    ) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be aware")
        self.scale = scale
        self.now = now.astimezone(timezone.utc).replace(microsecond=0)
        self.seed = seed
        self.modx_zone = ZoneInfo(modx_time_zone)
        self.entry_people = max(math.ceil(scale.entries / 2), int(scale.entries * 0.7))
        # Which funnel each entry person's first entry is in (their second, if any, is in
        # the other): a compact table rather than a million-key dict.
        rng = random.Random(seed + 1)
        self._first_funnel = bytearray(
            1 if rng.random() < 0.6 else 2 for _ in range(self.entry_people)
        )
        self.entries_start = self.now - timedelta(days=365)
        self.entries_end = self.now - timedelta(days=3)
        self._entry_step = (self.entries_end - self.entries_start).total_seconds() / scale.entries
        # Expected answers, filled as rows are generated.
        self.expected_backfill: dict[str, set[str]] = {LANGUAGE: set(), NON_LANGUAGE: set()}
        self.expected_new: dict[str, set[str]] = {LANGUAGE: set(), NON_LANGUAGE: set()}
        self.backfill_invalid = 0
        self.entries_converted = 0
        self.expected_new_conversions = 0
        self._converted: dict[int, tuple[datetime, int]] = {}
        # Payments whose 30-day watch has not ended at `now`: the purchase sync's watch list
        # as its last run (at `now`) left it.
        self._watched: list[tuple[int, bool, datetime]] = []

    # -- helpers ------------------------------------------------------------------

    def _modx_time(self, moment: datetime | None) -> datetime | None:
        if moment is None:
            return None
        return moment.astimezone(self.modx_zone).replace(tzinfo=None)

    @staticmethod
    def _utc_naive(moment: datetime | None) -> datetime | None:
        # Django stores aware datetimes in MySQL as naive UTC.
        return None if moment is None else moment.astimezone(timezone.utc).replace(tzinfo=None)

    def person_email(self, n: int, prefix: str = "p") -> str:
        return f"{prefix}{n}@{DOMAINS[n % len(DOMAINS)]}"

    def person_email_normalized(self, n: int, prefix: str = "p") -> str:
        # Same as email_check(person_email(n)).email, without its cost a million times.
        return f"{prefix}{n}@{_ASCII_DOMAINS[n % len(DOMAINS)]}"

    def entry_funnel(self, k: int) -> str:
        person = k % self.entry_people
        first = LANGUAGE if self._first_funnel[person] == 1 else NON_LANGUAGE
        if k < self.entry_people:
            return first
        return NON_LANGUAGE if first == LANGUAGE else LANGUAGE

    def entry_index(self, person: int, funnel: str) -> int | None:
        """The entry of `person` in `funnel`, if the pre-filled table has one."""
        first = LANGUAGE if self._first_funnel[person] == 1 else NON_LANGUAGE
        k = person if first == funnel else person + self.entry_people
        return k if k < self.scale.entries else None

    def entry_entered_at(self, k: int) -> datetime:
        return self.entries_start + timedelta(seconds=self._entry_step * k // 1)

    # -- MODX ----------------------------------------------------------------------

    def tests(self) -> list[tuple[int, int, int]]:
        """(newid, Id, LangId); one test id repeated, as MODX allows."""
        rng = random.Random(self.seed + 2)
        rows = []
        for test_id in LANGUAGE_TESTS:
            rows.append((len(rows) + 1, test_id, rng.choice(LANGUAGES)))
        for test_id in NON_LANGUAGE_TESTS:
            # 0, or a language id with no simpletest_lang row: both mean "not a language test".
            rows.append((len(rows) + 1, test_id, rng.choice([0, 0, 99])))
        rows.append((len(rows) + 1, 3, rows[2][2]))
        return rows

    def history_results(self) -> Iterator[tuple]:
        rng = random.Random(self.seed + 3)
        history = self.scale.history
        people = max(1, int(history * 0.6))
        start = self.now - timedelta(days=3 * 365)
        span = (timedelta(days=3 * 365) - timedelta(days=3)).total_seconds()
        for result_id in range(1, history + 1):
            roll = rng.random()
            if roll < 0.02:
                email = rng.choice(INVALID_EMAILS)
            else:
                email = email_as_typed(rng, self.person_email(rng.randrange(people)))
            completed = start + timedelta(seconds=span * result_id / (history + 1))
            datep = None if rng.random() < 0.01 else self._modx_time(completed)
            yield (result_id, email, rng.choice(ALL_TESTS), datep, rng.choice((0, 1, 1, 1)))

    def _fresh_results(
        self, *, first_id: int, count: int, prefix: str, start: datetime, end: datetime,
        repeat: float, expected: dict[str, set[str]], rng: random.Random,
    ) -> Iterator[tuple]:
        span = (end - start).total_seconds()
        for i in range(count):
            result_id = first_id + i
            test_id = rng.choice(ALL_TESTS)
            # Mostly one result per person; a `repeat` share are people taking another test.
            person = rng.randrange(i) if i and rng.random() < repeat else i
            if rng.random() < 0.01:
                email = rng.choice(INVALID_EMAILS)
                if prefix == "b":
                    self.backfill_invalid += 1
            else:
                email = email_as_typed(rng, self.person_email(person, prefix))
                expected[_funnel_of_test(test_id)].add(_ascii(email))
            completed = start + timedelta(seconds=span * (i + 1) / (count + 1))
            yield (result_id, email, test_id, self._modx_time(completed), 1)

    def backfill_results(self) -> Iterator[tuple]:
        count = self.scale.backfill
        return self._fresh_results(
            first_id=self.scale.history + 1, count=count, prefix="b",
            start=self.now - timedelta(days=2), end=self.now - timedelta(minutes=30),
            repeat=0.03, expected=self.expected_backfill,
            rng=random.Random(self.seed + 4),
        )

    def new_results(self, *, now: datetime | None = None) -> Iterator[tuple]:
        """The steady-state batch: ids after the backfill, completed minutes before `now`."""
        now = now or self.now
        count = self.scale.new_results
        return self._fresh_results(
            first_id=self.scale.results + 1, count=count, prefix="s",
            start=now - timedelta(minutes=14), end=now - timedelta(seconds=5),
            repeat=0.0, expected=self.expected_new, rng=random.Random(self.seed + 5),
        )

    def _payments(
        self, *, first_id: int, count: int, rng: random.Random, new: bool, now: datetime,
    ) -> Iterator[tuple[tuple, tuple, tuple]]:
        """(cert_user, cert_result, payment) rows, one of each per payment.

        Ids follow the time a payment was made (or, unpaid, started), as on the site: the
        purchase sync's watch list is then the newest ids, as it is in production.
        """
        drafts = []
        for _ in range(count):
            person = rng.randrange(self.entry_people)
            funnel = self.entry_funnel(person)
            if rng.random() < 0.15:
                funnel = NON_LANGUAGE if funnel == LANGUAGE else LANGUAGE
            cert_test = rng.choice(CERT_TEST_FOR[funnel])
            target = self.entry_index(person, funnel)
            if new:
                made = now - timedelta(seconds=rng.uniform(5, 3600))
            elif target is not None:
                entered = self.entry_entered_at(target)
                if rng.random() < 0.08:
                    made = entered - timedelta(hours=rng.uniform(1, 72))  # before entry
                else:
                    made = entered + timedelta(hours=rng.expovariate(1 / 72))
                made = min(made, self.entries_end)
            else:
                made = self.entries_end - timedelta(days=rng.uniform(0, 300))
            made = made.replace(microsecond=0)
            roll = rng.random()
            status = PAID
            paid_at: datetime | None = made
            if roll > 0.85:
                status = rng.choice((1, 3, 4))
            elif roll > 0.80:
                paid_at = None
            email = email_as_typed(rng, self.person_email(person))
            drafts.append((made, person, cert_test, target, status, paid_at, email))
        drafts.sort(key=lambda d: d[0])
        # Seen by the run after the payment, watched until the horizon after that; the
        # last run (at `now`) has deleted the watches that ended.
        watched_after = self.now - WATCH_HORIZON - WATCH_SEEN_AFTER
        for i, (made, _person, cert_test, target, status, paid_at, email) in enumerate(drafts):
            payment_id = first_id + i
            paid = status == PAID and paid_at is not None
            if paid and target is not None and paid_at >= self.entry_entered_at(target):
                # The rule the purchase sync applies: the earliest paid payment of the
                # funnel's type at or after entry, ties broken by payment id.
                if new:
                    if target not in self._converted:
                        self.expected_new_conversions += 1
                        self._converted[target] = (paid_at, payment_id)
                elif target not in self._converted or (paid_at, payment_id) < self._converted[
                    target
                ]:
                    self._converted[target] = (paid_at, payment_id)
            if not new and made > watched_after:
                self._watched.append((payment_id, paid, made))
            yield (
                (payment_id, email),
                (payment_id, payment_id, cert_test),
                (payment_id, payment_id, status, self._modx_time(paid_at)),
            )

    def modx_load(self, *, server: Server, database: str, method: str = "auto") -> LoadReport:
        scratch_name_check(database)
        report = LoadReport()
        conn = server.connect(database, local_infile=True)
        try:
            report.method = method if method != "auto" else (
                "infile" if local_infile_allowed(conn) else "insert"
            )

            def load(table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
                started = time.perf_counter()
                report.rows[table] = rows_load(
                    conn=conn, table=table, columns=columns, rows=rows, method=report.method
                )
                report.seconds[table] = round(time.perf_counter() - started, 2)

            load("simpletest_lang", ["Id"], [(lang,) for lang in LANGUAGES])
            load("simpletest_test", ["newid", "Id", "LangId"], self.tests())
            columns = ["Id", "Email", "TestId", "Datep", "Status"]
            load("simpletest_users", columns, self.history_results())
            started = time.perf_counter()
            report.rows["simpletest_users"] += rows_load(
                conn=conn, table="simpletest_users", columns=columns,
                rows=self.backfill_results(), method=report.method,
            )
            report.seconds["simpletest_users"] += round(time.perf_counter() - started, 2)
            load("modx_cert_test", ["id", "type"], sorted(CERT_TESTS.items()))
            self._payments_load(
                conn=conn, report=report, first_id=1, count=self.scale.old_payments, new=False,
                now=self.now,
            )
        finally:
            conn.close()
        return report

    def _payments_load(
        self, *, conn, report: LoadReport, first_id: int, count: int, new: bool, now: datetime,
    ) -> None:
        rng = random.Random(self.seed + (7 if new else 6))
        users, results, payments = [], [], []
        for user, result, payment in self._payments(
            first_id=first_id, count=count, rng=rng, new=new, now=now
        ):
            users.append(user)
            results.append(result)
            payments.append(payment)
        for table, columns, rows in (
            ("modx_cert_users", ["id", "email"], users),
            ("modx_cert_result", ["id", "id_user", "id_test"], results),
            ("modx_cert_payment", ["id", "id_result", "id_status", "datetime_payment"], payments),
        ):
            started = time.perf_counter()
            report.rows[table] = report.rows.get(table, 0) + rows_load(
                conn=conn, table=table, columns=columns, rows=rows, method=report.method
            )
            report.seconds[table] = round(
                report.seconds.get(table, 0) + time.perf_counter() - started, 2
            )

    def new_results_load(
        self, *, server: Server, database: str, now: datetime, method: str = "auto"
    ) -> int:
        scratch_name_check(database)
        conn = server.connect(database, local_infile=True)
        try:
            return rows_load(
                conn=conn, table="simpletest_users",
                columns=["Id", "Email", "TestId", "Datep", "Status"],
                rows=self.new_results(now=now), method=method,
            )
        finally:
            conn.close()

    def new_payments_load(
        self, *, server: Server, database: str, now: datetime, method: str = "auto"
    ) -> int:
        scratch_name_check(database)
        conn = server.connect(database, local_infile=True)
        report = LoadReport(method=method if method != "auto" else (
            "infile" if local_infile_allowed(conn) else "insert"
        ))
        try:
            self._payments_load(
                conn=conn, report=report, first_id=self.scale.new_payments_first_id,
                count=self.scale.new_payments, new=True, now=now,
            )
        finally:
            conn.close()
        return report.rows["modx_cert_payment"]

    # -- rows that cannot be decided yet ---------------------------------------------

    # What makes a waiting result undecidable, in turn: no completion time (a test not
    # finished), an invalid email, no email, no test id. Each is something MODX fills in
    # or corrects later, so the job keeps re-reading them (services/results.py).
    WAITING_RESULT_KINDS = ("no_completion_time", "invalid_email", "empty_email", "no_test_id")
    # ... and a waiting payment: its modx_cert_result row is missing, or its buyer's email
    # is invalid (services/purchases.py).
    WAITING_PAYMENT_KINDS = ("payment_result_missing", "invalid_email")

    @property
    def waiting_results_first_id(self) -> int:
        return self.scale.results + self.scale.new_results + 1

    def waiting_results(self, *, now: datetime) -> Iterator[tuple]:
        """Results completed minutes before `now` (or not completed) that no run can decide
        yet; ids after the steady-state batch."""
        rng = random.Random(self.seed + 9)
        first = self.waiting_results_first_id
        kinds = self.WAITING_RESULT_KINDS
        for i in range(self.scale.waiting_results):
            kind = kinds[i % len(kinds)]
            email = f"w{i}@{DOMAINS[i % len(DOMAINS)]}"
            test_id: int | None = rng.choice(ALL_TESTS)
            datep = self._modx_time(now - timedelta(seconds=rng.uniform(30, 600)))
            if kind == "no_completion_time":
                datep = None
            elif kind == "invalid_email":
                email = f"w{i} at example.com" if i % 2 else f"w{i}@@example.com"
            elif kind == "empty_email":
                email = "" if i % 2 else None
            else:
                test_id = None
            yield (first + i, email, test_id, datep, 1)

    def waiting_payments(self, *, now: datetime) -> Iterator[tuple[tuple | None, tuple | None, tuple]]:
        """(cert_user, cert_result, payment) rows of paid payments no run can decide yet; a
        payment whose result is missing has neither a result nor a user row."""
        rng = random.Random(self.seed + 10)
        first = self.scale.old_payments + 1
        kinds = self.WAITING_PAYMENT_KINDS
        for i in range(self.scale.waiting_payments):
            payment_id = first + i
            paid_at = self._modx_time(
                (now - timedelta(seconds=rng.uniform(30, 600))).replace(microsecond=0)
            )
            payment = (payment_id, payment_id, PAID, paid_at)
            if kinds[i % len(kinds)] == "payment_result_missing":
                yield None, None, payment
            else:
                yield (
                    (payment_id, f"w{i}@@{DOMAINS[i % len(DOMAINS)]}"),
                    (payment_id, payment_id, rng.choice(sorted(CERT_TESTS))),
                    payment,
                )

    def waiting_load(
        self, *, server: Server, database: str, now: datetime, method: str = "auto"
    ) -> dict[str, int]:
        """Insert the waiting results and payments; returns rows inserted per table."""
        scratch_name_check(database)
        conn = server.connect(database, local_infile=True)
        try:
            if method == "auto":
                method = "infile" if local_infile_allowed(conn) else "insert"
            rows = {"simpletest_users": rows_load(
                conn=conn, table="simpletest_users",
                columns=["Id", "Email", "TestId", "Datep", "Status"],
                rows=self.waiting_results(now=now), method=method,
            )}
            users, results, payments = [], [], []
            for user, result, payment in self.waiting_payments(now=now):
                if user is not None:
                    users.append(user)
                if result is not None:
                    results.append(result)
                payments.append(payment)
            for table, columns, table_rows in (
                ("modx_cert_users", ["id", "email"], users),
                ("modx_cert_result", ["id", "id_user", "id_test"], results),
                ("modx_cert_payment", ["id", "id_result", "id_status", "datetime_payment"],
                 payments),
            ):
                rows[table] = rows_load(
                    conn=conn, table=table, columns=columns, rows=table_rows, method=method
                ) if table_rows else 0
        finally:
            conn.close()
        return rows

    # -- funnel_entries --------------------------------------------------------------

    ENTRY_COLUMNS = (
        "id", "email", "funnel_type", "user_id", "test_id", "entered_at",
        "certificate_purchased", "certificate_purchased_at", "test_completed_at", "payment_id",
        "sync_status", "sync_revision", "synced_revision", "sync_attempts", "sync_last_error",
        "sync_next_attempt_at", "synced_at", "run_id", "created_at", "updated_at",
        # The funnel started at Brevo's first confirmation, a cron period after entry (the
        # group and control period keep their database defaults: treatment, period 0).
        "funnel_started_at",
    )

    def entries(self) -> Iterator[tuple]:
        """Pre-filled entries, already synced; call after modx_load (conversions known).

        Times are built as naive UTC directly (how Django stores them in MySQL): converting
        five aware datetimes per row would triple the time this takes for a million rows.
        """
        rng = random.Random(self.seed + 8)
        history = max(1, self.scale.history)
        quarter = timedelta(minutes=15)
        for k in range(self.scale.entries):
            person = k % self.entry_people
            funnel = self.entry_funnel(k)
            tests = LANGUAGE_TESTS if funnel == LANGUAGE else NON_LANGUAGE_TESTS
            entered = self._utc_naive(self.entry_entered_at(k))
            converted = self._converted.get(k)
            purchased_at = self._utc_naive(converted[0]) if converted else None
            payment_id = converted[1] if converted else None
            synced = entered + quarter
            if purchased_at is not None:
                self.entries_converted += 1
                synced = max(synced, purchased_at + quarter)
            yield (
                k + 1, self.person_email_normalized(person), funnel, rng.randint(1, history),
                rng.choice(tests), entered, purchased_at is not None,
                purchased_at, entered, payment_id,
                "synced", 2 if purchased_at else 1, 2 if purchased_at else 1, 1, "",
                None, synced, None, entered, synced, entered + quarter,
            )

    def watch_next_check(self, *, payment_id: int, seen: datetime) -> datetime:
        """When the purchase sync reads a watched payment again, as its last run (at `now`)
        left it: the step for the watch's age (`RECHECK_STEPS`), spread over that step by
        payment id, as a list that has been read by many runs is spread; never before `now`,
        so a steady-state run starts with only the few that fall due since the last one."""
        age = self.now - seen
        every = next((step for younger, step in RECHECK_STEPS if age < younger), RECHECK_LATEST)
        return self.now + every * ((payment_id % 100) + 1) / 100

    def watches(self) -> Iterator[tuple]:
        """PaymentWatch rows (payment_id, paid, first_seen_at, recheck_until, next_check_at)
        as the purchase sync leaves them: each payment seen a cron period after it was made,
        watched for FUNNELS_PURCHASE_RECHECK_DAYS from then, due again on its schedule."""
        for payment_id, paid, made in self._watched:
            seen = made + WATCH_SEEN_AFTER
            yield (
                payment_id, paid, self._utc_naive(seen),
                self._utc_naive(seen + WATCH_HORIZON),
                self._utc_naive(self.watch_next_check(payment_id=payment_id, seen=seen)),
            )

    # The report scenarios run with a control group, as a site measuring its lift does:
    # both funnels hold out this share of the people entered in the last CONTROL_DAYS.
    CONTROL_SHARE = 10
    CONTROL_DAYS = 180

    def control_group_load(self, *, server: Server, database: str) -> dict[str, int]:
        """Period 1 of both funnels starts CONTROL_DAYS before `now` with CONTROL_SHARE %
        held out: every entry entered since is in period 1, one in ten (by id) in control,
        never sent, its funnel started when it was assigned. Run after the scenarios that
        push to Brevo (they would hold new people out too), before the reports."""
        scratch_name_check(database)
        start = self._utc_naive(self.now - timedelta(days=self.CONTROL_DAYS))
        conn = server.connect(database)
        try:
            cursor = conn.cursor()
            cursor.execute(
                "UPDATE funnel_entries SET control_period = 1, "
                "experiment_group = IF(id %% 10 = 0, 'control', 'treatment'), "
                "sync_status = IF(id %% 10 = 0, 'control', sync_status), "
                "synced_revision = IF(id %% 10 = 0, 0, synced_revision), "
                "synced_at = IF(id %% 10 = 0, NULL, synced_at), "
                "funnel_started_at = IF(id %% 10 = 0, entered_at, funnel_started_at) "
                "WHERE entered_at >= %s",
                [start],
            )
            moved = cursor.rowcount
            cursor.execute("UPDATE funnels_funnel SET control_share = %s, control_period = 1",
                           [self.CONTROL_SHARE])
            cursor.execute(
                "INSERT INTO funnels_controlperiod (funnel_id, number, share, started_at) "
                "SELECT id, 1, %s, %s FROM funnels_funnel",
                [self.CONTROL_SHARE, start],
            )
            cursor.execute("SELECT COUNT(*) FROM funnel_entries WHERE experiment_group = "
                           "'control'")
            control = cursor.fetchone()[0]
        finally:
            conn.close()
        return {"period_1_entries": moved, "control_entries": control}

    def entries_load(self, *, server: Server, database: str, method: str = "auto") -> LoadReport:
        scratch_name_check(database)
        conn = server.connect(database, local_infile=True)
        report = LoadReport()
        try:
            present = table_columns(conn=conn, table="funnel_entries")
            missing = [
                name for name, info in present.items()
                if name not in self.ENTRY_COLUMNS and not info["nullable"]
                and info["default"] is None and "auto_increment" not in info["extra"]
            ]
            if missing:
                raise RuntimeError(
                    "funnel_entries has NOT NULL columns the benchmark does not fill: "
                    + ", ".join(sorted(missing))
                )
            report.method = method if method != "auto" else (
                "infile" if local_infile_allowed(conn) else "insert"
            )
            started = time.perf_counter()
            report.rows["funnel_entries"] = rows_load(
                conn=conn, table="funnel_entries", columns=self.ENTRY_COLUMNS,
                rows=self.entries(), method=report.method,
            )
            report.seconds["funnel_entries"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            report.rows["funnels_paymentwatch"] = rows_load(
                conn=conn, table="funnels_paymentwatch",
                columns=["payment_id", "paid", "first_seen_at", "recheck_until", "next_check_at"],
                rows=self.watches(), method=report.method,
            )
            report.seconds["funnels_paymentwatch"] = round(time.perf_counter() - started, 2)
        finally:
            conn.close()
        return report
