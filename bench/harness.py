"""Measure one benchmark scenario in its own process, and manage the fake Brevo process.

The parent (bench.run) never imports Django settings: each scenario runs as

    python -m bench.harness --scenario NAME --params JSON --out FILE

in a subprocess whose environment points DATABASE_URL / MODX_DATABASE_URL at the scratch
databases and BREVO_BASE_URL at the fake. The worker counts every query on both aliases
(an execute wrapper installed on each connection as it is created, so connections opened
later or in other threads are counted too), times the action alone, reads its own peak
RSS (VmHWM) at the end, and for `explain` scenarios runs EXPLAIN on each distinct query
after the action (not counted). Brevo requests are counted by the parent from the fake's
control endpoint, before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- the parent


@dataclass
class ScenarioResult:
    name: str
    seconds: float  # the action alone, measured inside the worker
    process_seconds: float  # the whole subprocess: interpreter, Django set-up, action
    queries: dict[str, int]
    query_seconds: dict[str, float]
    peak_rss_mb: float
    brevo_requests: int | None = None
    brevo_operations: dict[str, int] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    explain: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    top_queries: list[dict[str, Any]] = field(default_factory=list)


class ScenarioFailed(RuntimeError):
    pass


class FakeBrevoProcess:
    """`python -m fake_brevo.server` as a subprocess on a free loopback port."""

    def __init__(
        self, *, latency: float = 0.05, rps: float = 10, import_delay: float = 0.0,
        log_path: Path | None = None, python: str = sys.executable,
    ) -> None:
        self.api_key = "bench-" + secrets.token_hex(12)
        self.latency = latency
        self.rps = rps
        self.import_delay = import_delay
        self.log_path = log_path
        self.python = python
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self, *, timeout: float = 15.0) -> FakeBrevoProcess:
        command = [
            self.python, "-m", "fake_brevo.server", "--port", "0",
            "--api-key", self.api_key, "--latency", str(self.latency), "--rps", str(self.rps),
            "--import-delay", str(self.import_delay),
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        found: list[str] = []

        def read_first_line() -> None:
            assert self.process is not None and self.process.stdout is not None
            found.append(self.process.stdout.readline())

        reader = threading.Thread(target=read_first_line, daemon=True)
        reader.start()
        reader.join(timeout)
        line = found[0] if found else ""
        match = re.search(r"(http://127\.0\.0\.1:\d+/v3)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the fake Brevo did not start: {line.strip()!r}")
        self.base_url = match.group(1)
        # Keep draining its output so a chatty fake can never block on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        sink = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for line in self.process.stdout:
                if sink:
                    sink.write(line)
        finally:
            if sink:
                sink.close()

    @property
    def control_url(self) -> str:
        return self.base_url[: -len("/v3")] + "/__fake__"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.control_url + path, timeout=120) as response:
            return json.loads(response.read())

    def state(self) -> dict[str, Any]:
        return self._get("/state")

    def request_count(self) -> int:
        return int(self.state()["request_count"])

    def operations_since(self, seq: int) -> dict[str, int]:
        """Requests after `seq` by operation and status ("importContacts 202": 20)."""
        counts: dict[str, int] = {}
        for entry in self._get(f"/requests?since={seq}")["requests"]:
            key = f"{entry.get('operation') or entry['path']} {entry.get('status')}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> FakeBrevoProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def scenario_run(
    *, name: str, env: Mapping[str, str], params: Mapping[str, Any] | None = None,
    fake: FakeBrevoProcess | None = None, out_dir: Path, python: str = sys.executable,
    timeout: float = 1800,
) -> ScenarioResult:
    """Run one scenario in a fresh worker process and collect its figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"scenario_{name}.json"
    if out_file.exists():
        out_file.unlink()
    before = fake.request_count() if fake else None
    started = time.perf_counter()
    completed = subprocess.run(
        [python, "-m", "bench.harness", "--scenario", name,
         "--params", json.dumps(dict(params or {})), "--out", str(out_file)],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout,
    )
    process_seconds = time.perf_counter() - started
    (out_dir / f"scenario_{name}.log").write_text(
        completed.stdout + "\n--- stderr ---\n" + completed.stderr, encoding="utf-8"
    )
    if completed.returncode != 0 or not out_file.exists():
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-15:]
        raise ScenarioFailed(
            f"scenario {name} failed (exit {completed.returncode}):\n" + "\n".join(tail)
        )
    data = json.loads(out_file.read_text(encoding="utf-8"))
    result = ScenarioResult(
        name=name,
        seconds=data["seconds"],
        process_seconds=round(process_seconds, 3),
        queries=data["queries"],
        query_seconds=data["query_seconds"],
        peak_rss_mb=data["peak_rss_mb"],
        detail=data.get("detail", {}),
        explain=data.get("explain", []),
        profile=data.get("profile"),
        top_queries=data.get("top_queries", []),
    )
    if fake is not None and before is not None:
        result.brevo_requests = fake.request_count() - before
        result.brevo_operations = fake.operations_since(before)
    return result


# --------------------------------------------------------------------------- the worker

_IN_LIST = re.compile(r"%s(?:\s*,\s*%s)+")
_VALUES_LIST = re.compile(r"\((?:%s, )*%s\)(?:, \((?:%s, )*%s\))+")
_EXPLAINABLE = ("SELECT", "UPDATE", "DELETE")


def sql_shape(sql: str) -> str:
    """The query with its variable-length lists collapsed, so repeats group together."""
    shape = _VALUES_LIST.sub("(...), ...", sql)
    return _IN_LIST.sub("%s, ...", shape)


class QueryRecorder:
    """Counts queries per alias through Django's execute wrappers."""

    def __init__(self, *, keep_params: bool) -> None:
        self.keep_params = keep_params
        self.active = True
        self.counts: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.shapes: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        if not self.active:
            return execute(sql, params, many, context)
        alias = context["connection"].alias
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            shape = sql_shape(sql)
            with self._lock:
                self.counts[alias] = self.counts.get(alias, 0) + 1
                self.seconds[alias] = self.seconds.get(alias, 0.0) + elapsed
                entry = self.shapes.get((alias, shape))
                if entry is None:
                    entry = self.shapes[(alias, shape)] = {
                        "alias": alias, "sql": shape, "count": 0, "seconds": 0.0,
                        "example": None,
                    }
                    if self.keep_params and not many:
                        entry["example"] = (sql, list(params) if params is not None else None)
                entry["count"] += 1
                entry["seconds"] += elapsed

    def install(self) -> None:
        from django.db import connections
        from django.db.backends.signals import connection_created

        def attach(sender, connection, **kwargs):
            if self not in connection.execute_wrappers:
                connection.execute_wrappers.append(self)

        connection_created.connect(attach, weak=False)
        for alias in connections:
            connection = connections[alias]
            if self not in connection.execute_wrappers:
                connection.execute_wrappers.append(self)

    def top(self, limit: int = 8) -> list[dict[str, Any]]:
        rows = sorted(self.shapes.values(), key=lambda e: e["seconds"], reverse=True)[:limit]
        return [
            {"alias": e["alias"], "count": e["count"], "seconds": round(e["seconds"], 3),
             "sql": e["sql"][:400]}
            for e in rows
        ]


def _is_scan(row: Mapping[str, Any]) -> bool:
    """A plan step that reads much of a table: a full table or index scan over 1,000 rows,
    or any access the optimizer expects to examine 10,000 rows or more (a "range" over most
    of the primary key is a full scan in all but name)."""
    if str(row.get("table") or "").startswith("<"):
        # <subqueryN>, <derivedN>, <unionN,M>: MariaDB's own temporary tables (a long IN
        # list becomes one), not a table of ours.
        return False
    rows = int(row.get("rows") or 0)
    kind = str(row.get("type")).upper()
    return (kind in {"ALL", "INDEX"} and rows >= 1000) or rows >= 10_000


def explain_all(recorder: QueryRecorder) -> list[dict[str, Any]]:
    """EXPLAIN each distinct SELECT/UPDATE/DELETE the action ran, on the alias it ran on."""
    from django.db import connections

    recorder.active = False
    plans = []
    for entry in recorder.shapes.values():
        if entry["example"] is None:
            continue
        sql, params = entry["example"]
        verb = sql.lstrip(" \n(").split(None, 1)[0].upper()
        if verb not in _EXPLAINABLE:
            continue
        with connections[entry["alias"]].cursor() as cursor:
            cursor.execute("EXPLAIN " + sql, params)
            names = [c[0] for c in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        full_scans = [row.get("table") for row in rows if _is_scan(row)]
        plans.append({
            "alias": entry["alias"], "count": entry["count"], "sql": entry["sql"],
            "plan": rows, "full_scans": full_scans,
        })
    return plans


def _profile_steps(node: Any, steps: list[dict[str, Any]]) -> None:
    """The table accesses of an ANALYZE FORMAT=JSON tree, outermost first."""
    if isinstance(node, dict):
        table = node.get("table")
        if isinstance(table, dict) and "table_name" in table:
            stats = table.get("r_engine_stats") or {}
            steps.append({
                "table": table.get("table_name"), "type": table.get("access_type"),
                "key": table.get("key"), "rows": table.get("r_rows"),
                "table_ms": round(float(table.get("r_table_time_ms") or 0), 1),
                "other_ms": round(float(table.get("r_other_time_ms") or 0), 1),
                "pages_read": stats.get("pages_read_count", 0),
                "pages_read_ms": round(float(stats.get("pages_read_time_ms") or 0), 1),
            })
        for key, value in node.items():
            if key == "table" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "table_name"}
            _profile_steps(value, steps)
    elif isinstance(node, list):
        for value in node:
            _profile_steps(value, steps)


def profile_slowest(recorder: QueryRecorder) -> dict[str, Any] | None:
    """Run the action's slowest SELECT again under MariaDB's ANALYZE FORMAT=JSON: where its
    time goes (rows per step, time in the engine and above it, pages read from disk)."""
    from django.db import connections

    recorder.active = False
    candidates = sorted(
        (e for e in recorder.shapes.values() if e["example"] is not None
         and e["example"][0].lstrip(" \n(").split(None, 1)[0].upper() == "SELECT"),
        key=lambda e: e["seconds"], reverse=True,
    )
    if not candidates:
        return None
    entry = candidates[0]
    connection = connections[entry["alias"]]
    if connection.vendor != "mysql":
        return None
    sql, params = entry["example"]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE FORMAT=JSON " + sql, params)
        tree = json.loads(cursor.fetchone()[0])
    steps: list[dict[str, Any]] = []
    _profile_steps(tree, steps)
    return {
        "alias": entry["alias"], "sql": entry["sql"][:3000],
        "seconds_in_action": round(entry["seconds"], 3),
        "analyze_total_ms": round(float(tree["query_block"].get("r_total_time_ms") or 0), 1),
        "steps": steps,
    }


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _latest_run_detail() -> dict[str, Any]:
    from django.db.models import Count

    from funnels.models import RecheckRow, SyncRun

    run = SyncRun.objects.order_by("-id").first()
    if run is None:
        return {}
    # After the run, outside the measurement: what its recheck lists hold now.
    waiting = dict(
        RecheckRow.objects.order_by().values_list("source").annotate(n=Count("id"))
    )
    return {
        "waiting_by_reason": run.waiting_by_reason, "recheck_waiting": waiting,
        "run_id": run.pk, "status": run.status, "results_read": run.results_read,
        "entries_added": run.entries_added, "skipped": run.skipped,
        "skipped_by_reason": run.skipped_by_reason, "contacts_sent": run.contacts_sent,
        "contacts_failed": run.contacts_failed, "payments_read": run.payments_read,
        "purchases_found": run.purchases_found, "purchases_revoked": run.purchases_revoked,
        "brevo_requests_client": run.brevo_requests, "error": run.error,
        "as_of": run.as_of.isoformat() if run.as_of else None,
    }


def _as_of(params: Mapping[str, Any]):
    """The scenario's as-of time (`params["as_of"]`, ISO 8601 with an offset), else now."""
    import datetime as dt

    from django.utils import timezone

    value = params.get("as_of")
    if not value:
        return timezone.now()
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("as_of must carry its UTC offset")
    return moment


def _action_run_funnels(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    from django.core.management import call_command, load_command_class

    # Importing the command's modules (requests, urllib3, the services: 40-60 ms) is the
    # process's start-up, like django.setup(), not the run: a cron process pays it once
    # whatever the run does. Until 2026-12-02 it was inside the measured time.
    load_command_class("funnels", "run_funnels")

    args = ["--live"]
    if params.get("as_of"):
        args += ["--as-of", _as_of(params).isoformat()]

    def action() -> dict[str, Any]:
        out = io.StringIO()
        call_command("run_funnels", *args, stdout=out, stderr=out)
        return {"output": out.getvalue().strip()[-2000:]}

    return action


def _action_purchases(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    """The purchase pass alone (services.purchases), inside a run record of its own."""
    from django.utils import timezone

    from funnels.models import SyncRun
    from funnels.services.purchases import purchases_sync
    from funnels.services.runtime import runtime_settings_get

    runtime_settings_get()
    as_of = _as_of(params)
    run = SyncRun.objects.create(
        started_at=timezone.now(), status=SyncRun.Status.RUNNING, dry_run=False,
        trigger=SyncRun.Trigger.MANUAL, hostname="bench", as_of=as_of,
    )

    def action() -> dict[str, Any]:
        from django.conf import settings

        result = purchases_sync(
            run=run, now=as_of,
            chunk_size=settings.FUNNELS_CHUNK_SIZE,
        )
        # Closed so that the next run_funnels does not take it for a crashed run.
        SyncRun.objects.filter(pk=run.pk).update(
            status=SyncRun.Status.SUCCESS, finished_at=timezone.now(),
            payments_read=result.payments_read, purchases_found=result.purchases_found,
            purchases_revoked=result.purchases_revoked,
        )
        return {
            "payments_read": result.payments_read, "purchases_found": result.purchases_found,
            "purchases_revoked": result.purchases_revoked,
            "payments_rechecked": result.payments_rechecked,
            "purchases_updated": result.purchases_updated,
            "skipped_by_reason": result.skipped_by_reason,
        }

    return action


def _without_rollup(params: Mapping[str, Any]) -> None:
    """`"rollup": False`: the report as without the runs' rollup (reports/rollup.py), for
    the same run's comparison; this worker process only, nothing in the database."""
    if params.get("rollup", True) is False:
        import reports.selectors

        reports.selectors.rollup_view = lambda **_kwargs: None


def _action_report_command(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    from django.core.management import call_command

    _without_rollup(params)

    def action() -> dict[str, Any]:
        out = io.StringIO()
        call_command("report_conversions", *params.get("args", []), stdout=out, stderr=out)
        text = out.getvalue()
        # The head holds the period and the totals; the lift, when there is one, follows.
        return {"output": text.strip()[:3000], "output_chars": len(text)}

    return action


def _action_report_page(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    _without_rollup(params)
    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)

    def action() -> dict[str, Any]:
        response = client.get(params["path"], params.get("query", {}))
        if response.status_code != 200:
            raise RuntimeError(f"GET {params['path']} answered {response.status_code}")
        body = response.content.decode("utf-8", "replace")
        # A page with form errors is fast and answers 200 too: it must show the report.
        totals = dict(re.findall(r'<dd data-field="(entered|converted)">(\d+)</dd>', body))
        if set(totals) != {"entered", "converted"}:
            raise RuntimeError(f"GET {params['path']} answered 200 without a report")
        return {"status": response.status_code, "bytes": len(response.content),
                "entered": int(totals["entered"]), "converted": int(totals["converted"]),
                "title": (re.search(r"<title>(.*?)</title>", body, re.S) or [None, ""])[1]
                .strip()}

    return action


def _action_setup_watermarks(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    """Watermarks where a site that has run the job for years stands, under the keys the
    services themselves use."""
    from funnels.models import SyncState
    from funnels.codes import Source
    from funnels.services.runtime import runtime_settings_get

    def action() -> dict[str, Any]:
        runtime_settings_get()
        marks = {Source.RESULTS: params["results"], Source.PAYMENTS: params["payments"]}
        for key, last_id in marks.items():
            # No gaps: the generated ids have no holes below the watermarks.
            SyncState.objects.update_or_create(
                key=key, defaults={"last_id": last_id, "gaps": {}}
            )
        return {"watermarks": marks}

    return action


def _action_audit_brevo(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    """One Brevo audit (services.brevo_audit), full or as scheduled, without the proof.

    `history_missing`: the pre-filled entries (ids up to it) were never sent to this fake
    Brevo; they are recorded as found missing by an earlier audit (not measured), so the
    full read measures reading Brevo's lists, not concluding a million absences."""
    from funnels.models import BrevoState, FunnelEntry
    from funnels.services.brevo_audit import brevo_audit_run

    if params.get("history_missing"):
        FunnelEntry.objects.filter(id__lte=int(params["history_missing"])).update(
            brevo_state=BrevoState.MISSING
        )
    now = _as_of(params)

    def action() -> dict[str, Any]:
        audit = brevo_audit_run(now=now, full=True if params.get("full") else None,
                                trigger="manual")
        return {
            "status": audit.status, "kind": audit.kind, "contacts_read": audit.contacts_read,
            "pages": audit.pages, "audit_requests": audit.brevo_requests,
            "states_changed": audit.states_changed, "strangers": audit.strangers,
            "lists": audit.lists, "error": audit.error[:500],
        }

    return action


def _action_nobody_lost(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    """The daily proof that nobody is lost (services.nobody_lost) over its whole window."""
    from funnels.services.nobody_lost import nobody_lost_check

    now = _as_of(params)

    def action() -> dict[str, Any]:
        proof = nobody_lost_check(now=now)
        return {"status": proof.status, "results_read": proof.results_read,
                "entries_read": proof.entries_read, "counts": proof.counts,
                "error": proof.error[:500]}

    return action


def _action_rollup_rebuild(params: Mapping[str, Any]) -> Callable[[], dict[str, Any]]:
    """rebuild_report_rollup: after entries were written by the loader, not by the job."""
    from funnels.services.report_rollup import report_rollup_refresh

    def action() -> dict[str, Any]:
        result = report_rollup_refresh(rebuild=True)
        return {"rows": result.rows}

    return action


ACTIONS: dict[str, Callable[[Mapping[str, Any]], Callable[[], dict[str, Any]]]] = {
    "audit_brevo": _action_audit_brevo,
    "nobody_lost": _action_nobody_lost,
    "run_funnels": _action_run_funnels,
    "purchases": _action_purchases,
    "report_command": _action_report_command,
    "report_page": _action_report_page,
    "rollup_rebuild": _action_rollup_rebuild,
    "setup_watermarks": _action_setup_watermarks,
}


def worker(*, scenario: str, params: Mapping[str, Any], out: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testizer_funnels.settings")
    import django

    django.setup()
    kind = params.get("action", scenario)
    if kind not in ACTIONS:
        raise SystemExit(f"unknown scenario action {kind!r}; known: {sorted(ACTIONS)}")
    # Preparation (a login, a run row) is not part of what is measured.
    action = ACTIONS[kind](params)
    recorder = QueryRecorder(keep_params=bool(params.get("explain") or params.get("profile")))
    recorder.install()
    started = time.perf_counter()
    detail = action()
    seconds = time.perf_counter() - started
    recorder.active = False
    if kind == "run_funnels":
        detail.update(_latest_run_detail())
    explain = explain_all(recorder) if params.get("explain") else []
    # After the measurement, and not counted: it runs the query once more.
    profile = profile_slowest(recorder) if params.get("profile") else None
    payload = {
        "scenario": scenario,
        "seconds": round(seconds, 3),
        "queries": dict(sorted(recorder.counts.items())),
        "query_seconds": {k: round(v, 3) for k, v in sorted(recorder.seconds.items())},
        "peak_rss_mb": peak_rss_mb(),
        "detail": detail,
        "explain": explain,
        "profile": profile,
        "top_queries": recorder.top(),
    }
    out.write_text(json.dumps(payload, default=str, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.harness")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    worker(scenario=args.scenario, params=json.loads(args.params), out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
