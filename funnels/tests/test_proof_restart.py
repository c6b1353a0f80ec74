"""A real MariaDB restart under a running job (docs/proof.md, "Database restarts").

The job's two databases live on two private servers of the test's own
(private_mariadb.py): ours (DATABASE_URL) and MODX's (MODX_DATABASE_URL). The test's own
Django connections are moved onto them, so the MODX world of proof_support and the
invariant check read and write there too. Scenarios:

- our server crashes (SIGKILL) and comes back while the run is in the entries phase;
- our server is restarted (SIGTERM, as `systemctl restart` does) during the Brevo push;
- MODX's server is down while ours is up, and ours is down while MODX's is up.

Each time the run ends with one line and exit code 75, nothing is half-written (every
chunk's entries, plan items and watermark are all there or none is; what is marked synced
is in Brevo), and the next run completes with the invariant of docs/proof.md holding.
"""

from __future__ import annotations

import contextlib
import random
import re
import time

import pytest
from django.core.management import call_command
from django.db import connections

from funnels.codes import Source
from funnels.demo import modx_tables_create
from funnels.models import FunnelEntry, SyncRun, SyncRunItem, SyncState, SyncStatus
from funnels.tests.private_mariadb import PrivateMariaDB, private_mariadb_available
from funnels.tests.proof_support import (
    AS_OF_ARG,
    SINCE_ARG,
    World,
    assert_invariant,
    assert_synced_means_in_brevo,
)
from funnels.tests.sync_support import (
    default_rows_restore,
    funnels_configure,
    manage_popen,
    manage_run,
    modx_catalogue,
    subprocess_env,
)

pytestmark = [
    pytest.mark.mariadb_only,
    pytest.mark.slow,
    pytest.mark.django_db(databases=["default", "modx"], transaction=True),
    pytest.mark.skipif(not private_mariadb_available(), reason="mariadbd is not installed"),
]

LIVE = ("run_funnels", "--live", "--since", SINCE_ARG, "--as-of", AS_OF_ARG)
NEXT = ("run_funnels", "--live", "--as-of", "2026-11-28T15:45:00+00:00")
UNAVAILABLE = re.compile(r"database unavailable: \((2002|2003|2006|2013), .*\)")
MOVED = ("HOST", "PORT", "NAME", "USER", "PASSWORD")


def _wait_for(predicate, *, seconds: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _reconnect(*aliases: str) -> None:
    """After a server went away, the test's own connection to it is dead too."""
    for alias in aliases:
        with contextlib.suppress(Exception):
            connections[alias].close()
        connections[alias].connection = None


@pytest.fixture
def servers(fake_brevo, tmp_path):
    """Two private servers with our schema and MODX's, and the test's connections on
    them; afterwards the connections go back and both servers are gone, whatever
    happened."""
    saved = {alias: {k: connections[alias].settings_dict[k] for k in MOVED}
             for alias in ("default", "modx")}
    with PrivateMariaDB(name="ours") as ours, PrivateMariaDB(name="modx") as modx_server:
        try:
            for alias, server, name in (("default", ours, "test_private"),
                                        ("modx", modx_server, "test_private_modx")):
                server.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                               "COLLATE utf8mb4_unicode_ci")
                _reconnect(alias)
                connections[alias].settings_dict.update(
                    HOST="127.0.0.1", PORT=server.port, NAME=name, USER="root", PASSWORD="")
            call_command("migrate", verbosity=0)
            modx_tables_create(alias="modx")
            modx_catalogue()
            funnels_configure()
            env = subprocess_env(fake=fake_brevo, log_file=tmp_path / "app.log",
                                 BREVO_IMPORT_THRESHOLD="100000")
            yield ours, modx_server, env
        finally:
            for alias, values in saved.items():
                _reconnect(alias)
                connections[alias].settings_dict.update(values)
    default_rows_restore()


def _one_line_75(code: int, out: str, err: str) -> str:
    assert code == 75, (code, out, err)
    assert out == "", out
    [line] = err.splitlines()
    assert UNAVAILABLE.fullmatch(line), line
    return line


def _finish(process) -> str:
    """The victim's end: exit 75 and one line on stderr."""
    out, err = process.communicate(timeout=120)
    return _one_line_75(process.returncode, out, err)


def _next_run_completes(env, fake_brevo, world) -> dict:
    done = manage_run(*NEXT, env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    assert re.match(r"run #\d+ success \(live\)", line), line
    return assert_invariant(fake_brevo, after_id=world.first_result_id - 1)


def _no_half_chunk(run: SyncRun, world: World) -> int:
    """Entries, plan items and the watermark of every chunk committed together: the
    crashed run's items cover exactly the results up to the watermark, and no entry
    comes from a result above it."""
    watermark = SyncState.objects.get(key=Source.RESULTS).last_id
    handled = set(SyncRunItem.objects.filter(run=run, source_id__isnull=False)
                  .values_list("source_id", flat=True))
    assert handled == {i for i in world.result_ids if i <= watermark}
    assert not FunnelEntry.objects.filter(user_id__gt=watermark).exists()
    return watermark


def test_our_server_crashes_and_returns_during_the_entries_phase(servers, fake_brevo):
    ours, _, env = servers
    world = World(rng=random.Random(1501))
    world.grow(people=120)
    victim = manage_popen(*LIVE, "--chunk-size", "1", env=env)
    try:
        _wait_for(lambda: SyncRun.objects.filter(pid=victim.pid, results_read__gte=10).exists()
                  or victim.poll() is not None, what="the run to be in the entries phase")
        assert victim.poll() is None and fake_brevo.request_count == 0
        ours.restart(crash=True)
        line = _finish(victim)
    finally:
        if victim.poll() is None:
            victim.kill()
    _reconnect("default")

    [run] = SyncRun.objects.all()
    assert run.status == SyncRun.Status.RUNNING  # nobody could write its end: the next run will
    watermark = _no_half_chunk(run, world)
    assert world.first_result_id <= watermark < max(world.result_ids), "not mid-phase"
    assert fake_brevo.request_count == 0

    counts = _next_run_completes(env, fake_brevo, world)
    assert list(SyncRun.objects.order_by("id").values_list("status", flat=True)) == [
        "crashed", "success"]
    print("entries-phase crash:", line, "watermark", watermark, "of", max(world.result_ids),
          counts)


def test_our_server_restarts_during_the_brevo_push(servers, fake_brevo):
    ours, _, env = servers
    world = World(rng=random.Random(1502))
    world.grow(people=40)
    fake_brevo.set_latency(0.15)
    victim = manage_popen(*LIVE, env=env)
    try:
        _wait_for(lambda: fake_brevo.request_count >= 4 or victim.poll() is not None,
                  what="the run to be in the push")
        assert victim.poll() is None
        ours.restart()
        line = _finish(victim)
    finally:
        if victim.poll() is None:
            victim.kill()
    _reconnect("default")
    fake_brevo.set_latency(0)

    pending = FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING).count()
    assert pending > 0, "the restart came after the push"
    assert_synced_means_in_brevo(fake_brevo)  # what is marked synced, Brevo has
    [run] = SyncRun.objects.all()
    _no_half_chunk(run, world)

    counts = _next_run_completes(env, fake_brevo, world)
    assert list(SyncRun.objects.order_by("id").values_list("status", flat=True)) == [
        "crashed", "success"]
    print("push restart:", line, "pending after it", pending, counts)


def test_modx_down_while_ours_is_up_then_back(servers, fake_brevo):
    _, modx_server, env = servers
    world = World(rng=random.Random(1503))
    world.grow(people=10)
    modx_server.stop()

    done = manage_run(*LIVE, env=env, timeout=120)
    line = _one_line_75(done.returncode, done.stdout, done.stderr)
    assert "127.0.0.1" in line
    [run] = SyncRun.objects.all()  # our database was up: the run says why it failed
    assert run.status == SyncRun.Status.FAILED and "database error: OperationalError" in run.error
    assert FunnelEntry.objects.count() == 0 and not SyncState.objects.exists()
    assert fake_brevo.request_count == 0

    modx_server.start()
    _reconnect("modx")
    _next_run_completes(env, fake_brevo, world)


def test_ours_down_while_modx_is_up_then_back(servers, fake_brevo):
    ours, _, env = servers
    world = World(rng=random.Random(1504))
    world.grow(people=10)
    ours.stop()

    done = manage_run(*LIVE, env=env, timeout=120)
    _one_line_75(done.returncode, done.stdout, done.stderr)
    assert fake_brevo.request_count == 0

    ours.start()
    _reconnect("default")
    assert not SyncRun.objects.exists()  # nothing could be recorded, nothing half-done
    _next_run_completes(env, fake_brevo, world)


def test_the_private_server_is_stopped_and_removed_even_when_the_test_fails():
    with pytest.raises(RuntimeError, match="the test failed"):
        with PrivateMariaDB() as server:
            directory, process = server.directory, server.process
            assert server.ping() and directory.is_dir()
            raise RuntimeError("the test failed")
    assert process.poll() is not None
    assert not directory.exists()
