import datetime as dt
import json
import random

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import translation

from funnels.models import (
    ControlPeriod,
    ExperimentGroup,
    Funnel,
    FunnelEntry,
    SyncRunItem,
    SyncStatus,
)
from funnels.selectors.explain import funnel_explain
from funnels.services.control_groups import (
    control_group_of,
    control_position,
    funnel_control_share_set,
)
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
)
from funnels.tests.sync_support import (
    LANG_TEST,
    LANG_TEST_2,
    OTHER_LIST,
    OTHER_TEST,
    RECENT,
    modx_result,
    run_live,
)

SECRET = b"a fixed secret for the tests"


@pytest.fixture
def fixed_secret(settings):
    settings.FUNNELS_CONTROL_SECRET = SECRET.decode()


def _people(n: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(48):012x}.{i}@example.com" for i in range(n)]


# --- the hash ------------------------------------------------------------------------


def test_the_position_is_a_stable_keyed_uniform_number():
    first = control_position(funnel_slug="language", email="anna@example.com", secret=SECRET)
    assert 0 <= first < 1
    assert first == control_position(
        funnel_slug="language", email="anna@example.com", secret=SECRET
    )
    # Another key or another funnel draws another number: not predictable without the key.
    assert first != control_position(
        funnel_slug="language", email="anna@example.com", secret=b"other"
    )
    assert first != control_position(
        funnel_slug="non_language", email="anna@example.com", secret=SECRET
    )


def test_share_zero_puts_everyone_in_treatment_and_fifty_about_half():
    people = _people(1000, seed=1)
    assert {
        control_group_of(funnel_slug="language", email=e, share=0, secret=SECRET)
        for e in people
    } == {ExperimentGroup.TREATMENT}
    control = sum(
        control_group_of(funnel_slug="language", email=e, share=50, secret=SECRET)
        == ExperimentGroup.CONTROL for e in people
    )
    assert 400 < control < 600


def test_the_share_is_honoured_on_ten_thousand_people():
    """Seeded people and a fixed key: deterministic. The tolerance is 4 standard
    deviations of a binomial (n=10,000, p=0.2: sd 40), which a correct hash passes and a
    biased one (say comparing with the share as a fraction of 255) fails."""
    people = _people(10_000, seed=12)
    control = sum(
        control_group_of(funnel_slug="language", email=e, share=20, secret=SECRET)
        == ExperimentGroup.CONTROL for e in people
    )
    assert abs(control - 2000) <= 160, control
    # Raising the share only adds people to control.
    at_ten = {e for e in people if control_group_of(
        funnel_slug="language", email=e, share=10, secret=SECRET) == ExperimentGroup.CONTROL}
    at_twenty = {e for e in people if control_group_of(
        funnel_slug="language", email=e, share=20, secret=SECRET) == ExperimentGroup.CONTROL}
    assert at_ten < at_twenty


# --- the share and its periods -------------------------------------------------------


@pytest.mark.django_db
def test_changing_the_share_starts_a_period_and_is_audited(now):
    user = get_user_model().objects.create_user("ops", password="x", is_staff=True)
    funnel = Funnel.objects.get(slug="language")
    funnel_control_share_set(funnel=funnel, user=user, share=10, now=now)
    funnel_control_share_set(funnel=funnel, user=user, share=10, now=now)  # no change
    funnel_control_share_set(funnel=funnel, user=user, share=0, now=now)
    funnel.refresh_from_db()
    assert (funnel.control_share, funnel.control_period) == (0, 2)
    assert list(
        ControlPeriod.objects.filter(funnel=funnel).values_list("number", "share")
    ) == [(1, 10), (2, 0)]
    messages = list(
        LogEntry.objects.filter(object_id=str(funnel.pk)).order_by("id")
        .values_list("change_message", flat=True)
    )
    assert messages == ["control group: 0% -> 10% (period 1)",
                        "control group: 10% -> 0% (period 2)"]
    with pytest.raises(ValidationError):
        funnel_control_share_set(funnel=funnel, user=user, share=51, now=now)
    funnel.refresh_from_db()
    assert funnel.control_share == 0


# --- a run with a control group ------------------------------------------------------

pytestmark_db = pytest.mark.django_db(databases=["default", "modx"])


def _control_on(share: int, *, now, reentry: str = Funnel.Reentry.ONCE) -> Funnel:
    funnel = Funnel.objects.get(slug="language")
    funnel.reentry = reentry
    funnel.save(update_fields=["reentry"])
    funnel_control_share_set(funnel=funnel, user=None, share=share, now=now)
    funnel.refresh_from_db()
    return funnel


def _sent_emails(fake_brevo) -> set[str]:
    """Every address any request to the fake Brevo carried, anywhere in its body."""
    text = json.dumps([entry.body for entry in fake_brevo.requests_log])
    return {word.strip('"') for word in text.split() if "@" in word}


@pytestmark_db
def test_control_people_are_recorded_never_sent_and_their_purchases_tracked(
    configured, live_settings, client_factory, fake_brevo, fixed_secret, now
):
    _control_on(50, now=now)
    people = _people(40, seed=3)
    for email in people:
        modx_result(email, LANG_TEST, completed_at=RECENT)
    expected_control = {
        e for e in people
        if control_group_of(funnel_slug="language", email=e, share=50, secret=SECRET)
        == ExperimentGroup.CONTROL
    }
    assert 5 < len(expected_control) < 35
    buyer = sorted(expected_control)[0]
    user = CertUserFactory(email=buyer)
    CertPaymentFactory(
        result=CertResultFactory(user=user, test=CertTestFactory(type=1)), status_id=2,
        paid_at=RECENT + dt.timedelta(hours=3),
    )
    run = run_live(client_factory, now=now)
    assert run.entries_added == 40

    control = FunnelEntry.objects.filter(experiment_group=ExperimentGroup.CONTROL)
    assert set(control.values_list("email", flat=True)) == expected_control
    assert set(control.values_list("sync_status", flat=True)) == {SyncStatus.CONTROL}
    assert set(control.values_list("control_period", flat=True)) == {1}
    # The held-out funnel starts when the run assigned them.
    assert set(control.values_list("funnel_started_at", flat=True)) == {now}
    bought = FunnelEntry.objects.get(email=buyer)
    assert bought.certificate_purchased and bought.sync_status == SyncStatus.CONTROL

    sent = {e for e in people if fake_brevo.contact(e) is not None}
    assert sent == set(people) - expected_control
    assert not (expected_control & _sent_emails(fake_brevo))

    # A later run (the purchase already marked) sends nothing about them either.
    run_live(client_factory, now=now + dt.timedelta(minutes=15))
    assert not (expected_control & _sent_emails(fake_brevo))
    assert FunnelEntry.objects.get(email=buyer).sync_status == SyncStatus.CONTROL


@pytestmark_db
def test_the_same_person_is_in_the_same_group_on_every_test_and_after_re_entry(
    configured, live_settings, client_factory, fake_brevo, fixed_secret, now
):
    _control_on(50, now=now, reentry=Funnel.Reentry.PER_TEST)
    people = _people(30, seed=5)
    for email in people:
        modx_result(email, LANG_TEST, completed_at=RECENT)
    run_live(client_factory, now=now)
    for email in people:
        modx_result(email, LANG_TEST_2, completed_at=RECENT + dt.timedelta(hours=1))
    run_live(client_factory, now=now + dt.timedelta(hours=2))
    groups: dict[str, set[str]] = {}
    for email, group in FunnelEntry.objects.values_list("email", "experiment_group"):
        groups.setdefault(email, set()).add(group)
    assert FunnelEntry.objects.count() == 60
    assert all(len(g) == 1 for g in groups.values())
    assert {next(iter(g)) for g in groups.values()} == {
        ExperimentGroup.CONTROL, ExperimentGroup.TREATMENT
    }


@pytestmark_db
def test_the_funnel_starts_at_brevo_s_first_confirmation_only(
    configured, live_settings, client_factory, fake_brevo, now
):
    modx_result("anna@example.com", LANG_TEST, completed_at=RECENT)
    run_live(client_factory, now=now)
    entry = FunnelEntry.objects.get(email="anna@example.com")
    assert entry.experiment_group == ExperimentGroup.TREATMENT
    assert entry.funnel_started_at is not None
    assert entry.funnel_started_at == entry.synced_at
    first = entry.funnel_started_at
    # A purchase sends the contact again: synced_at moves, the start does not.
    user = CertUserFactory(email="anna@example.com")
    CertPaymentFactory(
        result=CertResultFactory(user=user, test=CertTestFactory(type=1)), status_id=2,
        paid_at=RECENT + dt.timedelta(hours=5),
    )
    run_live(client_factory, now=now + dt.timedelta(hours=1))
    entry.refresh_from_db()
    assert entry.certificate_purchased and entry.synced_revision == 2
    assert entry.funnel_started_at == first
    assert entry.synced_at >= first


@pytestmark_db
def test_a_held_back_run_never_turns_control_into_held(
    configured, live_settings, client_factory, fake_brevo, fixed_secret, now
):
    live_settings.FUNNELS_MAX_NEW_CONTACTS_PER_RUN = 5
    _control_on(50, now=now)
    people = _people(20, seed=8)
    for email in people:
        modx_result(email, LANG_TEST, completed_at=RECENT)
    run = run_live(client_factory, now=now)
    control = FunnelEntry.objects.filter(experiment_group=ExperimentGroup.CONTROL)
    assert control.exists()
    assert set(control.values_list("sync_status", flat=True)) == {SyncStatus.CONTROL}
    # Only the treated are new Brevo contacts for the flood guard.
    assert run.contacts_held == 20 - control.count()


@pytestmark_db
def test_the_dry_run_plan_and_explain_funnel_say_the_group(
    configured, live_settings, client_factory, fake_brevo, fixed_secret, now
):
    _control_on(50, now=now)
    people = _people(10, seed=9)
    for email in people:
        modx_result(email, LANG_TEST, completed_at=RECENT)
    run = run_live(client_factory, now=now, dry_run=True)
    details = {
        item.email: item.detail
        for item in SyncRunItem.objects.filter(run=run, action=SyncRunItem.Action.WOULD_ADD,
                                               funnel_type="language")
    }
    for email in people:
        group = control_group_of(funnel_slug="language", email=email, share=50, secret=SECRET)
        assert f"group: {group} (control period 1, 50% control)" in details[email]
    email = people[0]
    group = control_group_of(funnel_slug="language", email=email, share=50, secret=SECRET)
    with translation.override("en"):
        lines = next(v.lines for v in funnel_explain(raw_email=email).verdicts
                     if v.funnel.slug == "language")
    wanted = "control group" if group == ExperimentGroup.CONTROL else "treatment group"
    assert any(wanted in line and "control period 1" in line for line in lines)


@pytestmark_db
def test_a_control_entry_does_not_shape_the_person_s_contact_in_another_funnel(
    configured, live_settings, client_factory, fake_brevo, fixed_secret, now
):
    _control_on(50, now=now)
    email = next(
        e for e in _people(50, seed=11)
        if control_group_of(funnel_slug="language", email=e, share=50, secret=SECRET)
        == ExperimentGroup.CONTROL
    )
    modx_result(email, OTHER_TEST, completed_at=RECENT)
    # The later entry, in the language funnel, is held out.
    modx_result(email, LANG_TEST, completed_at=RECENT + dt.timedelta(hours=1))
    run_live(client_factory, now=now)
    assert FunnelEntry.objects.get(email=email, funnel_type="language").sync_status == (
        SyncStatus.CONTROL
    )
    contact = fake_brevo.contact(email)
    assert contact["attributes"]["FUNNEL_TYPE"] == "non_language"
    assert set(contact["listIds"]) == {OTHER_LIST}
