"""The admin index: the dashboard, the dry-run switch and its audit, the header and banners."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.db import connections
from django.db.utils import load_backend
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from funnels.models import FunnelEntry, RecheckRow, SyncRun, SyncStatus
from funnels.services.runtime import runtime_settings_get
from funnels.tests.factories import (
    FunnelEntryFactory,
    SyncRunFactory,
    SyncRunItemFactory,
    TestResultFactory,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

INDEX_URL = reverse("admin:index")
TOGGLE_URL = reverse("admin:funnels_dry_run")
ENTRIES_URL = reverse("admin:funnels_funnelentry_changelist")


@pytest.fixture(autouse=True)
def english(settings):
    # Assertions read the English source strings; the Russian catalogue comes later.
    settings.LANGUAGE_CODE = "en"


@pytest.fixture(autouse=True)
def pinned_time(now):
    with time_machine.travel(now, tick=False):
        yield now


@pytest.fixture
def api_key(settings):
    # Ready for live: the key and both funnels' Brevo lists (selectors.readiness).
    settings.BREVO_API_KEY = "xkeysib-test-key-0123456789"
    settings.BREVO_LANGUAGE_LIST_ID = 11
    settings.BREVO_NON_LANGUAGE_LIST_ID = 12
    return settings.BREVO_API_KEY


def staff_client(django_user_model, *, username: str, perms: list[str] = ()) -> Client:
    user = django_user_model.objects.create_user(username, password="pw-for-tests-1",
                                                 is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def element(html: str, element_id: str) -> str:
    """The text inside the element with that id (enough for the small cells we read)."""
    start = html.index(f'id="{element_id}"')
    start = html.index(">", start) + 1
    return html[start:html.index("<", start)].strip()


def mode_badge(html: str) -> str:
    return element(html, "funnels-mode")


# --- The dashboard --------------------------------------------------------------------------


def test_dashboard_shows_the_numbers(admin_client, now):
    FunnelEntryFactory(entered_at=now - dt.timedelta(hours=1))
    FunnelEntryFactory(entered_at=now - dt.timedelta(days=3), sync_status=SyncStatus.FAILED)
    FunnelEntryFactory(entered_at=now - dt.timedelta(days=30), certificate_purchased=True,
                       certificate_purchased_at=now - dt.timedelta(hours=2))
    results = [TestResultFactory(completed_at=now - dt.timedelta(hours=hours))
               for hours in (1, 2, 5)]
    run = SyncRunFactory(started_at=now - dt.timedelta(minutes=10), dry_run=False, skipped=1,
                         entries_added=1)
    # Skips are counted by the result's time, like the MODX count: one of these results.
    SyncRunItemFactory(run=run, action="skipped",
                       reason="invalid_email", source_id=results[1].pk)

    html = admin_client.get(INDEX_URL).content.decode()

    assert element(html, "funnels-entries-today") == "1"
    assert element(html, "funnels-entries-week") == "2"
    assert element(html, "funnels-purchases-today") == "1"
    assert element(html, "funnels-purchases-week") == "1"
    assert element(html, "funnels-sync-pending") == "2"
    assert element(html, "funnels-sync-failed") == "1"
    assert element(html, "funnels-modx-results") == "3"
    assert element(html, "funnels-new-entries") == "1"
    assert element(html, "funnels-skipped") == "1"
    assert element(html, "funnels-unaccounted") == "1"
    assert "MODX unreachable" not in html
    assert "Europe/Moscow" in html
    # The Brevo counts link to the filtered entries list.
    assert f"{ENTRIES_URL}?sync=failed" in html


def test_dashboard_lists_the_last_runs_with_links(admin_client, now):
    ok = SyncRunFactory(started_at=now - dt.timedelta(minutes=15), entries_added=4321)
    bad = SyncRunFactory(started_at=now - dt.timedelta(minutes=5), status=SyncRun.Status.FAILED,
                         finished_at=now - dt.timedelta(minutes=5) + dt.timedelta(seconds=75))
    html = admin_client.get(INDEX_URL).content.decode()
    runs = html[html.index('id="funnels-last-runs"'):]
    assert reverse("admin:funnels_syncrun_change", args=[ok.pk]) in runs
    assert reverse("admin:funnels_syncrun_change", args=[bad.pk]) in runs
    assert runs.index(f"#{bad.pk}<") < runs.index(f"#{ok.pk}<")  # newest first
    assert "4321" in runs and "1 min 15 s" in runs and "funnels-run-failed" in runs


def test_dashboard_renders_when_modx_is_unreachable(admin_client, now):
    FunnelEntryFactory(entered_at=now - dt.timedelta(hours=1))
    original = connections["modx"]
    broken_settings = dict(original.settings_dict)
    if original.vendor == "sqlite":
        broken_settings["NAME"] = "/nonexistent-directory/modx.sqlite3"
    else:
        broken_settings.update(HOST="127.0.0.1", PORT=1)  # nothing listens there
    broken = load_backend(broken_settings["ENGINE"]).DatabaseWrapper(broken_settings, "modx")
    connections["modx"] = broken
    try:
        response = admin_client.get(INDEX_URL)
    finally:
        broken.close()
        connections["modx"] = original
    assert response.status_code == 200
    html = response.content.decode()
    assert element(html, "funnels-modx-unreachable") == "MODX unreachable"
    assert element(html, "funnels-entries-today") == "1"
    assert 'id="funnels-unaccounted"' not in html
    assert "/nonexistent-directory" not in html


def test_index_query_count_does_not_grow_with_data(admin_client, now, django_assert_max_num_queries):
    def index_queries() -> tuple[int, int]:
        with CaptureQueriesContext(connections["modx"]) as modx_queries:
            # 19: two of them for the Brevo block (the last audit, the last proof).
            with django_assert_max_num_queries(19) as default_queries:
                assert admin_client.get(INDEX_URL).status_code == 200
        return len(default_queries.captured_queries), len(modx_queries.captured_queries)

    # One run and one result of the day, so that both measurements take the same path
    # through the health check and the day's skips.
    SyncRunFactory(started_at=now - dt.timedelta(minutes=3))
    TestResultFactory(completed_at=now - dt.timedelta(minutes=30))
    empty = index_queries()
    for n in range(1, 40):
        FunnelEntryFactory(entered_at=now - dt.timedelta(hours=n),
                           sync_status=[SyncStatus.PENDING, SyncStatus.FAILED][n % 2])
        TestResultFactory(completed_at=now - dt.timedelta(hours=n))
        SyncRunFactory(started_at=now - dt.timedelta(minutes=15 * n))
    assert index_queries() == empty
    assert empty[1] == 1


# --- The dry-run switch -----------------------------------------------------------------------


def test_app_pages_do_not_repeat_the_dashboard(admin_client, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        html = admin_client.get(reverse("admin:app_list", args=["funnels"])).content.decode()
    assert 'id="funnels-dashboard"' not in html
    assert 'id="funnels-mode"' in html


def test_index_offers_the_switch_to_those_allowed(admin_client):
    html = admin_client.get(INDEX_URL).content.decode()
    assert f'action="{TOGGLE_URL}"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'id="funnels-toggle-button"' in html


def test_switching_to_live_and_back_is_recorded_and_shown(admin_client, admin_user, api_key, now):
    assert mode_badge(admin_client.get(INDEX_URL).content.decode()) == "DRY RUN"

    response = admin_client.post(TOGGLE_URL, {"mode": "live", "confirm": "yes"})
    assert response.status_code == 302 and response["Location"] == INDEX_URL
    assert runtime_settings_get().dry_run is False
    html = admin_client.get(INDEX_URL).content.decode()
    assert mode_badge(html) == "LIVE"
    assert "Last changed by <strong>admin</strong>" in html
    assert "mode: DRY RUN → LIVE" in html
    # The header follows on every page, not only the index.
    assert mode_badge(admin_client.get(ENTRIES_URL).content.decode()) == "LIVE"

    admin_client.post(TOGGLE_URL, {"mode": "dry"})
    assert runtime_settings_get().dry_run is True
    changes = list(LogEntry.objects.order_by("id"))
    assert [c.get_change_message() for c in changes] == [
        "mode: DRY RUN -> LIVE", "mode: LIVE -> DRY RUN"
    ]
    assert {c.user_id for c in changes} == {admin_user.pk}
    assert all(c.action_time == now for c in changes)
    assert mode_badge(admin_client.get(ENTRIES_URL).content.decode()) == "DRY RUN"


def test_asking_for_the_current_mode_changes_nothing(admin_client):
    admin_client.post(TOGGLE_URL, {"mode": "dry"})
    assert LogEntry.objects.count() == 0


def test_going_live_needs_the_confirmation_tick(admin_client, api_key):
    response = admin_client.post(TOGGLE_URL, {"mode": "live"}, follow=True)
    assert runtime_settings_get().dry_run is True
    assert "tick the confirmation" in response.content.decode()


def test_going_live_is_refused_without_an_api_key(admin_client, settings):
    settings.BREVO_API_KEY = ""
    html = admin_client.get(INDEX_URL).content.decode()
    assert 'id="funnels-live-blockers"' in html and "BREVO_API_KEY" in html
    response = admin_client.post(TOGGLE_URL, {"mode": "live", "confirm": "yes"}, follow=True)
    assert runtime_settings_get().dry_run is True
    assert "Not switched to live" in response.content.decode()
    assert LogEntry.objects.count() == 0


def test_an_unknown_mode_is_a_bad_request(admin_client):
    assert admin_client.post(TOGGLE_URL, {"mode": "maybe"}).status_code == 400
    assert runtime_settings_get().dry_run is True


def test_the_switch_is_post_only(admin_client):
    assert admin_client.get(TOGGLE_URL, {"mode": "live", "confirm": "yes"}).status_code == 405
    assert runtime_settings_get().dry_run is True


def test_staff_without_the_permission_get_403_and_no_button(django_user_model, api_key):
    client = staff_client(django_user_model, username="viewer",
                          perms=["funnels.view_funnelentry"])
    html = client.get(INDEX_URL).content.decode()
    assert 'id="funnels-toggle-button"' not in html
    assert 'id="funnels-toggle-denied"' in html
    assert mode_badge(html) == "DRY RUN"
    response = client.post(TOGGLE_URL, {"mode": "live", "confirm": "yes"})
    assert response.status_code == 403
    assert runtime_settings_get().dry_run is True
    assert LogEntry.objects.count() == 0


def test_staff_with_the_permission_may_switch(django_user_model, api_key):
    client = staff_client(django_user_model, username="operator",
                          perms=["funnels.change_dry_run"])
    assert 'id="funnels-toggle-button"' in client.get(INDEX_URL).content.decode()
    client.post(TOGGLE_URL, {"mode": "live", "confirm": "yes"})
    assert runtime_settings_get().dry_run is False
    assert LogEntry.objects.get().user.username == "operator"


def test_anonymous_and_non_staff_cannot_switch(client, django_user_model, api_key):
    response = client.post(TOGGLE_URL, {"mode": "live", "confirm": "yes"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    customer = django_user_model.objects.create_user("customer", password="pw-for-tests-1")
    client.force_login(customer)
    client.post(TOGGLE_URL, {"mode": "live", "confirm": "yes"})
    assert runtime_settings_get().dry_run is True


def test_the_switch_needs_a_csrf_token(admin_user, api_key):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(TOGGLE_URL, {"mode": "live", "confirm": "yes"})
    assert response.status_code == 403
    assert runtime_settings_get().dry_run is True


# --- Banners --------------------------------------------------------------------------------


def banners(client) -> set[str]:
    html = client.get(ENTRIES_URL).content.decode()
    return {name for name in ("funnels-banner-failed", "funnels-banner-stale")
            if f'id="{name}"' in html}


def test_no_run_yet_shows_the_stale_banner(admin_client):
    assert banners(admin_client) == {"funnels-banner-stale"}
    assert "No run has completed yet." in admin_client.get(INDEX_URL).content.decode()


def test_a_recent_success_shows_no_banner(admin_client, now):
    SyncRunFactory(started_at=now - dt.timedelta(minutes=12))
    assert banners(admin_client) == set()


def test_a_success_older_than_twice_the_schedule_warns(admin_client, now, settings):
    settings.FUNNELS_SCHEDULE_MINUTES = 15
    SyncRunFactory(started_at=now - dt.timedelta(minutes=40))
    assert banners(admin_client) == {"funnels-banner-stale"}
    html = admin_client.get(ENTRIES_URL).content.decode()
    assert "scheduled every 15 minutes" in html
    settings.FUNNELS_SCHEDULE_MINUTES = 30  # 40 minutes is within twice 30
    assert banners(admin_client) == set()


@pytest.mark.parametrize("status", [SyncRun.Status.FAILED, SyncRun.Status.CRASHED])
def test_a_failed_or_crashed_last_run_shows_the_error_banner(admin_client, now, status):
    SyncRunFactory(started_at=now - dt.timedelta(minutes=20))
    bad = SyncRunFactory(started_at=now - dt.timedelta(minutes=5), status=status)
    assert banners(admin_client) == {"funnels-banner-failed"}
    html = admin_client.get(reverse("admin:funnels_funnel_changelist")).content.decode()
    assert reverse("admin:funnels_syncrun_change", args=[bad.pk]) in html
    assert str(SyncRun.Status(status).label) in html


def test_banners_are_not_shown_on_the_login_page(client):
    SyncRunFactory(status=SyncRun.Status.FAILED)
    html = client.get(reverse("admin:login")).content.decode()
    assert 'id="funnels-banner-failed"' not in html
    assert 'id="funnels-banner-stale"' not in html


# --- The flood guard's held contacts and the recheck lists -----------------------------------

RELEASE_URL = reverse("admin:funnels_release_held")


@pytest.fixture
def held_run(now, settings):
    settings.FUNNELS_MAX_NEW_CONTACTS_PER_RUN = 2
    run = SyncRunFactory(status=SyncRun.Status.HELD, contacts_held=3,
                         started_at=now - dt.timedelta(minutes=2))
    for n, funnel in enumerate(["language", "language", "non_language"]):
        FunnelEntryFactory(email=f"held{n}@example.com", funnel_type=funnel,
                           sync_status=SyncStatus.HELD, run=run)
    return run


def test_held_contacts_show_with_their_run_and_the_limit(admin_client, held_run):
    html = admin_client.get(INDEX_URL).content.decode()
    summary = element(html, "funnels-held-summary")
    assert "3 new contacts (3 entries) are recorded but not sent" in summary
    assert "limit of 2 per run" in summary
    assert f"/admin/funnels/syncrun/{held_run.pk}/change/" in html
    assert 'id="funnels-release-button"' in html


def test_release_needs_its_permission(django_user_model, held_run):
    viewer = staff_client(django_user_model, username="viewer",
                          perms=["funnels.view_funnelentry"])
    html = viewer.get(INDEX_URL).content.decode()
    assert 'id="funnels-release-button"' not in html
    assert 'id="funnels-release-denied"' in html
    assert viewer.post(RELEASE_URL, {"confirm": "yes"}).status_code == 403
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.HELD).count() == 3


def test_release_asks_for_the_tick_then_releases_and_is_audited(django_user_model, held_run):
    operator = staff_client(django_user_model, username="operator",
                            perms=["funnels.release_held"])
    operator.post(RELEASE_URL, {})
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.HELD).count() == 3
    response = operator.post(RELEASE_URL, {"confirm": "yes"}, follow=True)
    assert "Released 3 entries: the next run sends them to Brevo." in response.content.decode()
    assert not FunnelEntry.objects.filter(sync_status=SyncStatus.HELD).exists()
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING).count() == 3
    log = LogEntry.objects.get(user__username="operator")
    assert log.change_message == "released 3 entries held by the flood guard"
    # Nothing held any more: the block is gone.
    assert 'id="funnels-held-module"' not in operator.get(INDEX_URL).content.decode()


def test_release_is_a_post(admin_client, held_run):
    assert admin_client.get(RELEASE_URL).status_code == 405


def test_waiting_rows_are_counted_by_source_and_reason(admin_client, now):
    for n, (source, reason) in enumerate([
        ("test_results", "no_completion_time"), ("test_results", "no_completion_time"),
        ("test_results", "invalid_email"), ("payments", "payment_result_missing"),
    ]):
        RecheckRow.objects.create(source=source, modx_id=n + 1, reason=reason, fingerprint="f",
                                  first_seen_at=now, recheck_until=now + dt.timedelta(days=30))
    html = admin_client.get(INDEX_URL).content.decode()
    start = html.index('id="funnels-waiting-module"')
    module = html[start:html.index("</div>", start)]
    assert "4 MODX rows could not be decided yet" in module
    assert ("<td>Test results</td><td>the test has no completion time yet</td>"
            "<td class=\"num\">2</td>") in module
    assert ("<td>Payments</td><td>the payment&#x27;s test result is not in MODX</td>"
            "<td class=\"num\">1</td>") in module


def test_held_and_waiting_blocks_cost_a_fixed_number_of_queries(
    admin_client, held_run, now, django_assert_max_num_queries
):
    def count():
        with CaptureQueriesContext(connections["default"]) as queries:
            assert admin_client.get(INDEX_URL).status_code == 200
        return len(queries)

    few = count()
    for n in range(30):
        FunnelEntryFactory(sync_status=SyncStatus.HELD, run=held_run)
        RecheckRow.objects.create(source="test_results", modx_id=100 + n, reason="x",
                                  fingerprint="f", first_seen_at=now,
                                  recheck_until=now + dt.timedelta(days=1))
    assert count() == few
