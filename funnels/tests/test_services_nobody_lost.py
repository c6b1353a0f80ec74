"""The daily proof that nobody is lost: zero after real runs and an audit; one planted case
of every class found, with its explanation; funnels_health warns."""

from __future__ import annotations

import datetime as dt
import io
import re

import pytest
from django.core.management import call_command

from funnels.models import BrevoState, ProofCheck, ProofDifference, SyncStatus
from funnels.modx import models as modx
from funnels.selectors.health import WARNING, proof_health
from funnels.services.brevo_audit import brevo_audit_run
from funnels.services.nobody_lost import nobody_lost_check
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
    FunnelEntryFactory,
)
from funnels.tests.sync_support import (
    LANG_TEST,
    OTHER_TEST,
    RECENT,
    modx_result,
    run_live,
    switched_to_live,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

Kind = ProofDifference.Kind


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"


def _paid(email: str, *, cert_type: int, at: dt.datetime):
    user = CertUserFactory(email=email)
    result = CertResultFactory(user=user, test=CertTestFactory(type=cert_type))
    return CertPaymentFactory(result=result, paid_at=at)


def test_zero_after_real_runs_and_an_audit(configured, live_settings, client_factory,
                                          fake_brevo, now):
    for n in range(4):
        modx_result(f"lang{n}@example.com", LANG_TEST)
        modx_result(f"other{n}@example.com", OTHER_TEST)
    modx_result("Lang0@Example.com ", LANG_TEST)  # the same person again
    _paid("lang1@example.com", cert_type=modx.CERT_TYPE_LANGUAGE,
          at=RECENT + dt.timedelta(hours=2))
    run_live(client_factory, now=now - dt.timedelta(hours=1))
    run_live(client_factory, now=now)
    brevo_audit_run(now=now, client=client_factory())

    proof = nobody_lost_check(now=now + dt.timedelta(hours=1))

    assert proof.status == ProofCheck.Status.SUCCESS, proof.error
    assert proof.results_read == 9 and proof.entries_read == 8
    assert set(proof.counts) == set(Kind.values) and proof.differences_total == 0
    assert proof_health() is None


def test_one_planted_case_of_every_class_is_found(configured, now):
    def entry(email, funnel="language", test=LANG_TEST, **kwargs):
        result = modx_result(email, test)
        defaults = {"sync_status": SyncStatus.SYNCED, "synced_revision": 1,
                    "brevo_state": BrevoState.IN_LIST}
        return result, FunnelEntryFactory(
            email=email, funnel_type=funnel, test_id=test, user_id=result.id,
            entered_at=RECENT, **{**defaults, **kwargs},
        )

    entry("fine@example.com")
    lost = modx_result("lost@example.com", LANG_TEST)
    # In the right funnel, and in the other one too although the test is a language test.
    wrong_result, _ = entry("wrong@example.com")
    wrong = FunnelEntryFactory(email="wrong@example.com", funnel_type="non_language",
                               test_id=LANG_TEST, user_id=wrong_result.id, entered_at=RECENT,
                               sync_status=SyncStatus.SYNCED, synced_revision=1)
    _, unsent = entry("unsent@example.com", sync_status=SyncStatus.PENDING, synced_revision=0,
                      brevo_state="")
    _, gone = entry("gone@example.com", brevo_state=BrevoState.MISSING)
    _, buyer = entry("buyer@example.com")
    _paid("Buyer@example.com", cert_type=modx.CERT_TYPE_LANGUAGE,
          at=RECENT + dt.timedelta(hours=3))
    _, fake_buyer = entry("notabuyer@example.com", certificate_purchased=True,
                          certificate_purchased_at=RECENT + dt.timedelta(hours=1))
    # Not differences: an opt-out, a payment before entry, a result of the last minutes.
    entry("optout@example.com", sync_status=SyncStatus.OPTED_OUT,
          brevo_state=BrevoState.UNSUBSCRIBED)
    _, early = entry("early@example.com")
    _paid("early@example.com", cert_type=modx.CERT_TYPE_LANGUAGE,
          at=RECENT - dt.timedelta(hours=1))
    modx_result("justnow@example.com", LANG_TEST, completed_at=now - dt.timedelta(minutes=5))

    proof = nobody_lost_check(now=now)

    found = {(d.kind, d.email): d for d in proof.differences.all()}
    assert set(found) == {
        (Kind.SHOULD_BE_IN, "lost@example.com"),
        (Kind.SHOULD_NOT_BE_IN, "wrong@example.com"),
        (Kind.NOT_SENT, "unsent@example.com"),
        (Kind.MISSING_IN_BREVO, "gone@example.com"),
        (Kind.BUYER_NOT_MARKED, "buyer@example.com"),
        (Kind.MARKED_NOT_BUYER, "notabuyer@example.com"),
    }
    assert proof.counts == {kind: 1 for kind in Kind.values}
    assert found[(Kind.SHOULD_BE_IN, "lost@example.com")].modx_id == lost.id
    assert found[(Kind.SHOULD_NOT_BE_IN, "wrong@example.com")].entry_id == wrong.id
    # The person's explanation, as explain_funnel gives it.
    assert found[(Kind.SHOULD_BE_IN, "lost@example.com")].explanation.startswith("not in it")
    assert "Brevo audit: Missing from the list" in found[
        (Kind.MISSING_IN_BREVO, "gone@example.com")].explanation
    assert {gone.id, unsent.id, buyer.id, fake_buyer.id} <= {d.entry_id for d in found.values()}

    health = proof_health()
    assert health.level == WARNING and "6 differences" in health.message


def test_the_audit_command_runs_the_proof_after_the_audit(configured, live_settings,
                                                         fake_brevo, now):
    modx_result("lost@example.com", LANG_TEST)
    out = io.StringIO()
    call_command("audit_brevo", "--as-of", now.isoformat(), stdout=out)
    assert out.getvalue().splitlines()[1] == "proof skipped: the job runs in dry run"
    assert not ProofCheck.objects.exists()

    switched_to_live()
    out = io.StringIO()
    call_command("audit_brevo", "--as-of", now.isoformat(), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("audit #") and " success (incremental)" in lines[0]
    assert re.match(r"proof #\d+ success: 1 test results and 0 entries of the last "
                               "30 days compared, 1 differences \(should_be_in 1\)", lines[1])
    health = io.StringIO()
    with pytest.raises(SystemExit) as warned:
        call_command("funnels_health", "--as-of", now.isoformat(), stdout=health)
    assert warned.value.code in (1, 2)
