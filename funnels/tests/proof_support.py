"""Helpers shared by the proof tests: the one final invariant check, a small realistic MODX
world to hurt, and the MariaDB plumbing to kill a run's connections.

The invariant is computed from the MODX rows independently of the sync engine: it reads
the tables through the unmanaged models and applies the business rules as the domain
description states them, using only funnels.emails, which is
by definition what decides what an email is. It never calls a selector or a service.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from dataclasses import dataclass, field

from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connections
from django.db.models import Max
from django.utils import timezone

from fake_brevo.server import FakeBrevo
from funnels.emails import email_as_typed, email_check
from funnels.locks import RunLock
from funnels.models import FunnelEntry, SyncRun, SyncStatus
from funnels.modx import models as modx
from funnels.tests.factories import (
    CertPaymentFactory,
    CertResultFactory,
    CertTestFactory,
    CertUserFactory,
    TestResultFactory,
)
from funnels.tests.sync_support import (
    LANG_TEST,
    LANG_TEST_2,
    LANGUAGE_LIST,
    OTHER_LIST,
    OTHER_TEST,
    OTHER_TEST_2,
)
from funnels.routers import MODX_ALIAS, modx_writes_allowed

FUNNEL_LISTS = {"language": LANGUAGE_LIST, "non_language": OTHER_LIST}
FUNNEL_CERT_TYPE = {
    "language": modx.CERT_TYPE_LANGUAGE,
    "non_language": modx.CERT_TYPE_NON_LANGUAGE,
}
# The pinned "now" of conftest.CURRENT_TIME, as the command line takes it.
AS_OF = dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.UTC)
AS_OF_ARG = "2026-11-28T15:30:00+00:00"
SINCE_ARG = "2026-10-01"


# --- the expected state, from MODX alone -------------------------------------------------


@dataclass
class Expected:
    """What a correct job must have produced from the MODX rows read."""

    # (email, funnel slug) -> (result id, test id, completed_at) of the person's first result.
    first: dict[tuple[str, str], tuple[int, int, dt.datetime | None]] = field(default_factory=dict)
    # (email, funnel slug) -> every paid payment of the funnel's certificate: (paid_at, id).
    paid: dict[tuple[str, str], list[tuple[dt.datetime, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def members(self, slug: str) -> set[str]:
        return {email for email, funnel in self.first if funnel == slug}


def _language_test_ids() -> set[int]:
    languages = set(modx.TestLanguage.objects.using(MODX_ALIAS).values_list("id", flat=True))
    return {
        test_id
        for test_id, lang_id in (
            modx.Test.objects.using(MODX_ALIAS).values_list("test_id", "lang_id")
        )
        if lang_id in languages
    }


def _local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=ZoneInfo(settings.TIME_ZONE))


def expected_state(*, after_id: int = 0, as_of: dt.datetime | None = None) -> Expected:
    """Eligible people and their paid certificates, straight from the MODX tables.

    The rules, from the domain description and the product's settings: a result counts
    when its email is valid, it names a test and it was completed (a completion time), not
    later than the latest run's time (plus the allowed clock skew) and not before the
    maximum age (the start of the local day FUNNELS_MAX_AGE_DAYS before `as_of`, the
    earliest run's time); a test is a language test when (any of) its simpletest_test rows
    has a LangId that is a simpletest_lang id, every other test id is non-language; each
    person enters a funnel once, with their first result; a payment is paid when
    id_status = 2 and it has a time; buyer and taker are the same person when their emails
    normalise alike.
    """
    expected = Expected()
    language_tests = _language_test_ids()
    latest_run = SyncRun.objects.filter(dry_run=False).aggregate(t=Max("as_of"))["t"]
    latest = (latest_run or as_of or timezone.now()) + dt.timedelta(
        minutes=settings.FUNNELS_CLOCK_SKEW_MINUTES
    )
    earliest = as_of or latest_run or timezone.now()
    oldest = _local_midnight(
        timezone.localtime(earliest).date() - dt.timedelta(days=settings.FUNNELS_MAX_AGE_DAYS)
    )
    results = (
        modx.TestResult.objects.using(MODX_ALIAS).filter(id__gt=after_id).order_by("id")
        .values_list("id", "email", "test_id", "completed_at")
    )
    for result_id, raw, test_id, completed_at in results:
        email = email_check(raw).email
        if email is None or test_id is None or completed_at is None:
            continue
        if not oldest <= completed_at <= latest:
            continue
        slug = "language" if test_id in language_tests else "non_language"
        expected.first.setdefault((email, slug), (result_id, test_id, completed_at))

    result_user = dict(modx.CertResult.objects.using(MODX_ALIAS).values_list("id", "user_id"))
    result_test = dict(modx.CertResult.objects.using(MODX_ALIAS).values_list("id", "test_id"))
    users = dict(modx.CertUser.objects.using(MODX_ALIAS).values_list("id", "email"))
    cert_types = dict(modx.CertTest.objects.using(MODX_ALIAS).values_list("id", "type"))
    slug_of_type = {cert: slug for slug, cert in FUNNEL_CERT_TYPE.items()}
    payments = modx.CertPayment.objects.using(MODX_ALIAS).values_list(
        "id", "result_id", "status_id", "paid_at"
    )
    for payment_id, result_id, status_id, paid_at in payments:
        if status_id != modx.PAYMENT_STATUS_PAID or paid_at is None:
            continue
        if result_id not in result_user or result_user[result_id] not in users:
            continue  # points at a result or a buyer that does not exist
        slug = slug_of_type.get(cert_types.get(result_test[result_id]))
        email = email_check(users[result_user[result_id]]).email
        if slug is None or email is None:
            continue
        expected.paid[(email, slug)].append((paid_at, payment_id))
    return expected


# --- the invariant -----------------------------------------------------------------------


def sent_emails(fake: FakeBrevo) -> list[str]:
    """Every address that went to Brevo in a request body (upserts and imports)."""
    sent = []
    for request in fake.requests_log:
        body = request.body if isinstance(request.body, dict) else {}
        if isinstance(body.get("email"), str):
            sent.append(body["email"])
        for item in body.get("jsonBody") or []:
            if isinstance(item, dict) and isinstance(item.get("email"), str):
                sent.append(item["email"])
    return sent


def assert_synced_means_in_brevo(fake: FakeBrevo) -> None:
    """At any moment, even mid-fault: an entry marked synced is really in its Brevo list."""
    for email, slug in FunnelEntry.objects.filter(sync_status=SyncStatus.SYNCED).values_list(
        "email", "funnel_type"
    ):
        assert email in fake.list_members(FUNNEL_LISTS[slug]), (email, slug)


def assert_invariant(fake: FakeBrevo, *, after_id: int = 0, as_of: dt.datetime = AS_OF) -> dict:
    """Nothing lost, nothing doubled, every buyer after entry marked; returns the counts.

    `after_id`: results up to this MODX id were before the first run's start; `as_of`: the
    earliest time any run acted as of.

    - every eligible person is in the right Brevo list, and nobody else is in any list;
    - every address sent to Brevo was already normalised, so the fake's case-insensitive
      contact store cannot hide a person sent twice under two spellings;
    - funnel_entries has exactly one row per (person, funnel), made from the first result,
      all of them confirmed by Brevo;
    - an entry is marked purchased exactly when a paid certificate of its funnel's type was
      bought at or after its entry time, with the earliest such payment;
    - Brevo's one contact per person says what all of the person's entries say together:
      purchased if any entry is, the day of the latest of those purchases, and the funnel
      of the person's latest entry (attributes belong to the contact, not to a list);
    - no run is left "running" and the subscription flag was never sent.
    """
    expected = expected_state(after_id=after_id, as_of=as_of)

    for slug, list_id in FUNNEL_LISTS.items():
        members = fake.list_members(list_id)
        wanted = expected.members(slug)
        assert members == wanted, (
            f"{slug}: missing {sorted(wanted - members)[:5]}, extra {sorted(members - wanted)[:5]}"
        )
    everyone = set().union(*(expected.members(s) for s in FUNNEL_LISTS))
    assert set(fake.contacts) == everyone
    for email in sent_emails(fake):
        assert email_check(email).email == email, email
    fake.assert_never_sent("emailBlacklisted")

    rows = list(
        FunnelEntry.objects.values_list(
            "id", "email", "funnel_type", "user_id", "test_id", "entered_at", "sync_status",
            "sync_revision", "synced_revision", "certificate_purchased",
            "certificate_purchased_at", "payment_id",
        )
    )
    keys = [(r[1], r[2]) for r in rows]
    assert len(keys) == len(set(keys)), "funnel_entries has a duplicate (email, funnel)"
    assert set(keys) == set(expected.first), (
        f"entries missing {sorted(set(expected.first) - set(keys))[:5]}, "
        f"extra {sorted(set(keys) - set(expected.first))[:5]}"
    )

    buyers = 0
    # Per person: (entered_at, id, funnel) of each entry, and the purchases that count.
    person_entries: dict[str, list[tuple]] = defaultdict(list)
    person_purchases: dict[str, list[dt.datetime]] = defaultdict(list)
    for (entry_id, email, slug, user_id, test_id, entered_at, status, revision, synced_revision,
         purchased, purchased_at, payment_id) in rows:
        result_id, first_test, completed_at = expected.first[(email, slug)]
        assert (user_id, test_id) == (result_id, first_test), (email, slug)
        if completed_at <= as_of:
            assert entered_at == completed_at, (email, slug, entered_at, completed_at)
        else:
            # Completed a little after the run's time (clock skew): entered at the time of
            # the run that added it.
            assert entered_at >= as_of, (email, slug, entered_at, completed_at)
        assert status == SyncStatus.SYNCED and synced_revision == revision, (email, slug, status)

        qualifying = sorted(p for p in expected.paid.get((email, slug), []) if p[0] >= entered_at)
        if qualifying:
            buyers += 1
            assert purchased and (purchased_at, payment_id) == qualifying[0], (
                email, slug, purchased_at, payment_id, qualifying[0],
            )
            person_purchases[email].append(qualifying[0][0])
        else:
            assert not purchased and purchased_at is None, (email, slug, payment_id)
        person_entries[email].append((entered_at, entry_id, slug))

    for email, entries in person_entries.items():
        attributes = fake.contact(email)["attributes"]
        assert attributes.get("FUNNEL_TYPE") == max(entries)[2], (email, attributes, entries)
        bought = person_purchases.get(email)
        assert attributes.get("CERTIFICATE_PURCHASED") is bool(bought), (email, attributes)
        if bought:
            day = timezone.localtime(max(bought)).date().isoformat()
            assert attributes.get("CERTIFICATE_PURCHASED_AT") == day, (email, attributes)
        else:
            # Never bought, or every purchase withdrawn: no date left behind in Brevo.
            assert "CERTIFICATE_PURCHASED_AT" not in attributes, (email, attributes)

    assert not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists()
    return {
        "language": len(expected.members("language")),
        "non_language": len(expected.members("non_language")),
        "entries": len(rows),
        "buyers": buyers,
    }


# --- a small realistic MODX world ----------------------------------------------------------

TESTS = [LANG_TEST, LANG_TEST_2, OTHER_TEST, OTHER_TEST_2]
_LANGUAGE = {LANG_TEST, LANG_TEST_2}


def _typed(rng: random.Random, email: str) -> str:
    """The address as a person types it into the test's form: more often messy than in
    the demo, and padded with a tab."""
    return email_as_typed(rng, email, upper=0.2, padded=0.15, capitalised=0.10,
                          pad_after="\t")


@dataclass
class World:
    """Test results and certificate payments added so far (MODX ids)."""

    rng: random.Random
    now: dt.datetime = AS_OF
    people_made: int = 0
    result_ids: list[int] = field(default_factory=list)
    unpaid_payment_ids: list[int] = field(default_factory=list)

    @property
    def first_result_id(self) -> int:
        return min(self.result_ids)

    def grow(self, *, people: int, prefix: str = "p") -> None:
        """`people` new people, each with one to three results (some repeated, some in both
        funnels, a few unusable) and, for about a third, a certificate payment: after the
        test, before it, or not (yet) paid."""
        rng = self.rng
        start = self.people_made
        self.people_made += people
        base = self.now - dt.timedelta(days=3)
        cert_tests = {
            slug: CertTestFactory(type=cert) for slug, cert in FUNNEL_CERT_TYPE.items()
        }
        for n in range(start, start + people):
            email = f"{prefix}{n}@example.com"
            completed = base + dt.timedelta(minutes=7 * n)
            tests = rng.sample(TESTS, k=rng.choice([1, 1, 2, 3]))
            for i, test_id in enumerate(tests):
                when = completed + dt.timedelta(minutes=i)
                if i and rng.random() < 0.15:
                    when = None  # MODX lost the time of a later result
                result = TestResultFactory(email=_typed(rng, email), test_id=test_id,
                                           completed_at=when)
                self.result_ids.append(result.id)
            if rng.random() < 0.15:
                bad = TestResultFactory(email=rng.choice(["", None, "no-at-sign", " @x.com"]),
                                        test_id=rng.choice(TESTS), completed_at=completed)
                self.result_ids.append(bad.id)
            if rng.random() < 0.35:
                slug = "language" if tests[0] in _LANGUAGE else "non_language"
                roll = rng.random()
                if roll < 0.6:
                    paid_at, status = completed + dt.timedelta(hours=rng.uniform(0.5, 40)), 2
                elif roll < 0.8:
                    paid_at, status = completed - dt.timedelta(hours=rng.uniform(1, 30)), 2
                else:
                    paid_at, status = None, rng.choice([1, 3])
                paid_at = min(paid_at, self.now) if paid_at else None
                payment = CertPaymentFactory(
                    result=CertResultFactory(
                        user=CertUserFactory(email=_typed(rng, email)), test=cert_tests[slug]
                    ),
                    status_id=status, paid_at=paid_at,
                )
                if status != 2:
                    self.unpaid_payment_ids.append(payment.id)

    def pay_later(self, *, count: int) -> None:
        """Payments first seen unpaid become paid (MODX rows change after they were read)."""
        with modx_writes_allowed():
            for payment_id in self.unpaid_payment_ids[:count]:
                modx.CertPayment.objects.using(MODX_ALIAS).filter(id=payment_id).update(
                    status_id=modx.PAYMENT_STATUS_PAID, paid_at=self.now - dt.timedelta(minutes=5)
                )
        del self.unpaid_payment_ids[:count]


# --- MariaDB: the run's connections ------------------------------------------------------


def run_lock_holder() -> int | None:
    """The MariaDB connection id that holds the run lock (None when free)."""
    name = RunLock().mysql_name
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT IS_USED_LOCK(%s)", [name])
        (holder,) = cursor.fetchone()
    return holder


def newest_connection_id() -> int:
    """The highest connection id the server has handed out so far (ids only grow)."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (mine,) = cursor.fetchone()
        cursor.execute("SELECT COALESCE(MAX(ID), 0) FROM information_schema.PROCESSLIST")
        (newest,) = cursor.fetchone()
    return max(mine, newest)


def connections_since(newest: int) -> list[int]:
    """Connections to this test run's two databases opened after `newest` was taken: the
    child process's. This process may hold more connections than its thread's own (one
    per asyncio context while Playwright's loop runs, for instance); none of them is newer.
    """
    names = [str(connections[a].settings_dict["NAME"]) for a in ("default", MODX_ALIAS)]
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB IN (%s, %s) AND ID > %s",
            [*names, newest],
        )
        return [row[0] for row in cursor.fetchall()]


def connection_kill(connection_id: int) -> bool:
    """KILL from our own connection, as an operator or a failing server would."""
    with connections["default"].cursor() as cursor:
        try:
            cursor.execute(f"KILL {int(connection_id)}")
        except Exception as exc:  # noqa: BLE001 - it may have ended on its own meanwhile
            if "Unknown thread id" in str(exc):
                return False
            raise
    return True

