"""The performance benchmark: `python -m bench.run` (MariaDB only). See bench/README.md.

    python -m bench.run [--scale 1000000] [--payments 200000] [--backfill 100000]
                        [--entries 1000000] [--out bench/results] [--tiny]
                        [--server-url mysql://root@127.0.0.1:3306] [--db-name bench_tf]
                        [--docs docs/benchmarks.md] [--compare OTHER/results.json]

Builds scratch databases `<db-name>` and `<db-name>_modx` (dropped and re-created: the
name must contain "bench"), fills them with synthetic data (bench.datagen), migrates ours,
starts the fake Brevo with Brevo's rate limit and a realistic latency, runs each scenario in
its own process (bench.harness) and writes results.json and benchmarks.md to --out (and the
Markdown into --docs, between its bench markers, when given). Exit status 0 when every
scenario ran and met its target, 1 when one missed, 2 when one could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.datagen import (
    LANGUAGE,
    LIST_IDS,
    NON_LANGUAGE,
    TINY,
    BenchData,
    Scale,
    Server,
    databases_drop,
    databases_reset,
    modx_schema_create,
    scratch_name_check,
)
from bench.harness import ROOT, FakeBrevoProcess, ScenarioFailed, ScenarioResult, scenario_run
from funnels.codes import Source

MB_LIMIT = 300
# Each run of the job is the next cron run, 15 minutes after the one before (`--as-of`),
# on a clock that starts where the generated history ends (the data's `now`, when the
# last run before the benchmark left its watch list). What falls due (watched payments,
# retries) then follows the schedule, not how long loading took on this machine, so a
# run at any scale meets the same share of its watch list.
CRON_PERIOD = dt.timedelta(minutes=15)
# Waiting rows re-read per primary-key IN query when MODX changed some of them
# (funnels/services/modx_reader.py RECHECK_READ_SIZE), copied because this module runs
# without Django settings; a test checks the copy is current.
RECHECK_READ_SIZE = 10_000
RECHECK_SOURCES = (Source.RESULTS, Source.PAYMENTS)  # funnels.codes needs no settings
BEGIN = "<!-- bench:begin (written by python -m bench.run; edit outside the markers) -->"
END = "<!-- bench:end -->"

# Scenario name -> what it is, for the table.
TITLES = {
    "backfill": "1. Backfill: {backfill:,} new results -> Brevo (run_funnels --live)",
    "steady_0_after_backfill": "2a. Run with 0 new results, right after the backfill",
    "steady_0": "2b. Steady state: run with 0 new results",
    "steady_new": "2c. Steady state: run with {new_results:,} new results",
    "recheck_fill": "2d. Run with {waiting_results:,} results and {waiting_payments:,} payments "
                    "that cannot be decided yet",
    "recheck_idle": "2e. Run with 0 new rows, {waiting:,} rows waiting on the recheck lists",
    "purchases": "3. Purchase sync: {new_payments:,} new payments vs {entries:,} entries",
    "purchases_push": "3b. Next run: push the purchase updates to Brevo",
    "report_command": "4a. report_conversions, one year, {entries:,} entries, a 10 % control "
                      "group over the last 180 days (lift included)",
    "report_page": "4b. Admin report page, one year, {entries:,} entries, a 10 % control "
                   "group over the last 180 days (lift included)",
    "report_command_raw": "4c. As 4a, counted from the entries (no rollup), same data",
    "report_page_raw": "4d. As 4b, counted from the entries (no rollup), same data",
    "rollup_rebuild": "4e. rebuild_report_rollup over {entries:,} entries (after the loader "
                      "and the control group, which write entries directly)",
    "audit_full": "5a. Brevo audit, every list read whole ({backfill:,}+ contacts)",
    "audit_idle": "5b. Brevo audit the next day, nothing changed in Brevo",
    "proof": "5c. Proof that nobody is lost, last FUNNELS_RECHECK_DAYS, {entries:,} entries",
}


def _env(*, server: Server, db_default: str, db_modx: str, fake: FakeBrevoProcess | None,
         out_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        # Nothing of an operator's configuration may leak into the scratch run.
        if name.startswith(("BREVO_", "FUNNELS_", "DB_")) or name in {"SENTRY_DSN"}:
            env.pop(name)
    env.update({
        "DJANGO_SETTINGS_MODULE": "testizer_funnels.settings",
        "TESTIZER_ENV_FILE": "/dev/null",
        "APP_ENV": "development",
        "DEBUG": "false",
        "DATABASE_URL": server.url(db_default),
        "MODX_DATABASE_URL": server.url(db_modx),
        "MODX_TIME_ZONE": "Europe/Moscow",
        "APP_DRY_RUN": "false",
        "BREVO_LANGUAGE_LIST_ID": str(LIST_IDS[LANGUAGE]),
        "BREVO_NON_LANGUAGE_LIST_ID": str(LIST_IDS[NON_LANGUAGE]),
        "BREVO_API_KEY": fake.api_key if fake else "bench-not-started",
        "BREVO_BASE_URL": fake.base_url if fake else "http://127.0.0.1:9/v3",
        "LOG_FILE": str(out_dir / "app.log"),
        "APP_LOG_LEVEL": "INFO",
        "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
        "PYTHONPATH": str(ROOT),
    })
    return env


def innodb_purge_wait(*, server: Server, below: int = 200, timeout: float = 180) -> float:
    """Wait until InnoDB's purge has caught up: the history list length is below `below`,
    or has stopped shrinking for 5 s (on a shared server the rest is other sessions' work)."""
    started = time.perf_counter()
    best: int | None = None
    best_at = started
    conn = server.connect()
    try:
        cursor = conn.cursor()
        while time.perf_counter() - started < timeout:
            cursor.execute("SHOW ENGINE INNODB STATUS")
            match = re.search(r"History list length (\d+)", cursor.fetchone()[2])
            if match is None:
                break
            length = int(match.group(1))
            if length < below:
                break
            if best is None or length < best * 0.95:
                best, best_at = length, time.perf_counter()
            elif time.perf_counter() - best_at > 5:
                break
            time.sleep(0.5)
    finally:
        conn.close()
    return round(time.perf_counter() - started, 1)


def machine_info(*, server: Server) -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version()}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    conn = server.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT VERSION(), @@innodb_buffer_pool_size, @@tmp_table_size, "
            "@@max_heap_table_size"
        )
        version, pool, tmp_table, max_heap = cursor.fetchone()
        info["mariadb"] = version
        info["innodb_buffer_pool_mib"] = int(pool) // (1024 * 1024)
        # In-memory temporary tables are the smaller of the two (GROUP BY, derived tables).
        info["tmp_table_mib"] = min(int(tmp_table), int(max_heap)) // (1024 * 1024)
    finally:
        conn.close()
    try:
        import django

        info["django"] = django.get_version()
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        ).stdout.strip()
    except (ImportError, OSError):
        pass
    return info


def lists_check(*, state: dict[str, Any], expected: dict[str, set[str]]) -> dict[str, Any]:
    """Compare the fake's list members with the contacts each list should have gained."""
    report: dict[str, Any] = {}
    for funnel, emails in expected.items():
        members = set(state["lists"].get(str(LIST_IDS[funnel]), []))
        report[funnel] = {
            "expected": len(emails),
            "in_list": len(emails & members),
            "missing": len(emails - members),
            "missing_examples": sorted(emails - members)[:3],
        }
    report["contacts_total"] = len(state["contacts"])
    report["ok"] = all(v["missing"] == 0 for k, v in report.items() if isinstance(v, dict))
    return report


def _target(result: ScenarioResult | None, name: str, scale: Scale,
            checks: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of a scenario: what, measured, met."""
    if result is None:
        return []
    targets: list[dict[str, Any]] = []

    def add(what: str, measured: Any, met: bool) -> None:
        targets.append({"target": what, "measured": measured, "met": bool(met)})

    if name == "backfill":
        add("< 120 s end to end", f"{result.process_seconds:.1f} s",
            result.process_seconds < 120)
        contacts = checks.get("backfill", {}).get("expected_contacts", scale.backfill)
        requests = result.brevo_requests or 0
        add("<= 1 Brevo request per 1,000 contacts",
            f"{requests} requests for {contacts:,} contacts", requests * 1000 <= contacts)
        add("contacts in the right lists", checks.get("backfill", {}).get("summary", "?"),
            checks.get("backfill", {}).get("ok", False))
    elif name == "steady_0_after_backfill":
        add("< 1 s", f"{result.seconds:.3f} s", result.seconds < 1)
    elif name == "steady_0":
        add("< 1 s", f"{result.seconds:.3f} s", result.seconds < 1)
        scans = sorted({t for plan in result.explain for t in plan["full_scans"]})
        add("no full scans (EXPLAIN)", ", ".join(scans) or "none", not scans)
        other = checks.get("compare_queries")
        if other is not None:
            mine = sum(result.queries.values())
            add("constant query count across scales",
                f"{mine} here ({result.detail.get('payments_read')} watched payments re-read), "
                f"{other['queries']} at {other['label']} ({other.get('payments_read')})",
                mine == other["queries"])
    elif name == "steady_new":
        add("< 10 s, Brevo rate limit included", f"{result.seconds:.2f} s", result.seconds < 10)
        add("new contacts in the right lists", checks.get("steady_new", {}).get("summary", "?"),
            checks.get("steady_new", {}).get("ok", False))
    elif name == "recheck_fill":
        expected = scale.waiting_results + scale.waiting_payments
        put = sum((result.detail.get("waiting_by_reason") or {}).values())
        add("every undecidable row put on its list, nothing entered or sent",
            f"{put:,} of {expected:,} put on the lists, {result.detail.get('entries_added')} "
            f"entries, {result.brevo_requests} Brevo requests",
            put == expected and result.detail.get("entries_added") == 0
            and not result.brevo_requests)
    elif name == "recheck_idle":
        add("< 0.1 s", f"{result.seconds:.3f} s", result.seconds < 0.1)
        scans = sorted({t for plan in result.explain for t in plan["full_scans"]})
        # The lists are read whole by design (one query per source, bounded by
        # FUNNELS_RECHECK_MAX_ROWS); when one source is most of the table the optimizer
        # rightly scans it rather than walk the unique key.
        other = [t for t in scans if t != "funnels_recheckrow"]
        add("no full scans (EXPLAIN) but the recheck list's own read",
            ", ".join(scans) or "none", not other)
        baseline = checks.get("recheck_baseline")
        if baseline is not None:
            mine = sum(result.queries.values())
            waiting = result.detail.get("recheck_waiting") or {}
            expected = recheck_queries_expected(
                baseline=baseline["queries"], before=baseline["waiting"], after=waiting
            )
            add("query count independent of the list's size",
                f"{mine} with {_waiting_text(waiting)} waiting; {baseline['queries']} in "
                f"steady_0 with {_waiting_text(baseline['waiting'])}; expected {expected} "
                "(one digest-sum query on MODX per non-empty list, whatever its size)",
                mine == expected)
    elif name == "purchases":
        add("< 5 s", f"{result.seconds:.2f} s", result.seconds < 5)
    elif name in {"report_command", "report_page"}:
        add("< 1 s", f"{result.seconds:.3f} s", result.seconds < 1)
    elif name == "audit_full":
        add("< 60 s at Brevo's 10 requests/s", f"{result.seconds:.1f} s "
            f"({result.detail.get('contacts_read')} contacts, {result.detail.get('pages')} "
            "pages)", result.seconds < 60 and result.detail.get("status") == "success")
    elif name == "audit_idle":
        lists = len(result.detail.get("lists") or {}) or 1
        requests = result.detail.get("audit_requests") or 0
        # Issue 14: one request per list. All lists' sizes in one request, all their
        # changes in another: 2 in all, so 1 a list with two funnels, less with more.
        add("nothing changed: at most 1 request per list (all sizes in one request, all "
            "changes in one)",
            f"{requests / lists:.2f} requests per list ({requests} for {lists} lists), "
            f"{result.detail.get('states_changed')} states changed",
            requests <= lists and result.detail.get("kind") == "incremental"
            and not result.detail.get("states_changed"))
    elif name == "proof":
        counts = result.detail.get("counts") or {}
        add("completes (its cost is what is published)",
            f"{result.seconds:.1f} s, {result.detail.get('results_read')} results and "
            f"{result.detail.get('entries_read')} entries compared, differences "
            f"{ {k: v for k, v in counts.items() if v} or 0}",
            result.detail.get("status") == "success")
    add(f"peak memory < {MB_LIMIT} MB", f"{result.peak_rss_mb:.0f} MB",
        result.peak_rss_mb < MB_LIMIT)
    return targets


def recheck_queries_expected(
    *, baseline: int, before: dict[str, int], after: dict[str, int]
) -> int:
    """The query count of a 0-new run with the lists `after`, from one with `before`: the
    same, but for one query per non-empty list, whatever its size (MariaDB's count and
    digest sum of the listed rows, funnels/modx/digests.py; the list's own ids and digests
    are read with one query whether it is empty or not). Nothing else depends on the
    lists' size: a row MODX did not change is not read one by one and writes nothing."""
    return baseline + sum(
        bool(after.get(source, 0)) - bool(before.get(source, 0))
        for source in RECHECK_SOURCES
    )


def _waiting_text(waiting: dict[str, int]) -> str:
    return " + ".join(f"{waiting.get(source, 0):,} {source}" for source in RECHECK_SOURCES)


def bench_run(
    *, scale: Scale, server: Server, db_name: str, out_dir: Path, latency: float = 0.05,
    rps: float = 10, seed: int = 20261128, load_method: str = "auto",
    report_args: list[str] | None = None, report_path: str = "/admin/reports/",
    compare: Path | None = None, keep: bool = True, log=print,
) -> dict[str, Any]:
    db_default = scratch_name_check(db_name)
    db_modx = scratch_name_check(f"{db_name}_modx")
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    data = BenchData(scale=scale, now=now, seed=seed)
    setup: dict[str, Any] = {}
    results: dict[str, ScenarioResult] = {}
    errors: dict[str, str] = {}
    checks: dict[str, Any] = {}

    log(f"bench: scratch databases {db_default}, {db_modx} on {server.display()}")
    databases_reset(server=server, names=[db_default, db_modx])
    modx_schema_create(server=server, database=db_modx)
    started = time.perf_counter()
    modx_report = data.modx_load(server=server, database=db_modx, method=load_method)
    setup["modx"] = {**asdict(modx_report), "total_seconds": round(time.perf_counter() - started, 1)}
    log(f"bench: MODX data loaded in {setup['modx']['total_seconds']} s ({modx_report.method})")

    env = _env(server=server, db_default=db_default, db_modx=db_modx, fake=None, out_dir=out_dir)
    started = time.perf_counter()
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v0"], cwd=ROOT,
                   env=env, check=True)
    setup["migrate_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    entries_report = data.entries_load(server=server, database=db_default, method=load_method)
    setup["entries"] = {
        **asdict(entries_report), "total_seconds": round(time.perf_counter() - started, 1),
        "converted": data.entries_converted,
    }
    log(f"bench: {scale.entries:,} funnel entries loaded in {setup['entries']['total_seconds']} s")
    scenario_run(name="setup_watermarks", env=env, out_dir=out_dir,
                 params={"results": scale.history, "payments": scale.old_payments})
    # The loader wrote the entries, not the job: count them into the report's rollup, as
    # `rebuild_report_rollup` would after any such write. The runs keep it from here.
    rebuilt = scenario_run(name="rollup_setup", env=env, out_dir=out_dir,
                           params={"action": "rollup_rebuild"})
    setup["rollup"] = {**rebuilt.detail, "seconds": round(rebuilt.seconds, 1)}
    log(f"bench: report rollup built in {setup['rollup']['seconds']} s "
        f"({setup['rollup']['rows']:,} rows)")

    fake = FakeBrevoProcess(latency=latency, rps=rps, log_path=out_dir / "fake_brevo.log")
    fake.start()
    try:
        env = _env(server=server, db_default=db_default, db_modx=db_modx, fake=fake,
                   out_dir=out_dir)

        def cron(n: int) -> dt.datetime:
            return data.now + n * CRON_PERIOD

        def run(name: str, params: dict[str, Any] | None = None, *, brevo: bool = True,
                extra_env: dict[str, str] | None = None) -> None:
            log(f"bench: scenario {name} ...")
            try:
                results[name] = scenario_run(
                    name=name, env={**env, **(extra_env or {})}, params=params,
                    fake=fake if brevo else None, out_dir=out_dir,
                )
                r = results[name]
                log(f"bench:   {r.seconds:.3f} s (process {r.process_seconds:.1f} s), "
                    f"queries {r.queries}, Brevo {r.brevo_requests}, peak {r.peak_rss_mb} MB")
            except (ScenarioFailed, subprocess.TimeoutExpired) as exc:
                errors[name] = str(exc)
                log(f"bench:   FAILED: {exc}")

        # An approved backfill: the flood guard (FUNNELS_MAX_NEW_CONTACTS_PER_RUN) would hold
        # these contacts until somebody released them; what is measured here is the run
        # that sends them, so the guard is off for it (it is on, at its default, for every
        # other scenario).
        run("backfill", {"action": "run_funnels", "as_of": cron(1).isoformat()},
            extra_env={"FUNNELS_MAX_NEW_CONTACTS_PER_RUN": "0"})
        expected_contacts = sum(len(v) for v in data.expected_backfill.values())
        check = lists_check(state=fake.state(), expected=data.expected_backfill)
        check["expected_contacts"] = expected_contacts
        check["invalid_emails_in_backfill"] = data.backfill_invalid
        check["summary"] = (
            f"{sum(check[f]['in_list'] for f in (LANGUAGE, NON_LANGUAGE)):,} of "
            f"{expected_contacts:,} expected list memberships present"
        )
        checks["backfill"] = check

        # As cron would run it right after the backfill, while InnoDB still holds the
        # old versions of the rows the backfill changed ...
        run("steady_0_after_backfill", {"action": "run_funnels", "as_of": cron(2).isoformat()})
        # ... and as it normally runs, 15 minutes after the previous run: by then purge has
        # removed those versions (waited for here rather than slept).
        checks["purge_wait_seconds"] = innodb_purge_wait(server=server)
        run("steady_0", {"action": "run_funnels", "as_of": cron(3).isoformat(), "explain": True})

        inserted = data.new_results_load(
            server=server, database=db_modx, now=cron(4), method=load_method,
        )
        log(f"bench: inserted {inserted} new test results")
        run("steady_new", {"action": "run_funnels", "as_of": cron(4).isoformat()})
        check = lists_check(state=fake.state(), expected=data.expected_new)
        check["summary"] = (
            f"{sum(check[f]['in_list'] for f in (LANGUAGE, NON_LANGUAGE)):,} of "
            f"{sum(len(v) for v in data.expected_new.values()):,} expected list memberships "
            "present"
        )
        checks["steady_new"] = check

        # Rows that cannot be decided yet: the next run puts them on the recheck lists, and
        # the one after it (nothing new) re-reads them all.
        inserted_waiting = data.waiting_load(
            server=server, database=db_modx, now=cron(5), method=load_method,
        )
        checks["recheck"] = {"inserted": inserted_waiting}
        log(f"bench: inserted {inserted_waiting} rows that cannot be decided yet")
        run("recheck_fill", {"action": "run_funnels", "as_of": cron(5).isoformat()})
        run("recheck_idle", {"action": "run_funnels", "as_of": cron(6).isoformat(),
                             "explain": True})
        if "steady_0" in results:
            checks["recheck_baseline"] = {
                "queries": sum(results["steady_0"].queries.values()),
                "waiting": results["steady_0"].detail.get("recheck_waiting") or {},
            }

        inserted = data.new_payments_load(
            server=server, database=db_modx, now=cron(7), method=load_method,
        )
        checks["purchases"] = {"inserted": inserted,
                               "expected_new_conversions": data.expected_new_conversions}
        log(f"bench: inserted {inserted} new payments "
            f"({data.expected_new_conversions} should convert an entry)")
        run("purchases", {"action": "purchases", "as_of": cron(7).isoformat()}, brevo=False)
        run("purchases_push", {"action": "run_funnels", "as_of": cron(8).isoformat()})

        # What Brevo really holds, read back: every list whole, then the next day's audit
        # with nothing changed; then the proof that nobody is lost, which follows it.
        run("audit_full", {"action": "audit_brevo", "full": True,
                           "as_of": cron(9).isoformat(), "history_missing": scale.entries})
        run("audit_idle", {"action": "audit_brevo", "as_of": (cron(9) + dt.timedelta(days=1))
                           .isoformat()})
        run("proof", {"action": "nobody_lost",
                      "as_of": (cron(9) + dt.timedelta(days=1)).isoformat()}, brevo=False)
        checks["control_group"] = data.control_group_load(server=server, database=db_default)
        log(f"bench: control group set: {checks['control_group']}")
        # The control group was written into the entries directly, too.
        run("rollup_rebuild", {"action": "rollup_rebuild"}, brevo=False)

        year_to = dt.datetime.now(dt.timezone.utc).date()
        year_from = year_to - dt.timedelta(days=365)
        args = report_args if report_args is not None else [
            "--from-date", year_from.isoformat(), "--to-date", year_to.isoformat(),
        ]
        run("report_command", {"action": "report_command", "args": args, "profile": True},
            brevo=False)
        run("report_page", {
            "action": "report_page", "path": report_path, "profile": True,
            "query": {"from_date": year_from.isoformat(), "to_date": year_to.isoformat()},
        }, brevo=False)
        run("report_command_raw", {"action": "report_command", "args": args,
                                   "rollup": False}, brevo=False)
        run("report_page_raw", {
            "action": "report_page", "path": report_path, "rollup": False,
            "query": {"from_date": year_from.isoformat(), "to_date": year_to.isoformat()},
        }, brevo=False)
    finally:
        fake.stop()

    if compare is not None and "steady_0" in results:
        other = json.loads(Path(compare).read_text(encoding="utf-8"))
        other_steady = other["scenarios"].get("steady_0")
        if other_steady:
            checks["compare_queries"] = {
                "queries": sum(other_steady["queries"].values()),
                "label": f"results={other['scale']['results']:,}, "
                         f"entries={other['scale']['entries']:,}",
                # What that run re-read: equal counts mean something only for the same work.
                "payments_read": other_steady.get("detail", {}).get("payments_read"),
            }
    if not keep:
        databases_drop(server=server, names=[db_default, db_modx])

    scenarios: dict[str, Any] = {}
    for name in TITLES:
        result = results.get(name)
        scenarios[name] = {
            "title": TITLES[name].format(**asdict(scale), waiting=scale.waiting),
            **(asdict(result) if result else {"error": errors.get(name, "not run")}),
            "targets": _target(result, name, scale, checks),
        }
    return {
        "when": now.isoformat(timespec="seconds"),
        "scale": asdict(scale),
        "fake_brevo": {"latency_s": latency, "requests_per_second": rps},
        "machine": machine_info(server=server),
        "setup": setup,
        "checks": checks,
        "scenarios": scenarios,
        "all_met": not errors and all(
            t["met"] for s in scenarios.values() for t in s.get("targets", [])
        ),
        "errors": errors,
    }


# --------------------------------------------------------------------------- Markdown


def _fmt_queries(queries: dict[str, int]) -> str:
    return " / ".join(f"{queries.get(alias, 0)}" for alias in ("default", "modx"))


def _plan_section(number: int, plan: dict) -> list[str]:
    """One explained query: its SQL and its plan's steps, full scans flagged."""
    flag = f" — **full scan: {', '.join(plan['full_scans'])}**" if plan["full_scans"] else ""
    return [
        f"{number}. `{plan['alias']}`, ×{plan['count']}{flag}",
        "",
        "```sql",
        plan["sql"][:1500],
        "```",
        "",
        "| table | type | key | rows | Extra |",
        "|---|---|---|---|---|",
        *_plan_rows(plan["plan"]),
        "",
    ]


def _plan_rows(plan: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in plan:
        lines.append(
            f"| {row.get('table')} | {row.get('type')} | {row.get('key') or '—'} | "
            f"{row.get('rows')} | {(row.get('Extra') or '').replace('|', '/')} |"
        )
    return lines


def markdown(report: dict[str, Any], *, command: str) -> str:
    m = report["machine"]
    lines = [
        BEGIN,
        "",
        f"Run {report['when']} (commit {m.get('commit', '?')}), produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {m.get('nproc')} CPU ({m.get('cpu', '?')}), {m.get('memory_gib', '?')} GiB "
        f"RAM; MariaDB {m.get('mariadb')} (innodb_buffer_pool_size "
        f"{m.get('innodb_buffer_pool_mib')} MiB, in-memory temporary tables up to "
        f"{m.get('tmp_table_mib', '?')} MiB); Python {m.get('python')}, "
        f"Django {m.get('django', '?')}. Fake Brevo: {report['fake_brevo']['latency_s'] * 1000:.0f}"
        f" ms latency per call, {report['fake_brevo']['requests_per_second']:g} requests/s on "
        "contacts endpoints, 100/h on /processes.",
        "",
        "Scale: " + ", ".join(f"{k} {v:,}" for k, v in report["scale"].items()) + ".",
        "",
        "The runs of the job are 15 minutes apart on the job's own clock (`--as-of`), the "
        "first one 15 minutes after the data's `now` (where the last run before the "
        "benchmark left its watch list); the reports use the real date.",
        "",
        "| Scenario | Time | Process | Queries (ours / MODX) | Brevo requests | Peak RSS | "
        "Target | Met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["scenarios"].items():
        if "error" in s:
            lines.append(f"| {s['title']} | — | — | — | — | — | could not run | **no** |")
            continue
        targets = "; ".join(f"{t['target']}: {t['measured']}" for t in s["targets"])
        met = "yes" if all(t["met"] for t in s["targets"]) else "**no**"
        brevo = "—" if s["brevo_requests"] is None else f"{s['brevo_requests']:,}"
        lines.append(
            f"| {s['title']} | {s['seconds']:.3f} s | {s['process_seconds']:.1f} s | "
            f"{_fmt_queries(s['queries'])} | {brevo} | {s['peak_rss_mb']:.0f} MB | {targets} | "
            f"{met} |"
        )
    lines += [
        "",
        "*Time* is the action alone (the command, the service call or the page request) "
        "inside a fresh process; *Process* adds interpreter start, Django set-up and the "
        "scenario's preparation. Queries are counted on both database aliases through "
        "Django's execute wrappers; Brevo requests are counted by the fake. Peak RSS is the "
        "scenario process's VmHWM."
        + (" The report scenarios' *Process* also holds the profiling re-run of their "
           "slowest query (see below)."
           if any(s.get("profile") for s in report["scenarios"].values()) else ""),
        "",
    ]
    if report["errors"]:
        lines += ["## Scenarios that could not run", ""]
        for name, error in report["errors"].items():
            lines += [f"- `{name}`:", "", "```", error.strip()[-1500:], "```", ""]
    lines += ["## Details", ""]
    setup = report["setup"]
    if setup:
        lines.append(
            f"- Data set-up: MODX tables {setup['modx']['total_seconds']} s "
            f"({setup['modx']['method']}: " + ", ".join(
                f"{t} {n:,} rows" for t, n in setup["modx"]["rows"].items()
            ) + f"); migrate {setup['migrate_seconds']} s; funnel_entries "
            f"{setup['entries']['total_seconds']} s ({setup['entries']['rows']['funnel_entries']:,}"
            f" rows, {setup['entries']['converted']:,} already converted; "
            f"{setup['entries']['rows'].get('funnels_paymentwatch', 0):,} watched payments)."
        )
    for name, s in report["scenarios"].items():
        if "error" in s:
            continue
        detail = s.get("detail") or {}
        keys = ("status", "results_read", "entries_added", "skipped", "contacts_sent",
                "contacts_failed", "payments_read", "payments_rechecked", "purchases_found",
                "purchases_revoked", "purchases_updated", "brevo_requests_client", "bytes",
                "entered", "converted", "output_chars", "recheck_waiting")
        facts = ", ".join(f"{k} {detail[k]}" for k in keys if k in detail)
        ops = ", ".join(f"{k} ×{v}" for k, v in s.get("brevo_operations", {}).items())
        lines.append(f"- `{name}`: {facts or '—'}" + (f"; Brevo: {ops}" if ops else "") + ".")
    for name in ("backfill", "steady_new"):
        check = report["checks"].get(name)
        if check:
            lines.append(
                f"- `{name}` check: {check['summary']}; "
                + ", ".join(
                    f"{f} {check[f]['in_list']:,}/{check[f]['expected']:,}"
                    for f in (LANGUAGE, NON_LANGUAGE)
                )
                + (f"; {check['invalid_emails_in_backfill']} results with invalid emails "
                   "correctly not sent" if "invalid_emails_in_backfill" in check else "")
                + f"; the fake holds {check['contacts_total']:,} contacts."
            )
    if "purge_wait_seconds" in report["checks"]:
        lines.append(
            f"- Between `steady_0_after_backfill` and `steady_0` the benchmark waited "
            f"{report['checks']['purge_wait_seconds']} s for InnoDB purge to catch up (what "
            "the 15 minutes between two cron runs give a real server)."
        )
    purchases = report["checks"].get("purchases")
    if purchases:
        lines.append(
            f"- `purchases` data: {purchases['inserted']:,} new payments inserted, of which "
            f"{purchases['expected_new_conversions']:,} convert an entry not converted before."
        )
    lines.append("")
    steady = report["scenarios"].get("steady_0", {})
    if steady.get("explain"):
        lines += [
            "## EXPLAIN of every query of the 0-new-rows run (MariaDB)",
            "",
            "Each distinct SELECT / UPDATE / DELETE the run issued, explained after the run "
            "with the parameters it used (variable-length `IN` lists collapsed to `%s, ...`). "
            "A plan step is flagged as a full scan when its access type is ALL or index over "
            "1,000 rows or more.",
            "",
        ]
        for i, plan in enumerate(steady["explain"], 1):
            lines += _plan_section(i, plan)
    idle = report["scenarios"].get("recheck_idle", {})
    if idle.get("explain"):
        seen = {(plan["alias"], plan["sql"]) for plan in steady.get("explain", [])}
        extra = [plan for plan in idle["explain"] if (plan["alias"], plan["sql"]) not in seen]
        lines += [
            "## EXPLAIN of the recheck lists' queries (the idle run with rows waiting)",
            "",
            "The queries of `recheck_idle` that the 0-new run above did not issue "
            "(same rules).",
            "",
        ]
        for i, plan in enumerate(extra, 1):
            lines += _plan_section(i, plan)
    profiled = [(name, s) for name, s in report["scenarios"].items() if s.get("profile")]
    if profiled:
        lines += [
            "## Profile of the slowest query (MariaDB ANALYZE FORMAT=JSON)",
            "",
            "Run once more after the measurement: rows each step produced, milliseconds in "
            "the storage engine (*engine*) and above it (*other*: grouping, expressions, "
            "temporary tables), and index or data pages the step had to read because they "
            "were not in the buffer pool.",
            "",
        ]
        for name, s in profiled:
            profile = s["profile"]
            lines += [
                f"- `{name}`: {profile['seconds_in_action']} s in the action, "
                f"{profile['analyze_total_ms']} ms under ANALYZE.",
                "",
                "| table | type | key | rows | engine ms | other ms | pages read (ms) |",
                "|---|---|---|---|---|---|---|",
                *(
                    f"| {p['table']} | {p['type']} | {p['key'] or '—'} | {p['rows']} | "
                    f"{p['table_ms']} | {p['other_ms']} | {p['pages_read']} "
                    f"({p['pages_read_ms']}) |"
                    for p in profile["steps"]
                ),
                "",
            ]
        name, s = profiled[0]
        lines += ["```sql", " ".join(s["profile"]["sql"].split())[:3000], "```", ""]
    lines += ["## Slowest query shapes per scenario", ""]
    for name, s in report["scenarios"].items():
        for q in (s.get("top_queries") or [])[:3]:
            sql = " ".join(q["sql"].split())[:220].replace("|", "/")
            lines.append(f"- `{name}` {q['alias']} ×{q['count']} {q['seconds']} s: `{sql}`")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def docs_write(path: Path, block: str, *, title: str = "# Benchmarks") -> None:
    """Replace the generated block of `path`, keeping what was written around it."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if BEGIN in text and END in text:
            head = text.split(BEGIN, 1)[0]
            tail = text.split(END, 1)[1]
            path.write_text(head + block.rstrip("\n") + tail, encoding="utf-8")
            return
        path.write_text(text.rstrip("\n") + "\n\n" + block, encoding="utf-8")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}\n\n{block}", encoding="utf-8")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the funnel job, purchase sync and reports on MariaDB against "
                    "the fake Brevo. Drops and re-creates the scratch databases.",
    )
    parser.add_argument("--scale", type=int, default=None,
                        help="rows in simpletest_users (default 1,000,000)")
    parser.add_argument("--payments", type=int, default=None,
                        help="rows in modx_cert_payment (default 200,000)")
    parser.add_argument("--backfill", type=int, default=None,
                        help="results after the watermark for the backfill (default 100,000)")
    parser.add_argument("--entries", type=int, default=None,
                        help="pre-filled funnel_entries (default 1,000,000)")
    parser.add_argument("--new-results", type=int, default=None,
                        help="results inserted for the steady-state run (default 1,000)")
    parser.add_argument("--new-payments", type=int, default=None,
                        help="payments inserted for the purchase sync (default 5,000)")
    parser.add_argument("--waiting-results", type=int, default=None,
                        help="results that cannot be decided yet, for the recheck scenarios "
                             "(default 8,000)")
    parser.add_argument("--waiting-payments", type=int, default=None,
                        help="payments that cannot be decided yet (default 2,000)")
    parser.add_argument("--tiny", action="store_true",
                        help="the CI size: 2,000 results, 500 payments, 2,000 entries")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--server-url",
                        default=os.environ.get("BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306"),
                        help="MariaDB server (no database); env BENCH_MARIADB_URL")
    parser.add_argument("--db-name", default="bench_tf",
                        help="scratch database name; <name>_modx is the MODX one")
    parser.add_argument("--latency", type=float, default=0.05, help="fake Brevo latency, s")
    parser.add_argument("--rps", type=float, default=10, help="fake Brevo requests/s")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--load-method", choices=["auto", "infile", "insert"], default="auto")
    parser.add_argument("--docs", type=Path, default=None,
                        help="also write the Markdown into this file (e.g. docs/benchmarks.md)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="results.json of a run at another scale: compares the 0-new "
                             "run's query count")
    parser.add_argument("--drop", action="store_true",
                        help="drop the scratch databases at the end")
    args = parser.parse_args(argv)

    base = TINY if args.tiny else Scale()
    overrides = {
        "results": args.scale, "payments": args.payments, "backfill": args.backfill,
        "entries": args.entries, "new_results": args.new_results,
        "new_payments": args.new_payments, "waiting_results": args.waiting_results,
        "waiting_payments": args.waiting_payments,
    }
    scale = Scale(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})
    server = Server.from_url(args.server_url)
    report = bench_run(
        scale=scale, server=server, db_name=args.db_name, out_dir=args.out,
        latency=args.latency, rps=args.rps, seed=args.seed, load_method=args.load_method,
        compare=args.compare, keep=not args.drop,
    )
    shown = ["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]
    command = shlex.join(shown).replace(args.server_url, server.url("").rsplit("/", 1)[0]
                                        if not server.password else "mysql://***")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(report, indent=1, default=str), encoding="utf-8"
    )
    text = markdown(report, command=command)
    docs_write(args.out / "benchmarks.md", text)
    if args.docs:
        docs_write(args.docs, text)
    print(f"bench: results in {args.out / 'results.json'} and {args.out / 'benchmarks.md'}")
    for name, s in report["scenarios"].items():
        met = "error" not in s and all(t["met"] for t in s["targets"])
        print(f"bench: {name}: {'met' if met else 'NOT MET'}"
              + (f" ({s['error'].splitlines()[0]})" if "error" in s else ""))
    if report["errors"]:
        return 2
    return 0 if report["all_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
