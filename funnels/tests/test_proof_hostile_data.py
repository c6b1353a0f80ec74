"""The job live against the fake Brevo on a MODX data set of hostile rows (hostile_data.py):
it finishes, sends only valid contacts, and accounts for every row it read.

Transactional on both databases: on MariaDB the email columns are widened for the
300-character rows, and an ALTER commits. The list of rows and what became of each is in
docs/proof.md.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from django.db import connections

from funnels.emails import email_check, email_normalize
from funnels.models import RecheckRow, FunnelEntry, SyncRun, SyncRunItem
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
)
from funnels.tests.hostile_data import (
    DUPLICATE,
    PAYMENT_IDS_FROM,
    hostile_generate,
    hostile_load,
    modx_email_columns_restore,
    modx_email_columns_widen,
)
from funnels.tests.proof_support import assert_invariant
from funnels.tests.sync_support import (
    LANG_TEST,
    OTHER_TEST,
    default_rows_restore,
    funnels_configure,
    modx_catalogue,
    modx_result,
    modx_rows_delete,
    run_live,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"], transaction=True)

SEED = 4242
DUPLICATE_REASONS = {"duplicate_in_batch", "already_in_funnel"}


@pytest.fixture
def clean_world(fake_brevo):
    default_rows_restore()
    funnels_configure()
    yield
    modx_rows_delete()
    default_rows_restore()


@pytest.fixture
def hostile(clean_world, now):
    data = hostile_generate(seed=SEED, now=now, vendor=connections["modx"].vendor)
    modx_email_columns_widen()
    try:
        yield data, hostile_load(data)
    finally:
        modx_rows_delete()
        modx_email_columns_restore()


def test_the_job_survives_hostile_modx_data(
    hostile, live_settings, client_factory, fake_brevo, now
):
    data, loaded = hostile
    run = run_live(client_factory, now=now, chunk_size=7)
    run.refresh_from_db()
    assert run.status in (SyncRun.Status.SUCCESS, SyncRun.Status.PARTIAL), run.error
    assert run.status == SyncRun.Status.SUCCESS, run.error  # nothing here is Brevo's fault

    # Every MODX result is an entry, a skipped item or a waiting item, with a reason:
    # counted, one each.
    assert run.results_read == len(data.results)
    entries = {e.user_id: e for e in FunnelEntry.objects.all()}
    skipped = Counter()
    skip_items: dict[int, SyncRunItem] = {}
    for item in SyncRunItem.objects.filter(run=run, action__in=["skipped", "waiting"],
                                           source_id__lt=PAYMENT_IDS_FROM):
        skipped[item.source_id] += 1
        skip_items[item.source_id] = item
    assert all(n == 1 for n in skipped.values())
    waiting = sum(v for k, v in run.waiting_by_reason.items() if not k.startswith("payment:"))
    assert len(entries) + len(skip_items) == len(data.results)
    assert len(data.results) == run.entries_added + run.skipped + waiting
    assert all(item.reason for item in skip_items.values())
    assert RecheckRow.objects.filter(source="test_results").count() == waiting

    for row in data.results:
        result_id = loaded.result_ids[row.label]
        if row.outcome.startswith("entry:"):
            entry = entries.get(result_id)
            assert entry is not None, row
            assert result_id not in skip_items, row
            assert entry.funnel_type == row.outcome.split(":", 1)[1], row
            assert entry.email == email_check(row.email).email, row
        else:
            assert result_id not in entries, row
            item = skip_items[result_id]
            if row.outcome == DUPLICATE:
                assert item.reason in DUPLICATE_REASONS, (row, item.reason)
            else:
                kind, reason = row.outcome.split(":", 1)
                assert (item.action, item.reason) == (
                    "waiting" if kind == "wait" else "skipped", reason
                ), (row, item.action, item.reason)

    # Brevo got valid, normalised addresses only, and none of the refused ones.
    sent = set(fake_brevo.contacts)
    assert sent == {e.email for e in entries.values()}
    for email in sent:
        assert email_check(email).email == email, email
    refused = {
        email_normalize(r.email) for r in data.results
        if r.outcome.split(":")[1] in ("empty_email", "invalid_email", "email_too_long")
    }
    assert not refused & sent

    # Payments: each marked on its entry, counted under its reason, or waiting.
    expected_reasons = Counter(
        f"payment:{p.outcome}" for p in data.payments
        if not p.outcome.startswith(("purchase:", "wait:"))
    )
    got_reasons = {k: v for k, v in run.skipped_by_reason.items() if k.startswith("payment:")}
    assert got_reasons == dict(expected_reasons)
    expected_waiting = Counter(
        f"payment:{p.outcome.split(':', 1)[1]}" for p in data.payments
        if p.outcome.startswith("wait:")
    )
    got_waiting = {k: v for k, v in run.waiting_by_reason.items() if k.startswith("payment:")}
    assert got_waiting == dict(expected_waiting)
    purchased = {
        (e.email, e.funnel_type): e.payment_id
        for e in FunnelEntry.objects.filter(certificate_purchased=True)
    }
    wanted = {
        tuple(p.outcome.split(":")[1:]): loaded.payment_ids[p.label]
        for p in data.payments if p.outcome.startswith("purchase:")
    }
    assert purchased == wanted

    counts = assert_invariant(fake_brevo, after_id=loaded.first_result_id - 1, as_of=now)
    print("hostile run:", run.skipped_by_reason, counts)

    # Nothing new: a second run reads nothing, adds nothing, calls Brevo for nothing.
    requests = fake_brevo.request_count
    again = run_live(client_factory, now=now + dt.timedelta(minutes=15))
    assert again.status == SyncRun.Status.SUCCESS, again.error
    assert (again.results_read, again.entries_added, again.contacts_sent) == (0, 0, 0)
    assert fake_brevo.request_count == requests


def test_the_hostile_data_set_is_deterministic(now):
    one = hostile_generate(seed=SEED, now=now, vendor="mysql")
    two = hostile_generate(seed=SEED, now=now, vendor="mysql")
    assert one == two
    assert hostile_generate(seed=SEED + 1, now=now, vendor="mysql") != one
    labels = [r.label for r in one.results] + [p.label for p in one.payments]
    assert len(labels) == len(set(labels))
    assert "zero date 0000-00-00" not in {r.label for r in hostile_generate(
        seed=SEED, now=now, vendor="sqlite").results}


def test_a_buyer_in_both_funnels_keeps_the_purchase_in_brevo(
    clean_world, live_settings, client_factory, fake_brevo, now
):
    modx_catalogue()
    taken = now - dt.timedelta(days=1)
    modx_result("both@example.com", LANG_TEST, completed_at=taken)
    modx_result("both@example.com", OTHER_TEST, completed_at=taken + dt.timedelta(minutes=5))
    CertPaymentFactory(
        result=CertResultFactory(user=CertUserFactory(email="both@example.com"),
                                 test=CertTestFactory(type=1)),
        status_id=2, paid_at=taken + dt.timedelta(hours=2),
    )
    run = run_live(client_factory, now=now)
    assert run.status == SyncRun.Status.SUCCESS, run.error
    language = FunnelEntry.objects.get(email="both@example.com", funnel_type="language")
    assert language.certificate_purchased  # our table is right ...
    # ... and so is the one Brevo contact, whichever funnel's entry was pushed last: it
    # is in both lists, bought, and of the funnel it entered last.
    contact = fake_brevo.contact("both@example.com")
    assert contact["attributes"]["CERTIFICATE_PURCHASED"] is True
    assert contact["attributes"]["FUNNEL_TYPE"] == "non_language"
    assert contact["listIds"] == [1, 2]
