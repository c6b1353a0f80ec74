"""The admin's use of the Brevo audit: the state filter, the repair action (its own
permission, audited, opt-outs left alone) and the audits' pages."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from funnels.models import BrevoAudit, BrevoState, FunnelEntry, SyncStatus
from funnels.tests.factories import FunnelEntryFactory
from funnels.tests.test_admin import emails_on, logged_in, staff_user

pytestmark = pytest.mark.django_db

ENTRIES_URL = reverse("admin:funnels_funnelentry_changelist")
T = dt.datetime(2026, 11, 20, 3, 7, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"


@pytest.fixture
def people(db):
    def make(email, state, **kwargs):
        return FunnelEntryFactory(email=email, sync_status=SyncStatus.SYNCED, synced_revision=1,
                                  brevo_state=state, brevo_seen_at=T, **kwargs)

    return {
        "in": make("in@example.com", BrevoState.IN_LIST),
        "gone": make("gone@example.com", BrevoState.MISSING),
        "unsub": make("unsub@example.com", BrevoState.UNSUBSCRIBED),
        "black": make("black@example.com", BrevoState.BLACKLISTED),
        # Blacklisted in one funnel, missing in the other: the opt-out wins.
        "black_gone": make("black@example.com", BrevoState.MISSING, funnel_type="non_language"),
        "new": FunnelEntryFactory(email="new@example.com"),
    }


@pytest.mark.parametrize(("value", "expected"), [
    ("in_list", {"in@example.com"}),
    ("missing", {"gone@example.com", "black@example.com"}),
    ("unsubscribed_from_list", {"unsub@example.com"}),
    ("blacklisted", {"black@example.com"}),
    ("drift", {"gone@example.com", "black@example.com"}),
    ("none", {"new@example.com"}),
])
def test_entries_filter_by_brevo_state(admin_client, people, value, expected):
    assert emails_on(admin_client.get(ENTRIES_URL, {"brevo": value})) == expected


def test_the_repair_action_needs_its_own_permission(django_user_model, people):
    viewer = staff_user(django_user_model, username="viewer",
                        perms=["funnels.view_funnelentry", "funnels.change_funnelentry"])
    repairer = staff_user(django_user_model, username="repairer",
                          perms=["funnels.view_funnelentry", "funnels.restore_missing"])
    assert "restore_missing_in_brevo" not in logged_in(viewer).get(ENTRIES_URL).content.decode()
    assert "restore_missing_in_brevo" in logged_in(repairer).get(ENTRIES_URL).content.decode()

    refused = logged_in(viewer).post(ENTRIES_URL, {
        "action": "restore_missing_in_brevo",
        "_selected_action": [e.pk for e in people.values()],
    })
    assert refused.status_code in (200, 302, 403)
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING).count() == 1  # "new"


def test_the_repair_action_requeues_the_missing_and_leaves_opt_outs(django_user_model, people):
    repairer = staff_user(django_user_model, username="repairer",
                          perms=["funnels.view_funnelentry", "funnels.restore_missing"])
    response = logged_in(repairer).post(ENTRIES_URL, {
        "action": "restore_missing_in_brevo",
        "_selected_action": [e.pk for e in people.values()],
    }, follow=True)

    text = response.content.decode()
    assert "1 entry will be put back in its Brevo list by the next run." in text
    assert "1 entry left alone: the person unsubscribed or is blacklisted." in text
    requeued = FunnelEntry.objects.get(pk=people["gone"].pk)
    assert (requeued.sync_status, requeued.brevo_state) == (SyncStatus.PENDING, "")
    for key in ("in", "unsub", "black", "black_gone"):
        entry = FunnelEntry.objects.get(pk=people[key].pk)
        assert entry.sync_status == SyncStatus.SYNCED, key
    (log,) = LogEntry.objects.filter(user=repairer)
    assert log.object_id == str(people["gone"].pk)


def test_the_audit_pages(admin_client):
    audit = BrevoAudit.objects.create(
        started_at=T, finished_at=T, status="success", kind="full", contacts_read=3,
        strangers=1, strangers_sample=[{"funnel": "language", "email": "odd@example.com"}],
        lists={"language": {"list_id": 1, "kind": "full", "contacts": 3, "error": ""}},
    )
    listing = admin_client.get(reverse("admin:funnels_brevoaudit_changelist"))
    page = admin_client.get(reverse("admin:funnels_brevoaudit_change", args=[audit.pk]))
    assert listing.status_code == page.status_code == 200
    html = page.content.decode()
    assert "odd@example.com (language)" in html
    assert "language: list 1, Full, 3 contacts read" in html


@pytest.mark.django_db(databases=["default", "modx"])
def test_the_dashboard_shows_the_drift(admin_client, people):
    BrevoAudit.objects.create(started_at=T, finished_at=T, status="success", kind="full")
    html = admin_client.get(reverse("admin:index")).content.decode()
    block = html[html.index('id="funnels-brevo"'):]
    assert '?brevo=drift&amp;funnel=language' in block
    assert 'data-funnel="language">1<' in block
    assert 'data-funnel="non_language">1<' in block


@pytest.mark.django_db(databases=["default", "modx"])
def test_the_dashboard_and_pages_show_the_proof(admin_client):
    from funnels.models import ProofCheck, ProofDifference

    proof = ProofCheck.objects.create(
        started_at=T, finished_at=T, status="success", window_from=T - dt.timedelta(days=30),
        window_to=T, counts={kind: 0 for kind in ProofDifference.Kind.values} | {
            "should_be_in": 1},
    )
    ProofDifference.objects.create(proof=proof, kind="should_be_in", email="lost@example.com",
                                   funnel_type="language", explanation="not in it: why")
    html = admin_client.get(reverse("admin:index")).content.decode()
    block = html[html.index('id="funnels-proof"'):]
    assert 'data-kind="should_be_in">1<' in block
    assert 'data-kind="buyer_not_marked">0<' in block
    listing = admin_client.get(reverse("admin:funnels_proofdifference_changelist"),
                               {"proof__id__exact": proof.pk, "kind__exact": "should_be_in"})
    assert "lost@example.com" in listing.content.decode()
    page = admin_client.get(reverse("admin:funnels_proofcheck_change", args=[proof.pk]))
    assert "Should be in the funnel, is not</a>: 1" in page.content.decode()
