"""The benchmark at CI size, on MariaDB: keeps `python -m bench.run` working.

The whole benchmark (data, migrate, fake Brevo, every scenario in its own process) runs at
the --tiny scale against scratch databases named after this run's test database, so
parallel checkouts do not collide; they are dropped at the end. The small tests below pin
the pieces whose mistakes would silently skew the figures.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from pathlib import Path

import pytest
from django.db import connections

from bench import datagen
from bench.datagen import TINY, BenchData, Scale, Server
from bench.harness import _profile_steps, sql_shape
from bench.run import (
    BEGIN,
    CRON_PERIOD,
    END,
    _target,
    bench_run,
    docs_write,
    markdown,
    recheck_queries_expected,
)
from funnels.emails import email_check

SHARED_DDL = Path(__file__).resolve().parents[3] / "shared" / "domain" / "modx_schema.sql"


@pytest.fixture
def server() -> Server:
    settings = connections["default"].settings_dict
    return Server(
        host=settings["HOST"] or "127.0.0.1", port=int(settings["PORT"] or 3306),
        user=settings["USER"] or "root", password=settings["PASSWORD"] or "",
    )


@pytest.fixture
def scratch_name() -> str:
    # Named after this checkout's test database: two checkouts never share scratch tables.
    base = re.sub(r"[^A-Za-z0-9_]", "_", str(connections["default"].settings_dict["NAME"]))
    return f"{base[:40]}_bench"


def _expected_backfill() -> dict[str, set[str]]:
    # The addresses depend on the seed only, not on the clock.
    data = BenchData(scale=TINY, now=dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc))
    list(data.backfill_results())
    return data.expected_backfill


@pytest.mark.mariadb_only
@pytest.mark.slow
def test_bench_tiny_runs_every_scenario(server, scratch_name, tmp_path):
    report = bench_run(
        scale=TINY, server=server, db_name=scratch_name, out_dir=tmp_path, keep=False,
        log=lambda line: None,
    )

    assert report["errors"] == {}, report["errors"]
    scenarios = report["scenarios"]
    assert set(scenarios) == {
        "backfill", "steady_0_after_backfill", "steady_0", "steady_new", "recheck_fill",
        "recheck_idle", "purchases", "purchases_push", "report_command", "report_page",
        "report_command_raw", "report_page_raw", "rollup_rebuild",
        "audit_full", "audit_idle", "proof",
    }
    assert not [name for name, s in scenarios.items() if "error" in s]
    expected = _expected_backfill()
    backfill = scenarios["backfill"]
    assert backfill["detail"]["status"] == "success"
    assert backfill["detail"]["entries_added"] == sum(len(v) for v in expected.values())
    # Every valid backfill address reached its funnel's list, and no other contact exists.
    check = report["checks"]["backfill"]
    assert check["ok"], check
    assert check["contacts_total"] == len(expected["language"] | expected["non_language"])
    assert 0 < backfill["brevo_requests"] < backfill["detail"]["contacts_sent"]

    steady = scenarios["steady_0"]
    assert steady["detail"]["status"] == "success"
    assert steady["detail"]["results_read"] == 0
    assert steady["brevo_requests"] == 0
    # Runs are 15 minutes apart on the job's clock: the 0-new run re-reads the watched
    # payments due in its 15 minutes (the same share at any scale), not the whole list.
    watched = report["setup"]["entries"]["rows"]["funnels_paymentwatch"]
    assert 0 < steady["detail"]["payments_read"] < watched / 10
    assert steady["detail"]["as_of"] == (
        dt.datetime.fromisoformat(report["when"]) + 3 * CRON_PERIOD
    ).isoformat()
    explained = [plan["sql"] for plan in steady["explain"]]
    assert any("simpletest_users" in sql for sql in explained)
    assert all(plan["plan"] for plan in steady["explain"])
    assert report["checks"]["steady_new"]["ok"], report["checks"]["steady_new"]

    # The undecidable rows wait on their lists: nothing entered, nothing sent ...
    fill = scenarios["recheck_fill"]
    assert fill["detail"]["status"] == "success"
    assert fill["detail"]["entries_added"] == 0 and fill["brevo_requests"] == 0
    reasons = fill["detail"]["waiting_by_reason"]
    assert sum(v for k, v in reasons.items() if not k.startswith("payment:")) == (
        TINY.waiting_results
    )
    assert reasons["payment:payment_result_missing"] + reasons["payment:invalid_email"] == (
        TINY.waiting_payments
    )
    assert {"no_completion_time", "invalid_email", "empty_email", "no_test_id"} <= set(reasons)
    # ... and the next run with nothing new re-reads them all, decides nothing again, and
    # costs the queries of the 0-new run plus a constant per source.
    idle = scenarios["recheck_idle"]
    waiting = idle["detail"]["recheck_waiting"]
    assert waiting["payments"] == TINY.waiting_payments
    assert waiting["test_results"] >= TINY.waiting_results
    assert idle["detail"]["results_read"] == 0 and idle["detail"]["waiting_by_reason"] == {}
    assert idle["brevo_requests"] == 0
    targets = {t["target"]: t for t in idle["targets"]}
    assert targets["query count independent of the list's size"]["met"], targets
    assert sum(idle["queries"].values()) == recheck_queries_expected(
        baseline=sum(steady["queries"].values()),
        before=steady["detail"]["recheck_waiting"], after=waiting,
    )

    purchases = scenarios["purchases"]
    assert purchases["detail"]["purchases_found"] == report["checks"]["purchases"][
        "expected_new_conversions"
    ] > 0
    # One Brevo contact per email: a buyer with two converted entries is one contact.
    push = scenarios["purchases_push"]["detail"]
    assert push["status"] == "success" and push["contacts_failed"] == 0
    assert 0 < push["contacts_sent"] <= purchases["detail"]["purchases_found"]
    page = scenarios["report_page"]["detail"]
    assert page["status"] == 200
    assert 0 < page["converted"] < page["entered"]
    year_to = dt.datetime.now(dt.timezone.utc).date()
    assert (year_to - dt.timedelta(days=365)).isoformat() in scenarios["report_command"][
        "detail"
    ]["output"]
    for name in ("report_command", "report_page"):
        profile = scenarios[name]["profile"]
        # The runs' rollup answers the report (reports/rollup.py) ...
        assert "report_rollup" in [step["table"] for step in profile["steps"]], name
    # ... with the numbers counted from the entries, to the character.
    assert scenarios["report_command"]["detail"]["output"] == (
        scenarios["report_command_raw"]["detail"]["output"]
    )
    assert {k: page[k] for k in ("entered", "converted")} == {
        k: scenarios["report_page_raw"]["detail"][k] for k in ("entered", "converted")
    }
    assert scenarios["rollup_rebuild"]["detail"]["rows"] > 0
    assert report["setup"]["rollup"]["rows"] > 0
    # The next day's audit with nothing changed: one request per list (issue 14).
    audit_idle = scenarios["audit_idle"]
    assert audit_idle["detail"]["kind"] == "incremental"
    assert audit_idle["detail"]["audit_requests"] <= len(audit_idle["detail"]["lists"]) == 2
    assert all(t["met"] for t in audit_idle["targets"]), audit_idle["targets"]
    for name, scenario in scenarios.items():
        assert 0 < scenario["peak_rss_mb"] < 1000, name
        assert sum(scenario["queries"].values()) > 0, name
        assert scenario["targets"], name

    text = markdown(report, command="python -m bench.run --tiny")
    assert "| Scenario |" in text and "EXPLAIN of every query" in text
    assert "EXPLAIN of the recheck lists' queries" in text
    conn = server.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SHOW DATABASES LIKE %s", (scratch_name + "%",))
        assert cursor.fetchall() == (), "the scratch databases were dropped"
    finally:
        conn.close()


@pytest.mark.mariadb_only
@pytest.mark.parametrize("method", ["infile", "insert"])
def test_rows_load_keeps_awkward_values(server, scratch_name, method):
    name = f"{scratch_name}_load"
    rows = [
        (1, "tab\there", dt.datetime(2026, 11, 28, 15, 30, 1)),
        (2, "back\\slash and new\nline", None),
        (3, "  Пример@Пример.рф ", dt.datetime(2026, 1, 2, 3, 4, 5, 600000)),
        (4, None, dt.datetime(2026, 1, 2, 3, 4, 5)),
        (5, "", None),
    ]
    datagen.databases_reset(server=server, names=[name])
    try:
        conn = server.connect(name, local_infile=True)
        cursor = conn.cursor()
        cursor.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(255) NULL, d DATETIME(6) NULL)"
                       " CHARACTER SET utf8mb4")
        assert datagen.rows_load(
            conn=conn, table="t", columns=["id", "v", "d"], rows=iter(rows), method=method
        ) == len(rows)
        cursor.execute("SELECT id, v, d FROM t ORDER BY id")
        assert list(cursor.fetchall()) == rows
        conn.close()
    finally:
        datagen.databases_drop(server=server, names=[name])


def test_scratch_names_must_say_bench():
    assert datagen.scratch_name_check("bench_tf") == "bench_tf"
    for name in ("testizer", "modx", "bench-tf", "bench;drop", ""):
        with pytest.raises(ValueError):
            datagen.scratch_name_check(name)


def test_backfill_data_has_a_known_answer():
    data = BenchData(scale=TINY, now=dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc))
    rows = list(data.backfill_results())
    assert [r[0] for r in rows] == list(range(TINY.history + 1, TINY.results + 1))
    valid = {}
    for _id, email, test_id, _datep, _status in rows:
        checked = email_check(email)
        if checked.ok:
            funnel = "language" if test_id <= 20 else "non_language"
            valid.setdefault(funnel, set()).add(checked.email)
    assert valid == data.expected_backfill
    assert data.backfill_invalid == len(rows) - sum(
        1 for r in rows if email_check(r[1]).ok
    ) > 0
    # Times are naive MODX (Moscow) times within the two days before `now`.
    assert all(dt.datetime(2026, 11, 26, 18, 0) <= r[3] <= dt.datetime(2026, 11, 28, 18, 30)
               for r in rows)


def test_entries_are_unique_and_conversions_follow_the_rule():
    scale = Scale(results=300, payments=400, backfill=100, entries=500, new_results=10,
                  new_payments=50)
    data = BenchData(scale=scale, now=dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc))
    payments = [p for _u, _r, p in data._payments(
        first_id=1, count=scale.old_payments, rng=random.Random(1), new=False,
        now=data.now,
    )]
    entries = list(data.entries())
    keys = {(e[1], e[2], e[4]) for e in entries}
    assert len(keys) == len(entries) == scale.entries
    assert len({(e[1], e[2]) for e in entries}) == len(entries), "once per person and funnel"
    converted = [e for e in entries if e[6]]
    assert converted and data.entries_converted == len(converted)
    by_id = {p[0]: p for p in payments}
    for entry in converted:
        payment = by_id[entry[9]]
        assert payment[2] == datagen.PAID and payment[3] is not None
        assert entry[7] >= entry[5], "a purchase before entry is not a conversion"


def test_sql_shape_groups_variable_lists():
    assert sql_shape("SELECT a FROM t WHERE id IN (%s, %s, %s)") == (
        "SELECT a FROM t WHERE id IN (%s, ...)"
    )
    assert sql_shape("INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s), (%s, %s)") == (
        "INSERT INTO t (a, b) VALUES (...), ..."
    )


def test_docs_write_keeps_hand_written_text(tmp_path):
    path = tmp_path / "benchmarks.md"
    docs_write(path, f"{BEGIN}\nfirst\n{END}\n")
    path.write_text("# Benchmarks\n\nIntro.\n\n" + path.read_text().split("\n", 2)[2]
                    + "\n## Analysis\nkept\n")
    docs_write(path, f"{BEGIN}\nsecond\n{END}\n")
    text = path.read_text()
    assert "second" in text and "first" not in text
    assert "Intro." in text and "## Analysis\nkept" in text


@pytest.mark.skipif(not SHARED_DDL.exists(), reason="the shared domain folder is not beside the repo")
def test_vendored_ddl_is_the_shared_one():
    assert datagen.ddl_statements(datagen.DEFAULT_MODX_DDL) == datagen.ddl_statements(SHARED_DDL)


def test_watch_schedule_is_the_purchase_sync_one():
    from funnels.services import purchase_writes

    assert datagen.RECHECK_STEPS == purchase_writes.RECHECK_STEPS
    assert datagen.RECHECK_LATEST == purchase_writes.RECHECK_LATEST


def test_watches_are_left_as_the_last_run_left_them():
    now = dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc)
    data = BenchData(scale=TINY, now=now)
    for _rows in data._payments(
        first_id=1, count=TINY.old_payments, rng=random.Random(data.seed + 6), new=False,
        now=now,
    ):
        pass
    watches = list(data.watches())
    assert len(watches) >= 100, "every residue of the spread, for the query-count comparison"
    naive_now = now.replace(tzinfo=None)
    for payment_id, _paid, seen, until, next_check in watches:
        assert until == seen + dt.timedelta(days=30)
        assert until > naive_now, "a watch that ended was deleted by the last run"
        age = naive_now - seen
        every = (
            dt.timedelta(hours=6) if age < dt.timedelta(days=7) else dt.timedelta(days=1)
        )
        assert next_check == naive_now + every * ((payment_id % 100) + 1) / 100
    # Each of the benchmark's runs, 15 minutes apart, meets a few of them, not the list.
    for n in range(1, 9):
        due = [
            w for w in watches
            if naive_now + (n - 1) * CRON_PERIOD < w[4] <= naive_now + n * CRON_PERIOD
        ]
        assert 0 < len(due) < len(watches) / 10, n


def test_query_count_comparison_target():
    from bench.harness import ScenarioResult

    result = ScenarioResult(
        name="steady_0", seconds=0.2, process_seconds=0.6, queries={"default": 20, "modx": 4},
        query_seconds={}, peak_rss_mb=50, detail={"payments_read": 12},
    )

    def compared(queries: int) -> dict:
        checks = {"compare_queries": {"queries": queries, "label": "tiny", "payments_read": 3}}
        return {t["target"]: t for t in _target(result, "steady_0", TINY, checks)}

    assert compared(24)["constant query count across scales"]["met"]
    assert not compared(25)["constant query count across scales"]["met"]
    assert "12 watched payments" in compared(24)["constant query count across scales"][
        "measured"
    ]


def test_profile_steps_walk_derived_tables():
    tree = {"query_block": {"r_total_time_ms": 2137.9, "filesort": {"temporary_table": {
        "nested_loop": [{"table": {
            "table_name": "<derived2>", "access_type": "ALL", "r_rows": 1098582,
            "r_table_time_ms": 24.9, "r_other_time_ms": 290.9,
            "materialized": {"query_block": {"nested_loop": [{"table": {
                "table_name": "funnel_entries", "access_type": "range",
                "key": "idx_fe_person", "r_rows": 1098582, "r_table_time_ms": 664.9,
                "r_other_time_ms": 1031.7,
                "r_engine_stats": {"pages_read_count": 6901, "pages_read_time_ms": 443.5},
            }}]}},
        }}],
    }}}}
    steps = []
    _profile_steps(tree, steps)
    assert [(s["table"], s["key"], s["pages_read"]) for s in steps] == [
        ("<derived2>", None, 0), ("funnel_entries", "idx_fe_person", 6901),
    ]
    assert steps[1]["other_ms"] == 1031.7 and steps[1]["pages_read_ms"] == 443.5


def test_waiting_rows_cannot_be_decided():
    """Each generated waiting row has one of the reasons the job waits for, with ids right
    after the rows read before them."""
    now = dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc)
    data = BenchData(scale=TINY, now=now)
    results = list(data.waiting_results(now=now))
    assert [r[0] for r in results] == list(range(
        TINY.results + TINY.new_results + 1,
        TINY.results + TINY.new_results + TINY.waiting_results + 1,
    ))
    for _id, email, test_id, datep, _status in results:
        undecidable = not email_check(email).ok or test_id is None or datep is None
        assert undecidable, (email, test_id, datep)
    payments = list(data.waiting_payments(now=now))
    ids = [p[0] for _u, _r, p in payments]
    assert ids == list(range(TINY.old_payments + 1, TINY.new_payments_first_id))
    for user, result, payment in payments:
        assert payment[2] == datagen.PAID and payment[3] is not None
        assert (result is None and user is None) or not email_check(user[1]).ok


def test_recheck_read_size_is_the_driver_one():
    from bench import run
    from funnels.services import modx_reader

    assert run.RECHECK_READ_SIZE == modx_reader.RECHECK_READ_SIZE


def test_recheck_query_count_grows_only_with_a_list_becoming_non_empty():
    # One digest-sum query on MODX per non-empty list, whatever its size.
    assert recheck_queries_expected(
        baseline=33, before={"test_results": 16}, after={"test_results": 8016, "payments": 2000}
    ) == 34
    assert recheck_queries_expected(
        baseline=34, before={"test_results": 8016, "payments": 2000},
        after={"test_results": 20_000, "payments": 1},
    ) == 34
    assert recheck_queries_expected(
        baseline=34, before={"test_results": 8016, "payments": 2000}, after={"payments": 5},
    ) == 33


def test_idle_audit_target_is_one_request_per_list():
    from bench.harness import ScenarioResult

    def target(requests: int, lists: int = 2, changed: int = 0) -> dict:
        result = ScenarioResult(
            name="audit_idle", seconds=0.5, process_seconds=1.0, queries={"default": 14},
            query_seconds={}, peak_rss_mb=50,
            detail={"kind": "incremental", "audit_requests": requests,
                    "states_changed": changed, "lists": {str(i): {} for i in range(lists)}},
        )
        return _target(result, "audit_idle", TINY, {})[0]

    assert target(2)["met"] and "1.00 requests per list (2 for 2 lists)" in target(2)[
        "measured"
    ]
    assert not target(3)["met"]
    assert not target(4)["met"], "2 a list, the cost before"
    assert target(2, lists=5)["met"] and "0.40 requests per list" in target(2, lists=5)[
        "measured"
    ]
    assert not target(2, changed=1)["met"], "something changed: not an idle audit"
