import datetime as dt
import io
import signal
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from funnels.locks import RunLock
from funnels.models import FunnelEntry, SyncRun
from funnels.tests.factories import SyncRunFactory
from funnels.tests.sync_support import (
    run_funnels_command,
    API_KEY,
    LANG_TEST,
    LANGUAGE_LIST,
    OTHER_LIST,
    OTHER_TEST,
    default_rows_restore,
    funnels_configure,
    manage_popen,
    manage_run,
    modx_catalogue,
    modx_result,
    modx_rows_delete,
    subprocess_env,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])


@pytest.fixture(autouse=True)
def english(settings):
    # Assertions read the English source strings; the default language is Russian.
    settings.LANGUAGE_CODE = "en"

AS_OF = "2026-11-28T18:30:00+03:00"


@pytest.fixture
def ready(live_settings):
    modx_catalogue()
    funnels_configure()
    live_settings.BREVO_REQUESTS_PER_SECOND = 1000
    return live_settings


_call = run_funnels_command


def test_success_prints_one_summary_line_and_exits_0(ready, fake_brevo):
    modx_result("anna@example.com", LANG_TEST)
    modx_result("boris@example.com", OTHER_TEST)
    code, out, err = _call("--live", "--since", "2026-10-01", "--as-of", AS_OF)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("run #") and "success (live)" in lines[0]
    assert "2 entries added" in lines[0] and "2 contacts sent" in lines[0]
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com"}
    assert fake_brevo.list_members(OTHER_LIST) == {"boris@example.com"}
    run = SyncRun.objects.get()
    assert run.as_of == dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc)
    assert run.trigger == "manual"


def test_plan_lists_each_candidate_with_its_outcome(ready, fake_brevo):
    modx_result("anna@example.com", LANG_TEST)
    bad = modx_result("not an email", LANG_TEST)
    code, out, _ = _call("--dry-run", "--plan", "--since", "2026-10-01", "--as-of", AS_OF)
    assert code == 0
    lines = out.strip().splitlines()
    assert any("Would add" in line and "anna@example.com" in line and "language" in line
               for line in lines)
    assert any("Waiting for a recheck" in line and "invalid_email" in line
               and f"result #{bad.id}" in line for line in lines)
    assert "dry run" in lines[-1] and "1 entries would be added" in lines[-1]
    assert FunnelEntry.objects.count() == 0 and fake_brevo.request_count == 0


def test_plan_names_payments_as_payments_and_counts_every_purchase_line(ready, fake_brevo):
    from funnels.modx.models import PAYMENT_STATUS_PAID
    from funnels.tests.factories import (
        CertPaymentFactory,
        CertResultFactory,
        CertUserFactory,
        FunnelEntryFactory,
    )

    entered = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)
    # One new buyer, and one the earlier tool marked purchased without a payment id.
    FunnelEntryFactory(email="new@example.com", entered_at=entered)
    FunnelEntryFactory(email="old@example.com", entered_at=entered,
                       certificate_purchased=True, certificate_purchased_at=entered)
    payments = [
        CertPaymentFactory(
            result=CertResultFactory(user=CertUserFactory(email=email)),
            status_id=PAYMENT_STATUS_PAID, paid_at=entered + dt.timedelta(days=1),
        )
        for email in ("new@example.com", "old@example.com")
    ]
    code, out, _ = _call("--dry-run", "--plan", "--since", "2026-10-01", "--as-of", AS_OF)
    assert code == 0
    lines = out.strip().splitlines()
    purchase_lines = [line for line in lines if line.startswith("Would mark purchase")]
    assert len(purchase_lines) == 2
    for payment in payments:
        assert any(f"payment #{payment.id}" in line for line in purchase_lines)
    assert not any("result #" in line for line in purchase_lines)
    assert "2 purchases would be marked (1 new, 1 updated), 0 revoked" in lines[-1]


def test_a_copied_live_mode_makes_the_first_run_a_dry_run_and_says_so(ready, fake_brevo):
    from funnels.models import RuntimeSettings

    RuntimeSettings.objects.update_or_create(id=1, defaults={"dry_run": False})
    modx_result("anna@example.com", LANG_TEST)
    code, out, _ = _call("--since", "2026-10-01", "--as-of", AS_OF)
    assert code == 0
    assert "this run was a dry run; the next one is live" in out
    assert "(dry run)" in out.splitlines()[-1] and fake_brevo.request_count == 0
    code, out, _ = _call("--as-of", AS_OF)
    assert code == 0 and "(live)" in out and "dry run" not in out


def test_trigger_and_naive_as_of_are_recorded(ready, settings):
    settings.TIME_ZONE = "Europe/Moscow"
    code, _, _ = _call("--dry-run", "--trigger", "cron", "--as-of", "2026-11-28T18:30")
    assert code == 0
    run = SyncRun.objects.get()
    assert run.trigger == "cron"
    assert run.as_of == dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc)


def test_live_without_a_key_is_one_line_and_exit_78(ready):
    ready.BREVO_API_KEY = ""
    code, out, err = _call("--live")
    assert code == 78
    assert err.strip() == "configuration error: live mode needs: BREVO_API_KEY is not set"
    assert out == ""


def test_failed_run_exits_1_with_the_error_in_its_line(ready, fake_brevo):
    modx_result("anna@example.com")
    fake_brevo.faults.add("401", count=None)
    code, out, _ = _call("--live", "--since", "2026-10-01")
    assert code == 1
    assert "failed (live)" in out and "401" in out
    assert API_KEY not in out


def test_busy_exits_3_with_who_holds_the_lock(ready):
    SyncRunFactory(status="running", finished_at=None, pid=31337)
    other = connections.create_connection("default")
    lock = RunLock(connection=other)
    lock.acquire()
    try:
        code, out, err = _call("--dry-run")
    finally:
        lock.release()
        other.close()
    assert code == 3
    assert err.startswith("another run_funnels is running (since ")
    assert "pid 31337" in err
    assert out == ""


@pytest.mark.parametrize("args", [["--since", "yesterday"], ["--as-of", "soon"],
                                  ["--chunk-size", "0"], ["--live", "--dry-run"]])
def test_bad_options_are_refused(ready, args):
    with pytest.raises(CommandError):
        call_command("run_funnels", *args)


def test_help_documents_the_initial_look_back(capsys):
    with pytest.raises(SystemExit):
        call_command("run_funnels", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "FUNNELS_INITIAL_LOOKBACK_DAYS" in text and "7" in text


def test_unreachable_database_is_one_line_without_traceback(tmp_path):
    env = subprocess_env(fake=None, log_file=tmp_path / "app.log")
    env["DATABASE_URL"] = "mysql://root@127.0.0.1:1/nowhere"
    done = manage_run("run_funnels", "--dry-run", env=env)
    assert done.returncode == 75  # EX_TEMPFAIL, as manage.py answers at start-up
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().startswith("database unavailable:")
    assert len(done.stderr.strip().splitlines()) == 1


# -- real processes: two at once, and a SIGKILL mid-run ---------------------------------


@pytest.fixture
def committed(fake_brevo):
    """Data the child processes can see: a transactional test, cleaned up afterwards."""
    default_rows_restore()
    modx_catalogue()
    yield
    modx_rows_delete()
    default_rows_restore()


def _wait_for(predicate, *, seconds=30.0, what=""):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.django_db(databases=["default", "modx"], transaction=True)
def test_a_second_process_exits_3_while_the_first_runs(committed, fake_brevo, tmp_path):
    for n in range(6):
        modx_result(f"p{n}@example.com")
    # The first run spends about 6 s in the push: on a busy machine the second process
    # alone can take 3-4 s to start (0.4 s a request was not enough there).
    fake_brevo.set_latency(1.0)
    env = subprocess_env(fake=fake_brevo, log_file=tmp_path / "app.log")
    first = manage_popen("run_funnels", "--live", "--since", "2026-10-01", env=env)
    try:
        _wait_for(lambda: fake_brevo.request_count >= 1 or first.poll() is not None,
                  what="the first run to reach Brevo")
        assert first.poll() is None, first.communicate()
        second = manage_run("run_funnels", "--live", env=env)
        assert second.returncode == 3, second.stderr
        assert f"another run_funnels is running (since " in second.stderr
        assert f"pid {first.pid}" in second.stderr
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert "success (live)" in out
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert SyncRun.objects.count() == 1  # the refused run left no record
    assert len(fake_brevo.list_members(LANGUAGE_LIST)) == 6


@pytest.mark.django_db(databases=["default", "modx"], transaction=True)
def test_sigkill_mid_run_then_the_next_run_completes_the_work(committed, fake_brevo, tmp_path):
    emails = {f"k{n}@example.com" for n in range(8)}
    for n in range(8):
        modx_result(f"k{n}@example.com", LANG_TEST if n % 2 else OTHER_TEST)
    fake_brevo.set_latency(0.3)
    env = subprocess_env(fake=fake_brevo, log_file=tmp_path / "app.log")
    victim = manage_popen("run_funnels", "--live", "--since", "2026-10-01", env=env)
    try:
        _wait_for(lambda: fake_brevo.request_count >= 3 or victim.poll() is not None,
                  what="the run to be half-way through the push")
        assert victim.poll() is None, victim.communicate()
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert FunnelEntry.objects.filter(sync_status="pending").exists()
    fake_brevo.set_latency(0)
    after = manage_run("run_funnels", "--live", env=env)
    assert after.returncode == 0, after.stderr
    assert FunnelEntry.objects.count() == 8  # no duplicate entry
    assert set(FunnelEntry.objects.values_list("email", flat=True)) == emails
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"synced"}
    members = fake_brevo.list_members(LANGUAGE_LIST) | fake_brevo.list_members(OTHER_LIST)
    assert members == emails  # no contact left out
    runs = list(SyncRun.objects.order_by("id").values_list("status", flat=True))
    assert runs == ["crashed", "success"]
    log = (tmp_path / "app.log").read_text()
    assert API_KEY not in log + after.stdout + after.stderr
    assert "k1@example.com" not in log  # emails are masked in the log


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch):
    """A bug (not the database, not the configuration) still gives cron one line; the
    traceback belongs in app.log, where the run service logs it."""
    from funnels.management.commands import run_funnels as command

    def broken(**kwargs):
        raise KeyError("funnel 'x'\nsecond line")

    monkeypatch.setattr(command, "run_funnels", broken)
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("run_funnels", "--dry-run", stdout=io.StringIO(), stderr=err)
    assert exited.value.code == 1
    assert err.getvalue().splitlines() in (
        [f"run failed unexpectedly: KeyError: \"funnel 'x'\\nsecond line\" (traceback in the log)"],
        [f"запуск упал из-за непредвиденной ошибки: KeyError: \"funnel 'x'\\nsecond line\" "
         "(трассировка в журнале)"],
    )
