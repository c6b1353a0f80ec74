"""Brevo misbehaves; the job survives and loses nothing (real HTTP to the fake on loopback)."""

import datetime as dt

import pytest

from funnels.models import FunnelEntry, SyncRun
from funnels.tests.sync_support import (
    API_KEY,
    LANG_TEST,
    LANGUAGE_LIST,
    modx_result,
    run_live,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

EMAILS = [f"person{n}@example.com" for n in range(4)]
UPSERT, IMPORT = 50, 2  # BREVO_IMPORT_THRESHOLD for 4 contacts of one list


@pytest.fixture
def takers(configured):
    for email in EMAILS:
        modx_result(email, LANG_TEST)


def _delivered(fake) -> None:
    assert fake.list_members(LANGUAGE_LIST) == set(EMAILS)
    assert FunnelEntry.objects.count() == len(EMAILS)
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"synced"}
    for email in EMAILS:
        assert fake.contact(email)["attributes"]["FUNNEL_TYPE"] == "language"
    fake.assert_never_sent("emailBlacklisted")


@pytest.mark.parametrize("threshold", [UPSERT, IMPORT], ids=["upsert", "import"])
@pytest.mark.parametrize(
    "kind, options",
    [
        ("429", {"count": 2, "reset": 3}),
        ("500", {"count": 3}),
        ("503", {"count": 2}),
        ("524", {"count": 2}),
        ("drop_before", {"count": 2}),
        ("drop_after", {"count": 2}),
    ],
)
def test_transient_faults_are_retried_within_the_run(
    takers, live_settings, client_factory, fake_brevo, now, kind, options, threshold
):
    live_settings.BREVO_IMPORT_THRESHOLD = threshold
    fake_brevo.faults.add(kind, method="POST", **options)
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.SUCCESS, run.error
    assert fake_brevo.requests_log[0].fault == kind
    _delivered(fake_brevo)


def test_429_waits_for_the_reset_header(
    takers, live_settings, client_factory, fake_brevo, sleeps, now
):
    fake_brevo.faults.add("429", count=1, reset=7)
    run_live(client_factory, now=now)
    assert 7.0 in sleeps.calls
    _delivered(fake_brevo)


@pytest.mark.parametrize("threshold", [UPSERT, IMPORT], ids=["upsert", "import"])
def test_a_timeout_is_retried_and_the_repeat_is_harmless(
    takers, live_settings, client_factory, fake_brevo, now, threshold
):
    live_settings.BREVO_IMPORT_THRESHOLD = threshold
    # The fake applies the change after the client gave up, like a slow real server.
    fake_brevo.faults.add("slow", count=1, seconds=0.6, method="POST")
    run = run_live(lambda: client_factory(read_timeout=0.2), now=now)
    assert run.status == SyncRun.Status.SUCCESS, run.error
    _delivered(fake_brevo)
    assert len(fake_brevo.contacts) == len(EMAILS)


def test_a_poll_of_the_import_process_failing_is_retried(
    takers, live_settings, client_factory, fake_brevo, now
):
    live_settings.BREVO_IMPORT_THRESHOLD = IMPORT
    fake_brevo.faults.add("500", count=2, path_prefix="/processes")
    assert run_live(client_factory, now=now).status == SyncRun.Status.SUCCESS
    _delivered(fake_brevo)


@pytest.mark.parametrize("threshold", [UPSERT, IMPORT], ids=["upsert", "import"])
def test_a_streak_longer_than_the_retries_is_picked_up_by_a_later_run(
    takers, live_settings, client_factory, fake_brevo, now, threshold
):
    live_settings.BREVO_IMPORT_THRESHOLD = threshold
    fake_brevo.faults.add("503", count=None)
    first = run_live(client_factory, now=now)
    assert first.status == SyncRun.Status.PARTIAL
    assert fake_brevo.list_members(LANGUAGE_LIST) == set()
    assert not FunnelEntry.objects.filter(sync_status="synced").exists()
    fake_brevo.faults.clear()
    # Transient failures wait for their backoff (5 min); the import's stay pending.
    later = run_live(client_factory, now=now + dt.timedelta(minutes=5))
    assert later.status == SyncRun.Status.SUCCESS, later.error
    _delivered(fake_brevo)


def test_a_failed_import_process_is_imported_again_next_run(
    takers, live_settings, client_factory, fake_brevo, now
):
    live_settings.BREVO_IMPORT_THRESHOLD = IMPORT
    fake_brevo.faults.add("import_failed")
    assert run_live(client_factory, now=now).status == SyncRun.Status.PARTIAL
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"pending"}
    assert run_live(client_factory, now=now).status == SyncRun.Status.SUCCESS
    _delivered(fake_brevo)


def test_400_for_one_contact_fails_only_that_contact(
    takers, live_settings, client_factory, fake_brevo, now
):
    fake_brevo.faults.add("400", email=EMAILS[1], count=None)
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.PARTIAL
    refused = FunnelEntry.objects.get(email=EMAILS[1])
    assert refused.sync_status == "failed" and refused.sync_next_attempt_at is None
    assert "invalid_parameter" in refused.sync_last_error
    assert fake_brevo.list_members(LANGUAGE_LIST) == set(EMAILS) - {EMAILS[1]}


def test_401_stops_the_run_and_nothing_is_lost(
    takers, live_settings, client_factory, fake_brevo, now
):
    fake_brevo.faults.add("401", count=None)
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.FAILED
    assert run.brevo_requests == 1  # stopped at the first answer
    assert API_KEY not in run.error
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"pending"}
    fake_brevo.faults.clear()
    assert run_live(client_factory, now=now).status == SyncRun.Status.SUCCESS
    _delivered(fake_brevo)
