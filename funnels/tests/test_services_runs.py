import datetime as dt
import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from funnels.codes import Source
from funnels.locks import RunLock
from funnels.models import (
    FunnelEntry,
    RecheckRow,
    RuntimeSettings,
    SyncRun,
    SyncRunItem,
    SyncState,
)
from funnels.modx.models import CertPayment
from funnels.selectors.funnels import watermark_state_get
from funnels.services import watermarks
from funnels.services.watermarks import watermark_advance
from funnels.services.runs import RunBusy, RunConfigError, run_funnels
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
    SyncRunFactory,
)
from funnels.tests.sync_support import (
    API_KEY,
    LANG_TEST,
    LANGUAGE_LIST,
    OTHER_LIST,
    OTHER_TEST,
    RECENT,
    modx_result,
    run_live,
)
from testizer_funnels.routers import modx_writes_allowed

pytestmark = pytest.mark.django_db(databases=["default", "modx"])


@pytest.fixture
def funnels_log(caplog):
    """The "funnels" logger does not propagate to the root: listen to it directly."""
    logger = logging.getLogger("funnels")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="funnels")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_live_run_fills_both_funnels_and_records_itself(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com", LANG_TEST)
    modx_result("Boris@Example.com ", OTHER_TEST)
    last = modx_result("not-an-email", OTHER_TEST)
    run = run_live(client_factory, now=now, trigger="cron")
    assert run.status == SyncRun.Status.SUCCESS, run.error
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com"}
    assert fake_brevo.list_members(OTHER_LIST) == {"boris@example.com"}
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"synced"}
    run.refresh_from_db()
    # The invalid address may yet be corrected in MODX: it waits, it is not skipped.
    assert (run.results_read, run.entries_added, run.skipped) == (3, 2, 0)
    assert run.skipped_by_reason == {}
    assert run.waiting_by_reason == {"invalid_email": 1}
    assert RecheckRow.objects.get().modx_id == last.id
    assert (run.contacts_sent, run.contacts_failed) == (2, 0)
    assert run.brevo_requests == fake_brevo.request_count == 2
    assert run.ratelimit_limit is not None and run.ratelimit_remaining is not None
    assert run.trigger == "cron" and run.dry_run is False
    assert run.pid == os.getpid() and run.hostname == socket.gethostname()
    assert run.as_of == now
    assert run.finished_at >= run.started_at and run.heartbeat_at is not None
    assert SyncState.objects.get(key="test_results").last_id == last.id


def test_a_run_with_nothing_new_does_nothing_and_calls_nobody(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com")
    run_live(client_factory, now=now)
    requests = fake_brevo.request_count
    again = run_live(client_factory, now=now)
    assert again.status == SyncRun.Status.SUCCESS
    assert (again.results_read, again.entries_added, again.brevo_requests) == (0, 0, 0)
    assert fake_brevo.request_count == requests
    assert FunnelEntry.objects.count() == 1


def _run_row_writes(queries):
    return [q["sql"] for q in queries
            if q["sql"].startswith(("INSERT INTO", "UPDATE")) and "funnels_syncrun\"" in
            q["sql"].replace("`", '"').split(" SET ")[0].split(" (")[0]]


def test_an_idle_run_writes_its_row_twice_a_busy_one_after_each_phase(
    configured, live_settings, client_factory, fake_brevo, now
):
    """A phase that changed none of the run's counters leaves its row alone (each UPDATE is
    a commit); the row is still written when the run starts and when it ends, and after
    any phase that counted something."""
    modx_result("anna@example.com")
    run_live(client_factory, now=now)
    with CaptureQueriesContext(connections["default"]) as ours:
        idle = run_live(client_factory, now=now + dt.timedelta(minutes=15))
    assert len(_run_row_writes(ours.captured_queries)) == 2  # the INSERT, the final save
    idle.refresh_from_db()
    assert idle.status == SyncRun.Status.SUCCESS and idle.heartbeat_at == idle.finished_at

    modx_result("boris@example.com", OTHER_TEST)
    with CaptureQueriesContext(connections["default"]) as ours:
        busy = run_live(client_factory, now=now + dt.timedelta(minutes=30))
    assert busy.entries_added == 1
    writes = _run_row_writes(ours.captured_queries)
    # The INSERT, the chunk's progress (entries added: the end of the results phase has
    # nothing newer to say), the end of the outbox (contacts sent), the final save; the
    # purchases phase counted nothing.
    assert len(writes) == 4
    assert "entries_added" in writes[1] and "contacts_sent" in writes[2]


def test_a_long_quiet_phase_still_stamps_the_heartbeat(
    configured, live_settings, client_factory, fake_brevo, now
):
    """Unchanged counters are skipped only within HEARTBEAT_QUIET of the last write: a run
    that spends longer than that stamps its heartbeat at the end of each phase."""
    from funnels.services.runs import HEARTBEAT_QUIET

    ticks = iter(range(1000))

    def slow_clock():
        return now + next(ticks) * (HEARTBEAT_QUIET + dt.timedelta(seconds=1))

    modx_result("anna@example.com")
    run_live(client_factory, now=now)
    with CaptureQueriesContext(connections["default"]) as ours:
        run_live(client_factory, now=now + dt.timedelta(minutes=15), clock=slow_clock)
    assert len(_run_row_writes(ours.captured_queries)) == 5


def test_a_backlog_of_any_size_is_worked_off_in_one_run(
    configured, live_settings, client_factory, fake_brevo, now
):
    rows = [modx_result(f"p{n}@example.com", LANG_TEST if n % 2 else OTHER_TEST) for n in range(25)]
    run = run_live(client_factory, now=now, chunk_size=4)
    assert run.results_read == 25 and run.entries_added == 25
    assert SyncState.objects.get(key="test_results").last_id == rows[-1].id
    members = fake_brevo.list_members(LANGUAGE_LIST) | fake_brevo.list_members(OTHER_LIST)
    assert members == {f"p{n}@example.com" for n in range(25)}


def test_dry_run_writes_nothing_but_its_run_and_repeats_the_same_plan(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com", LANG_TEST)
    modx_result("anna@example.com", OTHER_TEST)
    modx_result("")
    plans = []
    for _ in range(2):
        run = run_live(client_factory, now=now, dry_run=True)
        assert run.status == SyncRun.Status.SUCCESS and run.dry_run
        plans.append(list(
            SyncRunItem.objects.filter(run=run).values_list(
                "action", "reason", "email", "funnel_type", "source_id"
            )
        ))
    assert plans[0] == plans[1]
    assert sorted(p[0] for p in plans[0]) == ["waiting", "would_add", "would_add"]
    assert RecheckRow.objects.count() == 0
    assert FunnelEntry.objects.count() == 0
    assert SyncState.objects.count() == 0
    assert fake_brevo.request_count == 0
    assert SyncRun.objects.count() == 2


def test_mode_comes_from_the_runtime_settings_unless_forced(
    configured, live_settings, client_factory, now
):
    RuntimeSettings.objects.update_or_create(id=1, defaults={"dry_run": True})
    assert run_live(client_factory, now=now, dry_run=None).dry_run is True
    RuntimeSettings.objects.filter(id=1).update(dry_run=False)
    assert run_live(client_factory, now=now, dry_run=None).dry_run is False
    assert run_live(client_factory, now=now, dry_run=True).dry_run is True


def test_a_live_settings_row_runs_dry_until_a_first_dry_run_completed_here(
    configured, live_settings, client_factory, fake_brevo, now
):
    # What a .env copied from the earlier tool (APP_DRY_RUN=false) leaves in the row.
    RuntimeSettings.objects.update_or_create(id=1, defaults={"dry_run": False})
    modx_result("anna@example.com", LANG_TEST)

    first = run_live(client_factory, now=now, dry_run=None)
    assert first.dry_run is True and first.status == "success"
    assert fake_brevo.request_count == 0 and FunnelEntry.objects.count() == 0

    second = run_live(client_factory, now=now, dry_run=None)
    assert second.dry_run is False and second.contacts_sent == 1


def test_a_first_live_run_needs_an_explicit_choice(
    configured, live_settings, client_factory, fake_brevo, now, admin_user
):
    from funnels.services.runtime import dry_run_set

    RuntimeSettings.objects.update_or_create(id=1, defaults={"dry_run": True})
    assert run_live(client_factory, now=now, dry_run=False).dry_run is False  # --live
    SyncRun.objects.all().delete()
    dry_run_set(user=admin_user, value=False)  # a person switched in the admin
    assert run_live(client_factory, now=now, dry_run=None).dry_run is False


def test_a_run_left_running_by_a_dead_process_is_marked_crashed(
    configured, live_settings, client_factory, now
):
    beat = now - dt.timedelta(hours=1)
    dead = SyncRunFactory(status="running", finished_at=None, heartbeat_at=beat, pid=4242,
                          hostname="web1")
    run = run_live(client_factory, now=now)
    dead.refresh_from_db()
    assert run.status == "success"
    assert dead.status == "crashed"
    assert dead.finished_at == beat
    assert "found dead" in dead.error and "pid 4242" in dead.error


def test_401_fails_the_run_loses_nothing_and_leaks_no_key(
    configured, live_settings, client_factory, fake_brevo, now, funnels_log
):
    modx_result("anna@example.com")
    modx_result("boris@example.com")
    fake_brevo.faults.add("401", count=None)
    run = run_live(client_factory, now=now)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.FAILED
    assert "401" in run.error
    assert list(FunnelEntry.objects.values_list("sync_status", flat=True)) == ["pending"] * 2
    assert API_KEY not in run.error
    assert funnels_log.records and API_KEY not in funnels_log.text
    # Once the key is right again, the next run sends them: nothing was lost.
    fake_brevo.faults.clear()
    assert run_live(client_factory, now=now).status == "success"
    assert fake_brevo.list_members(LANGUAGE_LIST) == {"anna@example.com", "boris@example.com"}


def test_a_wrong_key_never_reaches_the_run_or_the_logs(
    configured, live_settings, client_factory, now, funnels_log
):
    wrong = "xkeysib-wrong-key-do-not-print-0000"
    live_settings.BREVO_API_KEY = wrong
    modx_result("anna@example.com")
    run = run_live(lambda: client_factory(api_key=wrong), now=now)
    assert run.status == "failed"
    assert wrong not in run.error and wrong not in funnels_log.text
    assert "401" in run.error


def test_info_logs_mask_emails(
    configured, live_settings, client_factory, fake_brevo, now, funnels_log
):
    modx_result("anna.secret@example.com")
    fake_brevo.faults.add("400", email="anna.secret@example.com")
    run_live(client_factory, now=now)
    info = [r.getMessage() for r in funnels_log.records if r.levelno >= logging.INFO]
    assert any("a***@example.com" in line for line in info)
    assert not any("anna.secret@example.com" in line for line in info)


def test_a_contact_refused_by_brevo_makes_the_run_partial(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com")
    modx_result("bad@example.com")
    fake_brevo.faults.add("400", email="bad@example.com", count=None)
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.PARTIAL
    assert (run.contacts_sent, run.contacts_failed) == (1, 1)


def test_first_run_starts_at_since_and_later_runs_at_the_watermark(
    configured, live_settings, client_factory, now
):
    modx_result("old@example.com", completed_at=dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc))
    modx_result("new@example.com", completed_at=dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc))
    run = run_live(client_factory, now=now, since=dt.date(2026, 10, 1))
    assert list(FunnelEntry.objects.values_list("email", flat=True)) == ["new@example.com"]
    assert run.results_read == 1
    # The watermark exists now: an earlier --since changes nothing.
    again = run_live(client_factory, now=now, since=dt.date(2026, 1, 1))
    assert again.results_read == 0
    assert FunnelEntry.objects.count() == 1


def test_default_first_run_looks_back_the_configured_days(
    configured, live_settings, client_factory, now
):
    live_settings.FUNNELS_INITIAL_LOOKBACK_DAYS = 7
    modx_result("eight@example.com", completed_at=now - dt.timedelta(days=8, hours=1))
    modx_result("six@example.com", completed_at=now - dt.timedelta(days=6))
    run_live(client_factory, now=now, since=None)
    assert list(FunnelEntry.objects.values_list("email", flat=True)) == ["six@example.com"]


def test_first_live_run_on_an_empty_modx_still_sets_the_watermark(
    configured, live_settings, client_factory, now
):
    run_live(client_factory, now=now)
    assert SyncState.objects.get(key="test_results").last_id == 0


def test_live_without_a_key_is_a_config_error_recorded_on_the_run(
    configured, live_settings, client_factory, fake_brevo, now
):
    live_settings.BREVO_API_KEY = ""
    modx_result("anna@example.com")
    with pytest.raises(RunConfigError, match="BREVO_API_KEY"):
        run_live(client_factory, now=now)
    run = SyncRun.objects.get()
    assert run.status == "failed" and "BREVO_API_KEY" in run.error
    assert FunnelEntry.objects.count() == 0 and fake_brevo.request_count == 0


def test_live_without_a_list_id_is_a_config_error(configured, live_settings, client_factory, now):
    live_settings.BREVO_NON_LANGUAGE_LIST_ID = None
    from funnels.models import Funnel

    Funnel.objects.filter(slug="non_language").update(brevo_list_id=None)
    with pytest.raises(RunConfigError, match="non_language"):
        run_live(client_factory, now=now)


def test_a_second_run_while_one_holds_the_lock_is_refused(
    configured, live_settings, client_factory, now
):
    holder = SyncRunFactory(status="running", finished_at=None, pid=31337)
    other = connections.create_connection("default")
    lock = RunLock(connection=other)
    lock.acquire()
    try:
        with pytest.raises(RunBusy, match=r"another run_funnels is running \(since .*pid 31337"):
            run_live(client_factory, now=now)
    finally:
        lock.release()
        other.close()
    holder.refresh_from_db()
    assert holder.status == "running"  # the refused run touched nothing
    assert SyncRun.objects.count() == 1


def test_purchases_ride_in_the_same_push(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com", LANG_TEST, completed_at=RECENT)
    user = CertUserFactory(email="Anna@Example.com")
    result = CertResultFactory(user=user, test=CertTestFactory(type=1))
    CertPaymentFactory(result=result, status_id=2, paid_at=RECENT + dt.timedelta(hours=2))
    run = run_live(client_factory, now=now)
    assert run.purchases_found == 1 and run.payments_read >= 1
    attributes = fake_brevo.contact("anna@example.com")["attributes"]
    assert attributes["CERTIFICATE_PURCHASED"] is True
    assert attributes["CERTIFICATE_PURCHASED_AT"] == "2026-11-27"
    assert fake_brevo.request_count == 1  # entry and purchase in one upsert


def test_a_refund_empties_the_purchase_date_in_brevo(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com", LANG_TEST, completed_at=RECENT)
    user = CertUserFactory(email="anna@example.com")
    result = CertResultFactory(user=user, test=CertTestFactory(type=1))
    payment = CertPaymentFactory(result=result, status_id=2,
                                 paid_at=RECENT + dt.timedelta(hours=2))
    run_live(client_factory, now=now)
    assert fake_brevo.contact("anna@example.com")["attributes"]["CERTIFICATE_PURCHASED_AT"]

    with modx_writes_allowed():
        CertPayment.objects.filter(pk=payment.pk).update(status_id=4)  # refunded
    run = run_live(client_factory, now=now + dt.timedelta(minutes=15))

    assert run.purchases_revoked == 1 and run.status == "success"
    assert fake_brevo.contact("anna@example.com")["attributes"] == {
        "FUNNEL_TYPE": "language", "CERTIFICATE_PURCHASED": False,
    }


def test_payment_skips_are_recorded_on_the_run_apart_from_result_skips(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com", LANG_TEST, completed_at=RECENT)
    user = CertUserFactory(email="anna@example.com")
    result = CertResultFactory(user=user, test=CertTestFactory(type=1))
    CertPaymentFactory(result=result, status_id=2, paid_at=RECENT - dt.timedelta(days=2))
    CertPaymentFactory(result=result, status_id=1, paid_at=None)
    run = run_live(client_factory, now=now)
    assert run.skipped == 0  # no test result was skipped
    assert run.skipped_by_reason == {
        "payment:not_paid": 1,
        "payment:purchase_before_entry": 1,
    }
    assert run.purchases_found == 0


def test_an_unexpected_error_is_recorded_and_raised(configured, live_settings, now):
    modx_result("anna@example.com")

    def broken_factory():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_funnels(now=now, dry_run=False, trigger="manual", since=dt.date(2026, 10, 1),
                    chunk_size=10, brevo_client_factory=broken_factory)
    run = SyncRun.objects.get()
    assert run.status == "failed" and "RuntimeError: boom" in run.error
    # The entries were committed before the push: the next run sends them.
    assert FunnelEntry.objects.get().sync_status == "pending"


def _queries_of_an_idle_run(client_factory, now):
    with CaptureQueriesContext(connections["default"]) as ours, CaptureQueriesContext(
        connections["modx"]
    ) as theirs:
        run = run_live(client_factory, now=now)
    assert run.results_read == 0
    return len(ours), len(theirs)


def test_queries_of_a_run_with_nothing_new_do_not_grow_with_the_tables(
    configured, live_settings, client_factory, now
):
    for n in range(3):
        modx_result(f"a{n}@example.com")
    run_live(client_factory, now=now)
    small = _queries_of_an_idle_run(client_factory, now)
    for n in range(150):
        modx_result(f"b{n}@example.com", LANG_TEST if n % 2 else OTHER_TEST)
    run_live(client_factory, now=now)
    assert FunnelEntry.objects.count() == 153
    large = _queries_of_an_idle_run(client_factory, now)
    assert large == small


class _PingRecorder(BaseHTTPRequestHandler):
    paths: list

    def do_GET(self):
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def ping_server():
    paths: list[str] = []
    handler = type("Handler", (_PingRecorder,), {"paths": paths})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping/abc", paths
    server.shutdown()
    server.server_close()


def test_the_run_pings_start_and_leaves_the_end_to_the_alerts(
    configured, live_settings, client_factory, fake_brevo, now, ping_server
):
    """The end ping (success or /fail) is sent by the command with the other alerts
    (test_services_alerts.py, test_alerts_command.py), once, whatever the outcome."""
    url, paths = ping_server
    live_settings.FUNNELS_PING_URL = url
    run_live(client_factory, now=now)
    modx_result("anna@example.com")
    fake_brevo.faults.add("401", count=None)
    assert run_live(client_factory, now=now).status == "failed"
    assert paths == ["/ping/abc/start", "/ping/abc/start"]


def test_an_unreachable_ping_url_does_not_fail_the_run(
    configured, live_settings, client_factory, now, funnels_log
):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    live_settings.FUNNELS_PING_URL = f"http://127.0.0.1:{port}/secret-token"
    assert run_live(client_factory, now=now).status == "success"
    assert "ping start not delivered" in funnels_log.text
    assert "secret-token" not in funnels_log.text


# --- rows committed late, below the watermark --------------------------------------------

MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def late_row(configured, live_settings, client_factory, now):
    """A live run has read past an id whose row was not visible yet (committed late): the
    next row was taken right after `anchor`, the one between them is missing."""
    anchor = modx_result("anchor@example.com", LANG_TEST)
    watermark_advance(key=Source.RESULTS, last_id=anchor.id, run=None)
    modx_result("early@example.com", LANG_TEST, id=anchor.id + 2)
    run = run_live(client_factory, now=now)
    assert run.entries_added == 1
    return anchor.id + 1


def _late_commit(result_id):
    return modx_result("late@example.com", OTHER_TEST, id=result_id)


def test_an_id_read_past_without_a_row_is_kept_as_a_gap_of_the_watermark(late_row, now):
    state = watermark_state_get(key=Source.RESULTS)
    assert state.last_id == late_row + 1
    assert state.gaps == {late_row: now}


def test_a_row_committed_late_is_entered_by_the_next_run_and_only_once(
    late_row, client_factory, fake_brevo, now
):
    _late_commit(late_row)
    later = now + 15 * MINUTE
    run = run_live(client_factory, now=later)
    assert run.status == SyncRun.Status.SUCCESS, run.error
    assert (run.results_read, run.entries_added) == (1, 1)
    assert fake_brevo.list_members(OTHER_LIST) == {"late@example.com"}
    assert watermark_state_get(key=Source.RESULTS).gaps == {}
    again = run_live(client_factory, now=later + 15 * MINUTE)
    assert (again.results_read, again.entries_added) == (0, 0)
    assert FunnelEntry.objects.filter(user_id=late_row).count() == 1
    assert SyncRunItem.objects.filter(source_id=late_row).count() == 1


def test_a_late_row_that_cannot_be_decided_waits_and_is_said_once(
    late_row, client_factory, now
):
    modx_result("not-an-email", OTHER_TEST, id=late_row)
    run = run_live(client_factory, now=now + 15 * MINUTE)
    assert run.waiting_by_reason == {"invalid_email": 1}
    again = run_live(client_factory, now=now + 30 * MINUTE)
    assert again.waiting_by_reason == {}
    assert SyncRunItem.objects.filter(source_id=late_row, action="waiting").count() == 1
    assert RecheckRow.objects.filter(modx_id=late_row).exists()
    assert not watermark_state_get(key=Source.RESULTS).gaps


def test_a_late_row_that_is_skipped_is_skipped_once(late_row, client_factory, now):
    FunnelEntry.objects.create(
        email="known@example.com", funnel_type="non_language", test_id=OTHER_TEST,
        entered_at=now - dt.timedelta(days=1),
    )
    modx_result("known@example.com", OTHER_TEST, id=late_row)
    run = run_live(client_factory, now=now + 15 * MINUTE)
    assert run.skipped_by_reason == {"already_in_funnel": 1}
    run_live(client_factory, now=now + 30 * MINUTE)
    assert SyncRunItem.objects.filter(source_id=late_row, action="skipped").count() == 1


def test_a_gap_still_missing_after_the_grace_period_is_dropped(
    late_row, live_settings, client_factory, now, funnels_log
):
    live_settings.FUNNELS_WATERMARK_GAP_GRACE_MINUTES = 60
    run_live(client_factory, now=now + 60 * MINUTE)
    assert watermark_state_get(key=Source.RESULTS).gaps == {late_row: now}
    run_live(client_factory, now=now + 61 * MINUTE)
    assert watermark_state_get(key=Source.RESULTS).gaps == {}
    assert any(
        r.levelname == "INFO" and "1 gap ids still missing after the grace period dropped"
        in r.getMessage() for r in funnels_log.records
    )
    # The price of forgetting: a row that turns up after the grace period is not read.
    _late_commit(late_row)
    run = run_live(client_factory, now=now + 75 * MINUTE)
    assert run.results_read == 0


def test_a_dry_run_reads_the_gaps_and_writes_nothing(late_row, client_factory, now):
    _late_commit(late_row)

    def stored():
        return sorted(SyncState.objects.values_list("key", "last_id", "gaps", "run_id"))

    before = stored()
    run = run_live(client_factory, now=now + 15 * MINUTE, dry_run=True)
    assert (run.results_read, run.entries_added) == (1, 1)
    [item] = SyncRunItem.objects.filter(run=run)
    assert (item.action, item.source_id, item.email) == ("would_add", late_row, "late@example.com")
    assert stored() == before
    assert not FunnelEntry.objects.filter(user_id=late_row).exists()
    # Nor does it drop a gap past its grace period: that is a write too.
    run_live(client_factory, now=now + 3 * 60 * MINUTE, dry_run=True)
    assert stored() == before


def test_the_gap_list_is_bounded_oldest_first(
    configured, live_settings, client_factory, now, monkeypatch, funnels_log
):
    monkeypatch.setattr(watermarks, "GAP_LIMIT", 3)
    anchor = modx_result("anchor@example.com")
    watermark_advance(key=Source.RESULTS, last_id=anchor.id, run=None)
    # auto_increment_increment = 2: every other id is never used.
    first = [modx_result(f"a{n}@example.com", id=anchor.id + 2 * n) for n in (1, 2, 3)]
    run_live(client_factory, now=now)
    assert watermark_state_get(key=Source.RESULTS).gaps == {
        first[0].id - 1: now, first[1].id - 1: now, first[2].id - 1: now,
    }
    second = [modx_result(f"b{n}@example.com", id=first[-1].id + 2 * n) for n in (1, 2)]
    run_live(client_factory, now=now + 15 * MINUTE)
    assert watermark_state_get(key=Source.RESULTS).gaps == {
        first[2].id - 1: now,
        second[0].id - 1: now + 15 * MINUTE,
        second[1].id - 1: now + 15 * MINUTE,
    }
    assert any(
        r.levelname == "WARNING" and "the 2 oldest gap ids dropped" in r.getMessage()
        for r in funnels_log.records
    )


def test_gaps_cost_an_idle_run_one_primary_key_read_and_no_write(
    late_row, client_factory, now
):
    with CaptureQueriesContext(connections["default"]) as ours, CaptureQueriesContext(
        connections["modx"]
    ) as theirs:
        run = run_live(client_factory, now=now + 5 * MINUTE)
    assert run.results_read == 0
    gap_reads = [q["sql"] for q in theirs.captured_queries if "simpletest_users" in q["sql"]
                 and " IN (" in q["sql"]]
    assert len(gap_reads) == 1
    assert not any("UPDATE" in q["sql"] and "funnels_syncstate" in q["sql"]
                   for q in ours.captured_queries)


def test_a_run_stopped_by_brevo_lists_every_contact_it_left_for_later(
    configured, live_settings, client_factory, fake_brevo, now
):
    for n in range(6):
        modx_result(f"p{n}@example.com")
    fake_brevo.faults.add("500", count=None, method="POST")
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.PARTIAL
    assert run.error == "stopped after 3 consecutive Brevo failures"
    pending = set(FunnelEntry.objects.filter(sync_status="pending").values_list("id", flat=True))
    deferred = SyncRunItem.objects.filter(run=run, action=SyncRunItem.Action.DEFERRED)
    # Every entry still waiting for Brevo is on the run's page, once, with the reason.
    assert pending and set(deferred.values_list("entry_id", flat=True)) == pending
    assert deferred.count() == len(pending)
    assert set(deferred.values_list("reason", flat=True)) == {"brevo_stopped"}
    # The three that failed have their own items; together they are all six people.
    failed = SyncRunItem.objects.filter(run=run, action=SyncRunItem.Action.FAILED)
    assert {i.email for i in failed} | {i.email for i in deferred} == {
        f"p{n}@example.com" for n in range(6)
    }


def test_a_successful_run_records_nothing_left_for_later(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com")
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.SUCCESS
    assert not SyncRunItem.objects.filter(run=run, action=SyncRunItem.Action.DEFERRED).exists()


def test_a_live_run_leaves_the_report_rollup_clean_and_equal_to_the_entries(
    configured, live_settings, client_factory, fake_brevo, now
):
    from funnels.models import ReportRollup, ReportRollupDirty
    from funnels.services.report_rollup import report_rollup_refresh

    report_rollup_refresh(rebuild=True)  # built on an empty table
    modx_result("anna@example.com", LANG_TEST, completed_at=RECENT)
    user = CertUserFactory(email="anna@example.com")
    result = CertResultFactory(user=user, test=CertTestFactory(type=1))
    CertPaymentFactory(result=result, status_id=2, paid_at=RECENT + dt.timedelta(hours=2))
    run = run_live(client_factory, now=now)
    assert run.purchases_found == 1 and run.status == "success"
    # Entry, purchase and first confirmation each marked the day; the run's end recounted.
    assert not ReportRollupDirty.objects.exists()
    entry = FunnelEntry.objects.get()
    rows = list(ReportRollup.objects.values_list("hours", "phase", "entries"))
    phase = 1 if entry.funnel_started_at > entry.certificate_purchased_at else 0
    assert rows == [(2, phase, 1)]
