"""What an operator meets on the admin pages: the ready-for-live refusal, a partial run's
contacts left for later, searching a run's items, a duplicate's entry, an email nobody
has."""

from __future__ import annotations

import pytest
from django.urls import reverse

from funnels.models import Funnel, RuntimeSettings, SyncRun, SyncRunItem
from funnels.selectors.readiness import live_config_problems
from funnels.services.runtime import runtime_settings_get
from funnels.tests.factories import FunnelEntryFactory, SyncRunFactory, SyncRunItemFactory

pytestmark = pytest.mark.django_db(databases=["default", "modx"])


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"


def test_switch_to_live_is_refused_with_the_runs_own_reason(admin_client, settings):
    settings.BREVO_API_KEY = "xkeysib-test-key-0123456789"
    settings.BREVO_LANGUAGE_LIST_ID = 3
    settings.BREVO_NON_LANGUAGE_LIST_ID = None
    Funnel.objects.update(brevo_list_id=None)
    assert live_config_problems() == ["funnel 'non_language' has no Brevo list id"]
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "funnel “non_language” has no Brevo list id" in html
    response = admin_client.post(
        reverse("admin:funnels_dry_run"), {"mode": "live", "confirm": "yes"}, follow=True
    )
    assert runtime_settings_get().dry_run is True
    assert "Not switched to live" in response.content.decode()


def test_the_brevo_factory_refuses_by_the_same_definition(settings):
    from funnels.brevo.factory import BrevoNotConfigured, brevo_client_build

    settings.BREVO_API_KEY = ""
    with pytest.raises(BrevoNotConfigured, match="BREVO_API_KEY is not set"):
        brevo_client_build()


def test_a_partial_run_shows_a_banner_and_every_contact_left_for_later(admin_client):
    run = SyncRunFactory(status=SyncRun.Status.PARTIAL, dry_run=False,
                         error="stopped after 3 consecutive Brevo failures")
    for n in range(3):
        entry = FunnelEntryFactory(email=f"later{n}@example.com")
        SyncRunItemFactory(run=run, action=SyncRunItem.Action.DEFERRED, reason="brevo_stopped",
                           email=entry.email, entry=entry)
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert 'id="funnels-banner-partial"' in index
    html = admin_client.get(
        reverse("admin:funnels_syncrun_change", args=[run.pk]), {"action": "deferred"}
    ).content.decode()
    assert 'id="funnels-run-partial"' in html
    assert "3 contact entries were left for a later run" in html
    for n in range(3):
        assert f"later{n}@example.com" in html
    assert "not tried: sending stopped after repeated Brevo failures" in html
    assert "Sending stopped after 3 Brevo failures in a row" in html


def test_run_items_are_searchable_by_email_and_a_duplicate_links_to_its_entry(admin_client):
    run = SyncRunFactory(dry_run=False)
    entry = FunnelEntryFactory(email="anna@example.com", funnel_type="language")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.ADDED, email="anna@example.com",
                       funnel_type="language", entry=entry)
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, email="anna@example.com",
                       funnel_type="language", reason="duplicate_in_batch")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, email="boris@example.com",
                       reason="invalid_email")
    url = reverse("admin:funnels_syncrun_change", args=[run.pk])
    html = admin_client.get(url, {"q": "ANNA@"}).content.decode()
    assert "boris@example.com" not in html
    assert f"duplicate of #{entry.pk}" in html
    assert reverse("admin:funnels_funnelentry_change", args=[entry.pk]) in html


def test_an_email_nobody_has_is_explained_on_the_entries_list(admin_client):
    html = admin_client.get(
        reverse("admin:funnels_funnelentry_changelist"), {"q": "nobody@example.com"}
    ).content.decode()
    assert 'id="funnels-explanation"' in html
    assert "no test result in MODX for this email" in html


def test_a_dry_run_says_would_add_and_counts_add_up(admin_client):
    run = SyncRunFactory(dry_run=True, results_read=10, entries_added=6, skipped=4,
                         skipped_by_reason={"duplicate_in_batch": 3, "invalid_email": 1,
                                            "payment:not_paid": 5, "payment:no_entry": 2,
                                            "payment:purchase_before_entry": 1})
    listing = admin_client.get(reverse("admin:funnels_syncrun_changelist")).content.decode()
    assert "10 → would add 6 / 4" in listing
    html = admin_client.get(
        reverse("admin:funnels_syncrun_change", args=[run.pk])
    ).content.decode()
    assert "would add 6 (a dry run adds nobody)" in html
    # 4 result skips + 1 itemised payment skip; 7 payments counted only.
    assert "5 = 4 test results + 1 payments (7 payments" in html


def test_the_runtime_row_has_the_pause_permission():
    codenames = [c for c, _ in RuntimeSettings._meta.permissions]
    assert "pause_schedule" in codenames
