import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from funnels.models import ControlPeriod, Funnel
from funnels.tests.test_admin import funnel_form

pytestmark = pytest.mark.django_db

PERMISSION = "change_control_share"


def _staff(django_user_model, *, username: str, perms: list[str]):
    user = django_user_model.objects.create_user(username, password="pw-for-tests-1",
                                                 is_staff=True)
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="funnels", codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def test_the_share_is_set_in_the_admin_with_its_permission_and_audited(django_user_model):
    client = _staff(django_user_model, username="lead",
                    perms=["view_funnel", "change_funnel", PERMISSION])
    funnel = Funnel.objects.get(slug="language")
    url = reverse("admin:funnels_funnel_change", args=[funnel.pk])
    assert 'name="control_share"' in client.get(url).content.decode()
    response = client.post(url, funnel_form(funnel, control_share="10"))
    assert response.status_code == 302
    funnel.refresh_from_db()
    assert (funnel.control_share, funnel.control_period) == (10, 1)
    period = ControlPeriod.objects.get(funnel=funnel)
    assert (period.number, period.share, period.started_by.username) == (1, 10, "lead")
    messages = LogEntry.objects.filter(object_id=str(funnel.pk)).values_list(
        "change_message", flat=True)
    assert "control group: 0% -> 10% (period 1)" in messages
    # Saving the form again without a change starts no period.
    client.post(url, funnel_form(funnel, control_share="10", name="Renamed"))
    funnel.refresh_from_db()
    assert (funnel.name, funnel.control_period) == ("Renamed", 1)


@pytest.mark.parametrize("share", ["51", "-1", "abc"])
def test_a_share_out_of_range_is_refused(admin_client, share):
    funnel = Funnel.objects.get(slug="language")
    response = admin_client.post(
        reverse("admin:funnels_funnel_change", args=[funnel.pk]),
        funnel_form(funnel, control_share=share),
    )
    assert response.status_code == 200
    assert "control_share" in response.context["adminform"].form.errors
    funnel.refresh_from_db()
    assert (funnel.control_share, funnel.control_period) == (0, 0)


def test_without_the_permission_the_share_cannot_change(django_user_model):
    client = _staff(django_user_model, username="editor",
                    perms=["view_funnel", "change_funnel"])
    funnel = Funnel.objects.get(slug="language")
    url = reverse("admin:funnels_funnel_change", args=[funnel.pk])
    assert 'name="control_share"' not in client.get(url).content.decode()
    response = client.post(url, funnel_form(funnel, control_share="30", name="Edited"))
    assert response.status_code == 302
    funnel.refresh_from_db()
    assert funnel.name == "Edited"  # the rest of the form saves
    assert (funnel.control_share, funnel.control_period) == (0, 0)
    assert not ControlPeriod.objects.exists()


def test_the_funnel_list_shows_the_share(admin_client):
    funnel = Funnel.objects.get(slug="language")
    admin_client.post(reverse("admin:funnels_funnel_change", args=[funnel.pk]),
                      funnel_form(funnel, control_share="25"))
    page = admin_client.get(reverse("admin:funnels_funnel_changelist"),
                            HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "25% (period 1)" in page


def test_an_entry_page_shows_its_group_period_and_start(admin_client):
    import datetime as dt

    from funnels.models import ExperimentGroup, SyncStatus
    from funnels.tests.factories import FunnelEntryFactory

    started = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)
    entry = FunnelEntryFactory(experiment_group=ExperimentGroup.CONTROL, control_period=3,
                               sync_status=SyncStatus.CONTROL, funnel_started_at=started)
    html = admin_client.get(reverse("admin:funnels_funnelentry_change", args=[entry.pk]),
                            HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Control group" in html and "Not sent (control group)" in html
    assert ">3<" in html


def test_a_new_funnel_added_with_a_share_starts_period_1(admin_client):
    response = admin_client.post(reverse("admin:funnels_funnel_add"), {
        "name": "Spring promo", "slug": "spring", "active": "on", "brevo_list_id": "7",
        "test_kind": "any", "test_ids": "", "reentry": "once", "certificate_type": "2",
        "control_share": "20", "attribute_funnel_type": "FUNNEL_TYPE",
        "attribute_purchased": "CERTIFICATE_PURCHASED",
        "attribute_purchased_at": "CERTIFICATE_PURCHASED_AT",
    })
    assert response.status_code == 302
    spring = Funnel.objects.get(slug="spring")
    assert (spring.control_share, spring.control_period) == (20, 1)
    assert list(spring.control_periods.values_list("number", "share")) == [(1, 20)]
