"""The job against the real world's failures: killed processes, killed database connections,
runs started together, and Brevo misbehaving in every way we know of. Each scenario ends
with a normal run and the same invariant check (proof_support.assert_invariant): every
eligible person is in the right Brevo list once, funnel_entries has no duplicate, every
buyer after entry is marked.

MariaDB only: the run lock, KILL and the processlist are MariaDB's, and these run in the
MariaDB pass of CI. What was tried and what happened is written up in docs/proof.md.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import subprocess
import time

import pytest

from django.db import connections

from funnels.brevo.client import BrevoClient
from funnels.brevo.factory import brevo_client_build
from funnels.models import FunnelEntry, SyncRun, SyncStatus
from funnels.modx import models as modx
from funnels.services.runs import run_funnels
from funnels.tests.proof_support import (
    AS_OF,
    AS_OF_ARG,
    SINCE_ARG,
    World,
    assert_invariant,
    assert_synced_means_in_brevo,
    connection_kill,
    connections_since,
    expected_state,
    newest_connection_id,
    run_lock_holder,
)
from funnels.tests.manage_subprocess import mariadb_connect
from funnels.tests.sync_support import (
    API_KEY,
    LANG_TEST,
    SINCE,
    SleepRecorder,
    default_rows_restore,
    funnels_configure,
    manage_popen,
    manage_run,
    modx_catalogue,
    modx_result,
    modx_rows_delete,
    subprocess_env,
)

pytestmark = [pytest.mark.mariadb_only, pytest.mark.django_db(databases=["default", "modx"])]

transactional = pytest.mark.django_db(databases=["default", "modx"], transaction=True)

LIVE = ("run_funnels", "--live", "--since", SINCE_ARG, "--as-of", AS_OF_ARG)


def _wait_for(predicate, *, seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _finish(process: subprocess.Popen, *, timeout: float = 60) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def committed(fake_brevo):
    """Rows the child processes can see (a transactional test), cleaned up afterwards."""
    default_rows_restore()
    modx_catalogue()
    yield World(rng=random.Random(20261128))
    modx_rows_delete()
    default_rows_restore()


@pytest.fixture
def env(fake_brevo, tmp_path):
    return subprocess_env(fake=fake_brevo, log_file=tmp_path / "app.log")


# The next scheduled run, one cron period after the runs that met the fault: payments
# watched as unpaid are re-read by every scheduled run, not by a rerun minutes later.
NEXT_RUN_ARG = (AS_OF + dt.timedelta(minutes=15)).isoformat()


def _normal_run(env: dict[str, str], *, as_of: str = NEXT_RUN_ARG) -> subprocess.CompletedProcess:
    done = manage_run("run_funnels", "--live", "--as-of", as_of, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "success (live)" in done.stdout, done.stdout
    return done


def _no_secret_anywhere(tmp_path, *texts: str) -> None:
    log = (tmp_path / "app.log").read_text() if (tmp_path / "app.log").exists() else ""
    for text in (log, *texts):
        assert API_KEY not in text


# --- SIGKILL at random points ------------------------------------------------------------

KILL_ROUNDS = ["before", "during", "after"] * 2


@transactional
def test_sigkill_at_random_points_then_a_normal_run_loses_nothing(
    committed, fake_brevo, env, tmp_path
):
    world = committed
    rng = random.Random(1611)
    rounds = KILL_ROUNDS[:]
    rng.shuffle(rounds)
    fake_brevo.set_latency(0.04)
    seen = []
    for n, where in enumerate(rounds):
        world.grow(people=6, prefix=f"k{n}-")
        if n == 3:
            world.pay_later(count=2)
        # Half the rounds push by bulk import, so a kill also lands between an import
        # being accepted and being confirmed.
        bulk = n % 2 == 1
        fake_brevo.import_delay = 0.3 if bulk else 0.0
        round_env = {**env, "BREVO_IMPORT_THRESHOLD": "2" if bulk else "1000"}
        wanted = expected_state(after_id=world.first_result_id - 1)
        before = fake_brevo.request_count
        # One result per transaction before a "before" kill: the entries phase lasts long
        # enough for the kill to land in it.
        chunk = "1" if where == "before" else "4"
        victim = manage_popen(*LIVE, "--chunk-size", chunk, env=round_env)
        try:
            if where == "before":
                # Lock taken and run recorded; the kill lands in the entries or purchases
                # phase or just before the first request.
                _wait_for(lambda: SyncRun.objects.filter(pid=victim.pid).exists()
                          or victim.poll() is not None, what="the run to start")
                time.sleep(rng.uniform(0.0, 0.04))
            elif where == "during":
                k = rng.randint(1, 3)
                _wait_for(lambda: fake_brevo.request_count >= before + k
                          or victim.poll() is not None, what=f"{k} Brevo requests")
            else:
                # Brevo has everyone; the kill lands while the run records that.
                _wait_for(lambda: all(
                    wanted.members(slug) <= fake_brevo.list_members(list_id)
                    for slug, list_id in (("language", 1), ("non_language", 2))
                ) or victim.poll() is not None, what="Brevo to hold everyone")
                time.sleep(rng.uniform(0.0, 0.05))
            victim.send_signal(signal.SIGKILL)
        finally:
            _finish(victim)
        killed_run = SyncRun.objects.filter(pid=victim.pid).order_by("-id").first()
        seen.append((where, bulk, victim.returncode, fake_brevo.request_count - before,
                     FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING).count(),
                     killed_run.results_read if killed_run else None))
        assert_synced_means_in_brevo(fake_brevo)

    killed = [s for s in seen if s[2] == -signal.SIGKILL]
    assert len(killed) >= 5, seen
    assert any(s[3] == 0 for s in killed), f"no kill landed before a Brevo call: {seen}"
    assert any(s[4] > 0 and s[3] > 0 for s in killed), f"no kill landed mid-push: {seen}"

    fake_brevo.set_latency(0)
    done = _normal_run(env)
    counts = assert_invariant(fake_brevo, after_id=world.first_result_id - 1)
    assert counts["buyers"] > 0 and counts["language"] and counts["non_language"]
    statuses = list(SyncRun.objects.order_by("id").values_list("status", flat=True))
    assert statuses[-1] == "success" and "running" not in statuses
    assert statuses.count("crashed") == len(killed)
    _no_secret_anywhere(tmp_path, done.stdout, done.stderr)
    print("sigkill rounds (where, bulk, exit, requests, pending, results read):", seen, counts)


# --- the run's MariaDB connection killed -------------------------------------------------


@transactional
def test_the_lock_holding_connection_killed_mid_push_and_a_new_run_at_once(
    committed, fake_brevo, env, tmp_path
):
    """KILL of the run's connection (the lock holder) while it talks to Brevo; the next
    run starts at once, while the first is still sending: the first cannot write any more
    (its connection is gone and the lock with it), the second does the work."""
    world = committed
    world.grow(people=10)
    fake_brevo.set_latency(0.15)
    victim = manage_popen(*LIVE, env=env)
    try:
        _wait_for(lambda: fake_brevo.request_count >= 3 or victim.poll() is not None,
                  what="the run to be in the push")
        assert victim.poll() is None, victim.communicate()
        holder = run_lock_holder()
        assert holder is not None
        assert connection_kill(holder)
        _wait_for(lambda: run_lock_holder() != holder, seconds=5, what="the lock to go")
        fake_brevo.set_latency(0.02)
        second = manage_run(*LIVE, env=env)
        out, err = _finish(victim)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 75, (out, err)  # database unavailable
    # The command's own last word is one line (log records go to stderr only on a terminal).
    assert err.strip().splitlines()[-1].startswith("database unavailable: (2013"), err
    assert "Traceback" not in err
    assert second.returncode == 0, second.stdout + second.stderr
    # The victim was still sending while the second run worked; one more run after it
    # makes sure nothing it half-did is left over.
    _normal_run(env)
    assert_invariant(fake_brevo, after_id=world.first_result_id - 1)
    statuses = list(SyncRun.objects.order_by("id").values_list("status", flat=True))
    assert statuses == ["crashed", "success", "success"], statuses
    _no_secret_anywhere(tmp_path, out, err, second.stdout, second.stderr)


@transactional
def test_run_connections_killed_at_random_moments(committed, fake_brevo, env, tmp_path):
    """Every connection of the run (ours and MODX's) killed after a seeded random delay."""
    world = committed
    rng = random.Random(2013)
    fake_brevo.set_latency(0.05)
    seen = []
    for n in range(4):
        world.grow(people=5, prefix=f"c{n}-")
        before = fake_brevo.request_count
        newest = newest_connection_id()
        victim = manage_popen(*LIVE, "--chunk-size", "3", env=env)
        try:
            _wait_for(lambda: SyncRun.objects.filter(pid=victim.pid).exists()
                      or victim.poll() is not None, what="the run to start")
            time.sleep(rng.uniform(0.0, 0.6))
            killed = [c for c in connections_since(newest) if connection_kill(c)]
            out, err = _finish(victim)
        finally:
            if victim.poll() is None:
                victim.kill()
        seen.append((victim.returncode, len(killed), fake_brevo.request_count - before))
        # 1: the run noticed and recorded it failed; 75: the database went away under it.
        assert victim.returncode in (0, 1, 75), (out, err)
        if victim.returncode:
            assert "Traceback" not in err, err
        assert_synced_means_in_brevo(fake_brevo)
    assert any(code in (1, 75) for code, _, _ in seen), seen
    fake_brevo.set_latency(0)
    done = _normal_run(env)
    assert_invariant(fake_brevo, after_id=world.first_result_id - 1)
    _no_secret_anywhere(tmp_path, done.stdout, done.stderr)
    print("connection kills (exit, connections killed, requests):", seen)


# --- runs started together -------------------------------------------------------------


@transactional
@pytest.mark.parametrize("together", [2, 3])
def test_runs_started_at_the_same_moment_one_works_the_others_exit_3(
    committed, fake_brevo, env, tmp_path, together
):
    world = committed
    world.grow(people=6)
    # Whoever gets the lock holds it for seconds: its first Brevo answer is slow.
    fake_brevo.faults.add("slow", count=1, seconds=3.0)
    processes = [manage_popen(*LIVE, env=env) for _ in range(together)]
    ended: dict[int, float] = {}
    still_running_when_ended: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 60
        while len(ended) < together and time.monotonic() < deadline:
            for p in processes:
                if p.pid not in ended and p.poll() is not None:
                    ended[p.pid] = time.monotonic()
                    still_running_when_ended[p.pid] = sum(q.poll() is None for q in processes)
            time.sleep(0.01)
        outputs = {p.pid: _finish(p) for p in processes}
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    codes = sorted(p.returncode for p in processes)
    assert codes == [0] + [3] * (together - 1), {p.pid: outputs[p.pid] for p in processes}
    winner = next(p for p in processes if p.returncode == 0)
    for loser in (p for p in processes if p.returncode == 3):
        out, err = outputs[loser.pid]
        assert out == ""
        assert err.startswith("another run_funnels is running (since "), err
        # At once: refused while the winner was still working, not queued behind it.
        assert ended[loser.pid] < ended[winner.pid] - 1.0
        assert still_running_when_ended[loser.pid] >= 1
    assert SyncRun.objects.count() == 1  # a refused run leaves no record
    assert_invariant(fake_brevo, after_id=world.first_result_id - 1)


# --- Brevo misbehaving -------------------------------------------------------------------


@pytest.fixture
def brevo_world(live_settings, fake_brevo):
    """In-process runs with the settings a subprocess would take from its environment:
    two retries, a quarter-second read timeout; waits are recorded, not slept."""
    modx_catalogue()
    funnels_configure()
    live_settings.BREVO_MAX_RETRIES = 2
    live_settings.BREVO_READ_TIMEOUT = 0.25
    live_settings.BREVO_CONNECT_TIMEOUT = 1.0
    live_settings.BREVO_REQUESTS_PER_SECOND = 1000
    world = World(rng=random.Random(77))
    world.grow(people=8)
    return world


def _run(*, now: dt.datetime, sleeps: SleepRecorder | None = None) -> SyncRun:
    recorder = sleeps or SleepRecorder()
    return run_funnels(
        now=now, dry_run=False, since=SINCE, chunk_size=5,
        brevo_client_factory=lambda: brevo_client_build(sleep=recorder),
    )


# (name, fault kind, options, status of the run that meets it)
BREVO_FAULTS = [
    ("429-storm", "429", {"count": None, "reset": 0.5}, "partial"),
    ("429-burst", "429", {"count": 5, "reset": 0.5}, "partial"),
    ("500-streak", "500", {"count": None}, "partial"),
    ("503-streak-of-7", "503", {"count": 7}, "partial"),
    ("524-text-body", "524", {"count": None}, "partial"),
    ("timeout", "slow", {"count": None, "seconds": 0.5}, "partial"),
    ("2xx-then-dropped", "drop_after", {"count": None}, "partial"),
    ("dropped-before-answer", "drop_before", {"count": None}, "partial"),
    ("401", "401", {"count": None}, "failed"),
]


@pytest.mark.parametrize("threshold", [1000, 2], ids=["upsert", "import"])
@pytest.mark.parametrize("name, kind, options, status", BREVO_FAULTS,
                         ids=[f[0] for f in BREVO_FAULTS])
def test_brevo_fault_then_a_normal_run_loses_nothing(
    brevo_world, live_settings, fake_brevo, now, threshold, name, kind, options, status
):
    live_settings.BREVO_IMPORT_THRESHOLD = threshold
    fake_brevo.faults.add(kind, **options)
    sleeps = SleepRecorder()
    first = _run(now=now, sleeps=sleeps)
    assert first.status == status, first.error
    assert_synced_means_in_brevo(fake_brevo)
    endless = options["count"] is None
    if endless:
        assert not FunnelEntry.objects.filter(sync_status=SyncStatus.SYNCED).exists()
    assert API_KEY not in first.error
    if kind == "429":
        assert 0.5 in sleeps.calls  # waited for the reset Brevo announced
    if kind == "524":
        errors = set(FunnelEntry.objects.values_list("sync_last_error", flat=True))
        assert any("error code: 524" in e for e in errors), errors
    if status == "failed":
        assert first.brevo_requests == 1  # a rejected key stops at the first answer
    if threshold == 2 and endless:
        # An unconfirmed import keeps its entries pending, with the attempt recorded.
        assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"pending"}

    fake_brevo.faults.clear()
    # Transient failures wait out their backoff (5 min after the first attempt): run later.
    later = _run(now=now + dt.timedelta(hours=7))
    assert later.status == SyncRun.Status.SUCCESS, later.error
    counts = assert_invariant(fake_brevo, after_id=brevo_world.first_result_id - 1, as_of=now)
    assert counts["buyers"] and counts["language"] and counts["non_language"], counts


def test_a_bulk_import_that_ends_failed_then_a_normal_run(
    brevo_world, live_settings, fake_brevo, now
):
    live_settings.BREVO_IMPORT_THRESHOLD = 2
    fake_brevo.faults.add("import_failed", count=None)
    first = _run(now=now)
    assert first.status == SyncRun.Status.PARTIAL
    assert fake_brevo.list_members(1) == fake_brevo.list_members(2) == set()
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"pending"}
    assert all("process_failed" in e or "failed" in e
               for e in FunnelEntry.objects.values_list("sync_last_error", flat=True))
    fake_brevo.faults.clear()
    assert _run(now=now).status == SyncRun.Status.SUCCESS  # pending is due at once
    assert_invariant(fake_brevo, after_id=brevo_world.first_result_id - 1, as_of=now)


def test_faults_in_turn_across_runs_with_new_people_each_time(
    brevo_world, live_settings, fake_brevo, now
):
    """A bad week: every run meets another fault while new people keep arriving and
    unpaid certificates get paid; the first quiet run puts everything right."""
    world = brevo_world
    live_settings.BREVO_IMPORT_THRESHOLD = 4
    plan = [("429", {"count": 3, "reset": 0.5}), ("503", {"count": None}),
            ("drop_after", {"count": 4}), ("import_failed", {"count": None}),
            ("slow", {"count": 2, "seconds": 0.5}), ("524", {"count": 5})]
    moment = now
    for n, (kind, options) in enumerate(plan):
        world.grow(people=3, prefix=f"w{n}-")
        if n == 2:
            world.pay_later(count=3)
        fake_brevo.faults.clear()
        fake_brevo.faults.add(kind, **options)
        run = _run(now=moment)
        assert run.status in (SyncRun.Status.SUCCESS, SyncRun.Status.PARTIAL), run.error
        assert_synced_means_in_brevo(fake_brevo)
        moment += dt.timedelta(minutes=15)
    fake_brevo.faults.clear()
    assert _run(now=moment + dt.timedelta(hours=7)).status == SyncRun.Status.SUCCESS
    assert_invariant(fake_brevo, after_id=world.first_result_id - 1, as_of=now)


# --- a MODX insert that commits late -----------------------------------------------------


@transactional
def test_a_result_committed_after_a_higher_id_is_not_lost(committed, live_settings, fake_brevo):
    funnels_configure()
    factory = lambda: BrevoClient(  # noqa: E731
        base_url=fake_brevo.base_url, api_key=API_KEY, requests_per_second=0,
        sleep=SleepRecorder(),
    )
    late = mariadb_connect(str(connections["modx"].settings_dict["NAME"]))
    late.autocommit(False)
    try:
        with late.cursor() as cursor:
            # A web form's insert in an InnoDB transaction: the id is taken now, the row
            # becomes visible at COMMIT; meanwhile another visitor's row commits.
            cursor.execute(
                f"INSERT INTO {modx.TestResult._meta.db_table} (Email, TestId, Datep, Status) "
                "VALUES (%s, %s, %s, 1)",
                ["late@example.com", LANG_TEST, "2026-11-28 10:00:00"],
            )
        modx_result("early@example.com", completed_at=AS_OF - dt.timedelta(hours=1))
        first = run_funnels(now=AS_OF, dry_run=False, since=SINCE, brevo_client_factory=factory)
        assert first.status == SyncRun.Status.SUCCESS and first.entries_added == 1
        late.commit()
    finally:
        late.close()
    second = run_funnels(now=AS_OF + dt.timedelta(minutes=15), dry_run=False,
                         brevo_client_factory=factory)
    assert second.status == SyncRun.Status.SUCCESS
    assert fake_brevo.list_members(1) == {"early@example.com", "late@example.com"}
