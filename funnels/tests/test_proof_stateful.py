"""A stateful property test: MODX rows inserted, corrected and committed late between runs
of the job, and after every run the job's state checked against the MODX rows as they
are then.

Hypothesis drives a `RuleBasedStateMachine` whose rules insert test results and
certificate payments (valid ones, and ones that cannot be decided yet: no or invalid
email, no completion time, no test id, a completion time in the future, a payment whose
result, buyer or certificate-test row is missing, whose buyer email is invalid, whose
certificate type is unknown, or that is not paid yet), leave holes in the id sequence and
fill them later (late commits: an insert with an id below ids a run has already read),
correct rows (an email filled in or fixed, a completion time set or corrected, a test id
set, a buyer email fixed, a missing result/buyer row appearing, a certificate type becoming
known, a payment paid later), and run the job live against the fake Brevo on loopback,
the pinned clock advancing 15 minutes per run.

After every run, the invariant is computed from the MODX rows alone (the unmanaged models
and funnels.emails; never a selector or a service of the job):

- every result valid now (a valid email, a test id, a completion time not later than the
  run's time plus FUNNELS_CLOCK_SKEW_MINUTES and not before the funnel's maximum age) is
  entered exactly once per person and funnel (the funnels are "once"), in the funnel of
  its test's kind, from one of that person's valid results of that kind, entered at its
  completion time (or the run's time when it completed within the skew after it);
- its contact was sent to Brevo and is in the funnel's list, once per entry revision
  (the fake's request log), and nobody else was sent: no invalid email, no result without
  a completion time, in the future beyond the skew or older than the maximum age;
- every entry is marked purchased with the earliest valid paid payment of its funnel's
  certificate type by the same normalised email at or after its entry time, and only then.

Out of scope, by the job's design: corrections of a row AFTER it was decided (the job
decides a row once, when it can). The update rules therefore touch only rows that no run
has been able to decide yet (or that no run has read yet). Likewise "paid later" is applied
only to payments first read at most two runs ago (the watch list reads those on every run;
older ones are read on a slower schedule, docs/purchases.md), and a late commit only fills
a hole that runs passed less than the watermark's gap grace ago.

Two exceptions to the purchase rule are allowed and recorded. A payment paid later is
marked once the watch list has read it again, and a run reads one chunk of due watches (by
design, docs/purchases.md; with the test's chunks of 3 that is often a run or two later):
while its watch still says "not paid", the entry may be unmarked. And a payment that was
already valid and paid at a run BEFORE the run that created the entry it counts for (the
entry's result could not be decided until later) is matched only when the watch list reads
the payment again, which can be hours later; the invariant then accepts the entry unmarked
or marked with a later qualifying payment. That gap, shown on its own by
`test_entry_created_after_its_payment_was_read_is_marked_by_the_same_run` below, is fixed:
the purchase phase now reads the paid payments of the people the run entered. The
allowance stays for a buyer whose stored spelling the database comparison cannot match
(leading spaces; any case difference on SQLite), which the watch list still catches.

Bounded and repeatable: derandomized, no example database, a fixed number of examples and
steps (docs/proof.md).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from funnels.emails import email_check
from funnels.models import (
    FunnelEntry,
    PaymentWatch,
    RecheckRow,
    SyncRun,
    SyncRunItem,
    SyncState,
    SyncStatus,
)
from funnels.modx import models as modx
from funnels.tests.proof_support import FUNNEL_CERT_TYPE, FUNNEL_LISTS
from funnels.tests.sync_support import (
    LANG_TEST,
    OTHER_TEST,
    OTHER_TEST_2,
    default_rows_restore,
    funnels_configure,
    modx_catalogue,
    modx_rows_delete,
    run_live,
)
from funnels.routers import MODX_ALIAS, modx_writes_allowed

pytestmark = pytest.mark.django_db(databases=["default", "modx"], transaction=True)

EXAMPLES = 10
STEPS = 30
STATEFUL = hypothesis_settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

START = dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc)
RUN_EVERY = dt.timedelta(minutes=15)
# 100: no simpletest_test row, hence a non-language test ("every other test").
TEST_IDS = [LANG_TEST, OTHER_TEST, OTHER_TEST_2, 100]
PEOPLE = [f"p{n}@example.com" for n in range(6)]
UNKNOWN_CERT_TYPE = 9
INVALID_EMAILS = ["", None, "   ", "no-at-sign", "p1@@example.com", "p2 @example.com", "x@y"]


def typed(email: str, style: int) -> str:
    """The address as somebody typed it: the job must see one person in all of these."""
    return [email, email.upper(), f"  {email}\t", email.capitalize()][style % 4]


def modx_write(model, **values):
    with modx_writes_allowed():
        return model.objects.using(MODX_ALIAS).create(**values)


def modx_update(model, pk: int, **values) -> None:
    with modx_writes_allowed():
        model.objects.using(MODX_ALIAS).filter(pk=pk).update(**values)


def _local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=ZoneInfo(settings.TIME_ZONE))


# --- the rules, from MODX alone ------------------------------------------------------------


def language_tests() -> set[int]:
    languages = set(modx.TestLanguage.objects.using(MODX_ALIAS).values_list("id", flat=True))
    return {
        test_id for test_id, lang_id in
        modx.Test.objects.using(MODX_ALIAS).values_list("test_id", "lang_id")
        if lang_id in languages
    }


def results_now() -> dict[int, tuple[str | None, int | None, dt.datetime | None]]:
    return {
        result_id: (email, test_id, completed_at)
        for result_id, email, test_id, completed_at in
        modx.TestResult.objects.using(MODX_ALIAS).values_list("id", "email", "test_id",
                                                              "completed_at")
    }


def result_decidable(row, *, at: dt.datetime) -> bool:
    """What the job can decide at a run at `at`: everything but a row it must wait for."""
    email, test_id, completed_at = row
    skew = dt.timedelta(minutes=settings.FUNNELS_CLOCK_SKEW_MINUTES)
    return (
        email_check(email).ok and test_id is not None and completed_at is not None
        and completed_at <= at + skew
    )


def result_valid(row, *, at: dt.datetime) -> bool:
    """Decidable and young enough: a result a run at `at` enters (or has entered)."""
    oldest = _local_midnight(
        timezone.localtime(at).date() - dt.timedelta(days=settings.FUNNELS_MAX_AGE_DAYS)
    )
    return result_decidable(row, at=at) and row[2] >= oldest


def payments_now() -> dict[int, tuple[str | None, str | None, int | None, bool,
                                      dt.datetime | None]]:
    """payment id -> (normalised email or None, funnel slug or None, problem-free?, paid?,
    paid_at) with the joined rows as they are now."""
    results = {
        pk: (user_id, test_id) for pk, user_id, test_id in
        modx.CertResult.objects.using(MODX_ALIAS).values_list("id", "user_id", "test_id")
    }
    users = dict(modx.CertUser.objects.using(MODX_ALIAS).values_list("id", "email"))
    types = dict(modx.CertTest.objects.using(MODX_ALIAS).values_list("id", "type"))
    slug_of_type = {cert: slug for slug, cert in FUNNEL_CERT_TYPE.items()}
    payments = {}
    for pk, result_id, status_id, paid_at in modx.CertPayment.objects.using(
        MODX_ALIAS
    ).values_list("id", "result_id", "status_id", "paid_at"):
        email = slug = None
        ok = False
        if result_id in results and results[result_id][0] in users \
                and results[result_id][1] in types:
            email = email_check(users[results[result_id][0]]).email
            slug = slug_of_type.get(types[results[result_id][1]])
            ok = email is not None and slug is not None
        paid = status_id == modx.PAYMENT_STATUS_PAID and paid_at is not None
        payments[pk] = (email, slug, ok, paid, paid_at)
    return payments


def brevo_sends(fake) -> dict[tuple[str, int], int]:
    """(email, list id) -> how many accepted requests put that address in that list."""
    sends: dict[tuple[str, int], int] = defaultdict(int)
    for request in fake.requests_log:
        if request.method != "POST" or not (request.status and 200 <= request.status < 300):
            continue
        body = request.body if isinstance(request.body, dict) else {}
        list_ids = body.get("listIds") or []
        emails = [body["email"]] if isinstance(body.get("email"), str) else []
        emails += [i["email"] for i in body.get("jsonBody") or []
                   if isinstance(i, dict) and isinstance(i.get("email"), str)]
        for email in emails:
            for list_id in list_ids:
                sends[(email, list_id)] += 1
    return sends


# --- the machine ---------------------------------------------------------------------------

# What the examples did, over all of them: the test fails if a kind of step never happened
# or never mattered (an invariant checked on nothing proves nothing).
SEEN: Counter = Counter()


class JobMachine(RuleBasedStateMachine):
    """One example: an empty MODX, a first run, then random inserts, corrections and runs."""

    fake = None
    client_factory = None

    def __init__(self) -> None:
        super().__init__()
        for model in (SyncRunItem, FunnelEntry, RecheckRow, PaymentWatch, SyncState, SyncRun):
            model.objects.all().delete()
        modx_rows_delete()
        default_rows_restore()
        funnels_configure()
        modx_catalogue()
        self.fake.reset()
        self.cert_tests = {
            slug: modx_write(modx.CertTest, id=cert, type=cert)
            for slug, cert in FUNNEL_CERT_TYPE.items()
        }
        self.clock = START
        self.runs: list[int] = []  # SyncRun ids, in order
        self.next_result_id = 1
        self.holes: dict[int, int | None] = {}  # hole id -> index of the run that passed it
        self.decided: set[int] = set()  # result ids a run could decide
        self.waited: set[int] = set()  # result ids a run read and could not decide
        self.next_payment_id = 1
        self.next_row_id = 100  # cert result / user / test ids (payments' joined rows)
        self.payment_seen: dict[int, int] = {}  # payment id -> first run that read it
        self.payment_decided: set[int] = set()
        self.payment_valid_run: dict[int, int] = {}  # first run at which valid and paid
        self.missing_rows: dict[int, tuple[str, int]] = {}  # payment -> what is missing, id
        self.dirty = False  # MODX changed since the last run
        self.idle_runs = 0
        self.run_job_once()

    # -- inserts --------------------------------------------------------------------------

    def _result_values(self, data, kind: str) -> dict:
        person = data.draw(st.sampled_from(PEOPLE), label="person")
        values = {
            "email": typed(person, data.draw(st.integers(0, 3), label="style")),
            "test_id": data.draw(st.sampled_from(TEST_IDS), label="test"),
            "completed_at": self.clock - dt.timedelta(
                minutes=data.draw(st.integers(1, 3 * 24 * 60), label="minutes ago")
            ),
        }
        if kind == "invalid_email":
            values["email"] = data.draw(st.sampled_from(INVALID_EMAILS), label="bad email")
        elif kind == "no_test_id":
            values["test_id"] = None
        elif kind == "no_completion_time":
            values["completed_at"] = None
        elif kind == "future":
            # Within the skew (entered at the run's time) or beyond it (waits until the
            # clock or a correction makes it decidable).
            values["completed_at"] = self.clock + dt.timedelta(
                minutes=data.draw(st.sampled_from([5, 20, 40, 90, 240]), label="ahead")
            )
        elif kind == "too_old":
            values["completed_at"] = self.clock - dt.timedelta(days=45)
        values["completed_at"] = values["completed_at"] and values["completed_at"].replace(
            second=0, microsecond=0
        )
        return values

    RESULT_KINDS = st.sampled_from([
        "valid", "valid", "valid", "invalid_email", "no_test_id", "no_completion_time",
        "future", "too_old",
    ])

    @rule(data=st.data(), kinds=st.lists(RESULT_KINDS, min_size=1, max_size=4),
          hole=st.booleans())
    def insert_results(self, data, kinds, hole):
        self.dirty = True
        for kind in kinds:
            if hole:
                # An id taken by a transaction that has not committed yet.
                self.holes[self.next_result_id] = None
                self.next_result_id += 1
                hole = False
            modx_write(modx.TestResult, id=self.next_result_id, status=1,
                       **self._result_values(data, kind))
            self.next_result_id += 1
            SEEN[f"result {kind}"] += 1

    def _fillable_holes(self) -> list[int]:
        # Passed by the last two runs at most: the next run, 15 minutes on, is still inside
        # FUNNELS_WATERMARK_GAP_GRACE_MINUTES (60) of when the gap was first seen.
        return sorted(
            h for h, passed in self.holes.items()
            if passed is None or len(self.runs) - passed <= 2
        )

    @precondition(lambda self: self._fillable_holes())
    @rule(data=st.data(), kind=RESULT_KINDS)
    def late_commit(self, data, kind):
        self.dirty = True
        hole = data.draw(st.sampled_from(self._fillable_holes()), label="hole")
        passed = self.holes.pop(hole)
        modx_write(modx.TestResult, id=hole, status=1, **self._result_values(data, kind))
        SEEN["late commit below a passed id" if passed else "late commit"] += 1

    @staticmethod
    def _pick_from(data, rows: list[int], *, read) -> list[int]:
        """Mostly rows a run has already read (the case that matters: the job must look
        again), sometimes any of them."""
        waited = [pk for pk in rows if pk in read]
        if waited and data.draw(st.integers(0, 3), label="prefer read rows"):
            return waited
        return rows

    def _undecided_results(self) -> list[int]:
        return sorted(
            pk for pk, row in results_now().items()
            if pk not in self.decided
        )

    @precondition(lambda self: self._undecided_results())
    @rule(data=st.data(), fix=st.sampled_from(
        ["complete", "complete", "email", "completion_time", "test_id", "future_to_past",
         "still_bad"]
    ))
    def correct_result(self, data, fix):
        """A row no run could decide yet is completed or corrected in MODX."""
        self.dirty = True
        pk = data.draw(st.sampled_from(self._pick_from(data, self._undecided_results(),
                                                      read=self.waited)), label="result")
        person = data.draw(st.sampled_from(PEOPLE), label="person")
        SEEN[f"result corrected: {fix}" + (" after a run" if pk in self.waited else "")] += 1
        before = results_now()[pk]
        if fix == "complete":
            # MODX fills in whatever was missing or wrong.
            email, test_id, completed_at = before
            modx_update(
                modx.TestResult, pk,
                email=email if email_check(email).ok else typed(person, pk),
                test_id=test_id if test_id is not None else data.draw(st.sampled_from(TEST_IDS)),
                completed_at=completed_at if completed_at is not None
                and completed_at <= self.clock else (
                    self.clock - dt.timedelta(minutes=data.draw(st.integers(1, 600)))
                ).replace(second=0, microsecond=0),
            )
        elif fix == "email":
            modx_update(modx.TestResult, pk, email=typed(person, pk))
        elif fix == "completion_time":
            modx_update(modx.TestResult, pk, completed_at=(
                self.clock - dt.timedelta(minutes=data.draw(st.integers(1, 600)))
            ).replace(second=0, microsecond=0))
        elif fix == "test_id":
            modx_update(modx.TestResult, pk, test_id=data.draw(st.sampled_from(TEST_IDS)))
        elif fix == "future_to_past":
            modx_update(modx.TestResult, pk, completed_at=(
                self.clock - dt.timedelta(minutes=3)
            ).replace(second=0, microsecond=0))
        else:
            # Corrected, but still not decidable: another wrong email.
            modx_update(modx.TestResult, pk,
                        email=data.draw(st.sampled_from(INVALID_EMAILS), label="bad email"))
        if pk in self.waited and result_decidable(results_now()[pk], at=self.clock):
            SEEN["waiting result made decidable"] += 1

    PAYMENT_KINDS = st.sampled_from([
        "valid", "valid", "valid_recent", "valid_recent", "unpaid", "result_missing", "user_missing",
        "invalid_email", "unknown_type",
    ])

    def _row_id(self) -> int:
        self.next_row_id += 1
        return self.next_row_id

    @rule(data=st.data(), kinds=st.lists(PAYMENT_KINDS, min_size=1, max_size=3))
    def insert_payments(self, data, kinds):
        self.dirty = True
        for kind in kinds:
            self._insert_payment(data, kind)

    def _insert_payment(self, data, kind):
        person = data.draw(st.sampled_from(PEOPLE), label="buyer")
        slug = data.draw(st.sampled_from(sorted(FUNNEL_CERT_TYPE)), label="certificate")
        paid_at = (self.clock - dt.timedelta(
            minutes=data.draw(st.integers(0, 4 * 24 * 60), label="paid minutes ago")
        )).replace(second=0, microsecond=0)
        if kind == "valid_recent":
            # Bought just now: after almost any test of the buyer's (a conversion).
            paid_at = (self.clock - dt.timedelta(
                minutes=data.draw(st.integers(0, 30), label="paid minutes ago")
            )).replace(second=0, microsecond=0)
        payment_id = self.next_payment_id
        self.next_payment_id += 1
        result_id, user_id = self._row_id(), self._row_id()
        email = typed(person, payment_id)
        test_id = self.cert_tests[slug].id
        if kind == "invalid_email":
            email = data.draw(st.sampled_from(INVALID_EMAILS), label="bad email")
        if kind == "unknown_type":
            test_id = modx_write(modx.CertTest, id=self._row_id(), type=UNKNOWN_CERT_TYPE).id
        if kind == "result_missing":
            self.missing_rows[payment_id] = ("result", result_id, user_id, email, test_id)
        else:
            if kind == "user_missing":
                self.missing_rows[payment_id] = ("user", result_id, user_id, email, test_id)
            else:
                modx_write(modx.CertUser, id=user_id, email=email)
            modx_write(modx.CertResult, id=result_id, user_id=user_id, test_id=test_id)
        unpaid = kind == "unpaid"
        SEEN[f"payment {kind}"] += 1
        modx_write(
            modx.CertPayment, id=payment_id, result_id=result_id,
            status_id=1 if unpaid else modx.PAYMENT_STATUS_PAID,
            paid_at=None if unpaid else paid_at,
        )

    def _undecided_payments(self) -> list[int]:
        return sorted(pk for pk in payments_now() if pk not in self.payment_decided)

    @precondition(lambda self: self._undecided_payments())
    @rule(data=st.data())
    def correct_payment(self, data):
        """A payment no run could decide yet is completed in MODX: its missing row appears,
        its buyer's email is fixed, its certificate type becomes known."""
        self.dirty = True
        pk = data.draw(st.sampled_from(self._pick_from(data, self._undecided_payments(),
                                                      read=self.payment_seen)), label="payment")
        missing = self.missing_rows.pop(pk, None)
        SEEN["payment corrected" + (" after a run" if pk in self.payment_seen else "")] += 1
        if missing is not None:
            what, result_id, user_id, email, test_id = missing
            if not email_check(email).ok:
                email = typed(data.draw(st.sampled_from(PEOPLE), label="buyer"), pk)
            modx_write(modx.CertUser, id=user_id, email=email)
            if what == "result":
                modx_write(modx.CertResult, id=result_id, user_id=user_id, test_id=test_id)
            return
        payment = modx.CertPayment.objects.using(MODX_ALIAS).get(pk=pk)
        result = modx.CertResult.objects.using(MODX_ALIAS).get(pk=payment.result_id)
        user_email = modx.CertUser.objects.using(MODX_ALIAS).get(pk=result.user_id).email
        if not email_check(user_email).ok:
            modx_update(modx.CertUser, result.user_id,
                        email=typed(data.draw(st.sampled_from(PEOPLE), label="buyer"), pk))
        cert_type = modx.CertTest.objects.using(MODX_ALIAS).get(pk=result.test_id).type
        if cert_type not in FUNNEL_CERT_TYPE.values():
            modx_update(modx.CertTest, result.test_id,
                        type=data.draw(st.sampled_from(sorted(FUNNEL_CERT_TYPE.values()))))

    def _payable(self) -> list[int]:
        # Not paid yet, and young enough that the watch list reads it on every run (or not
        # read yet at all).
        return sorted(
            pk for pk, (_e, _s, _ok, paid, _t) in payments_now().items()
            if not paid and (pk not in self.payment_seen
                             or len(self.runs) - self.payment_seen[pk] <= 2)
        )

    @precondition(lambda self: self._payable())
    @rule(data=st.data())
    def pay_later(self, data):
        self.dirty = True
        pk = data.draw(st.sampled_from(self._pick_from(data, self._payable(),
                                                      read=self.payment_seen)), label="payment")
        SEEN["paid later" + (" after a run" if pk in self.payment_seen else "")] += 1
        modx_update(modx.CertPayment, pk, status_id=modx.PAYMENT_STATUS_PAID,
                    paid_at=(self.clock - dt.timedelta(minutes=2)).replace(second=0))

    # -- runs -----------------------------------------------------------------------------

    def run_job_once(self) -> None:
        self.clock += RUN_EVERY
        run = run_live(self.client_factory, now=self.clock, chunk_size=3)
        run.refresh_from_db()
        assert run.status == SyncRun.Status.SUCCESS, (run.status, run.error)
        self.runs.append(run.pk)
        index = len(self.runs)
        # What this run could decide, from the rows as they were while it ran (nothing
        # changes MODX between the run and here).
        rows = results_now()
        newest = max(rows, default=0)
        decidable = {pk for pk, row in rows.items() if result_decidable(row, at=self.clock)}
        self.decided |= decidable
        # Rows a run has read and had to leave waiting.
        self.waited |= set(rows) - decidable
        for hole, passed in self.holes.items():
            if passed is None and hole < newest:
                self.holes[hole] = index
        for pk, (_email, _slug, ok, paid, _paid_at) in payments_now().items():
            self.payment_seen.setdefault(pk, index)
            if ok:
                self.payment_decided.add(pk)
                if paid:
                    self.payment_valid_run.setdefault(pk, index)

    @precondition(lambda self: self.dirty or self.idle_runs < 2)
    @rule()
    def run_job(self):
        # Runs with nothing changed are kept to two in a row (enough for the clock to lift
        # a future completion time), so the steps go to changes rather than idle runs.
        self.idle_runs = 0 if self.dirty else self.idle_runs + 1
        self.dirty = False
        self.run_job_once()
        SEEN["run"] += 1
        self.check()

    # -- the invariant --------------------------------------------------------------------

    def check(self) -> None:
        at = self.clock
        kinds = language_tests()
        rows = results_now()
        valid: dict[tuple[str, str], set[int]] = defaultdict(set)
        for pk, row in rows.items():
            if result_valid(row, at=at):
                slug = "language" if row[1] in kinds else "non_language"
                valid[(email_check(row[0]).email, slug)].add(pk)

        entries = list(FunnelEntry.objects.values_list(
            "email", "funnel_type", "user_id", "test_id", "entered_at", "run_id",
            "sync_status", "sync_revision", "synced_revision", "certificate_purchased",
            "certificate_purchased_at", "payment_id",
        ))
        keys = [(e[0], e[1]) for e in entries]
        assert len(keys) == len(set(keys)), f"entered twice: {sorted(keys)}"
        assert set(keys) == set(valid), (
            f"missing {sorted(set(valid) - set(keys))}, extra {sorted(set(keys) - set(valid))}"
        )

        run_index = {pk: i for i, pk in enumerate(self.runs, start=1)}
        run_time = dict(SyncRun.objects.values_list("id", "as_of"))
        sends = brevo_sends(self.fake)
        payments = payments_now()
        # Paid in MODX, but the watch list has not read them since (it reads one chunk of
        # due watches per run, by design: docs/purchases.md): not yet the job's to mark.
        unread = set(PaymentWatch.objects.filter(paid=False).values_list("payment_id",
                                                                          flat=True))
        for (email, slug, result_id, test_id, entered_at, run_id, status, revision, synced,
             purchased, purchased_at, payment_id) in entries:
            assert result_id in valid[(email, slug)], (email, slug, result_id)
            completed_at = rows[result_id][2]
            assert test_id == rows[result_id][1]
            assert entered_at == min(completed_at, run_time[run_id]), (
                email, slug, entered_at, completed_at,
            )
            # Sent, and once per revision of the entry (a purchase re-sends the contact).
            assert status == SyncStatus.SYNCED and synced == revision, (email, slug, status)
            assert 1 <= sends[(email, FUNNEL_LISTS[slug])] <= revision, (
                email, slug, sends[(email, FUNNEL_LISTS[slug])], revision,
            )

            qualifying = sorted(
                (paid_at, pk) for pk, (p_email, p_slug, ok, paid, paid_at) in payments.items()
                if ok and paid and p_email == email and p_slug == slug and paid_at >= entered_at
            )
            # The known gap (module docstring): payments valid before the entry's run.
            strict = [q for q in qualifying
                      if self.payment_valid_run.get(q[1], 0) >= run_index[run_id]
                      and q[1] not in unread]
            if any(q[1] in unread for q in qualifying):
                SEEN["paid later, watch not read yet (one chunk a run)"] += 1
            SEEN["entry checked"] += 1
            if qualifying and not strict:
                SEEN["payment valid before its entry's run (known gap)"] += 1
            if purchased:
                SEEN["purchase checked"] += 1
                assert (purchased_at, payment_id) in qualifying, (email, slug, payment_id)
                assert not strict or (purchased_at, payment_id) <= strict[0], (
                    email, slug, payment_id, strict[0],
                )
            else:
                assert not strict, (email, slug, "not marked", strict[0])
                assert purchased_at is None and payment_id is None

        # Nobody outside the rules reached Brevo, and every address was normalised.
        for slug, list_id in FUNNEL_LISTS.items():
            assert self.fake.list_members(list_id) == {e for e, s in valid if s == slug}
        assert set(self.fake.contacts) == {e for e, _s in valid}
        for email, _list_id in sends:
            assert email_check(email).email == email, email
        assert not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists()


def test_the_job_keeps_its_invariant_while_modx_changes(
    live_settings, fake_brevo, client_factory
):
    class Machine(JobMachine):
        pass

    Machine.fake = fake_brevo
    Machine.client_factory = staticmethod(client_factory)
    SEEN.clear()
    try:
        run_state_machine_as_test(Machine, settings=STATEFUL)
    finally:
        modx_rows_delete()
        default_rows_restore()
    print(dict(sorted(SEEN.items())))
    # Every kind of step happened, after a run where that matters, and the invariant was
    # checked on entries and purchases. Counted by family: which correction of a read row
    # comes first depends on Hypothesis' choices, not on the job.
    def seen(prefix: str, suffix: str = "") -> int:
        return sum(n for what, n in SEEN.items()
                   if what.startswith(prefix) and what.endswith(suffix))

    for family, suffix in (
        ("run", ""), ("entry checked", ""), ("purchase checked", ""), ("late commit", ""),
        ("result corrected", "after a run"), ("waiting result made decidable", ""),
        ("payment corrected", "after a run"),
        ("paid later", ""), ("result future", ""), ("result too_old", ""),
        ("result no_completion_time", ""), ("result no_test_id", ""),
        ("result invalid_email", ""), ("payment result_missing", ""),
        ("payment user_missing", ""), ("payment unknown_type", ""),
        ("payment invalid_email", ""), ("payment unpaid", ""),
    ):
        assert seen(family, suffix), (family, suffix, sorted(SEEN.items()))


# --- the gap the machine found, on its own (fixed: the purchase phase reads the paid -------
# --- payments of the people the run entered) -----------------------------------------------


def test_entry_created_after_its_payment_was_read_is_marked_by_the_same_run(
    live_settings, fake_brevo, client_factory
):
    """A test result without an email waits; its taker pays for the certificate (a valid,
    paid payment, read by the next run: no entry yet, so it only goes on the watch list);
    more than an hour later MODX fills the email in and the run that enters the person
    should mark the purchase, which was made after the test was completed."""
    default_rows_restore()
    funnels_configure()
    modx_catalogue()
    try:
        cert_test = modx_write(modx.CertTest, id=1, type=modx.CERT_TYPE_LANGUAGE)
        completed = START - dt.timedelta(hours=2)
        result = modx_write(modx.TestResult, id=1, email="", test_id=LANG_TEST,
                            completed_at=completed, status=1)
        run_live(client_factory, now=START)
        user = modx_write(modx.CertUser, id=1, email="buyer@example.com")
        modx_write(modx.CertResult, id=1, user_id=user.id, test_id=cert_test.id)
        paid_at = START + dt.timedelta(minutes=5)
        modx_write(modx.CertPayment, id=1, result_id=1, status_id=modx.PAYMENT_STATUS_PAID,
                   paid_at=paid_at)
        # Read while nobody is in a funnel with that email, then by every run of the
        # watch's first hour; after that the watch reads it once an hour.
        for minutes in (15, 30, 45, 60, 75):
            run_live(client_factory, now=START + dt.timedelta(minutes=minutes))
        modx_update(modx.TestResult, result.id, email="Buyer@Example.com")
        run = run_live(client_factory, now=START + dt.timedelta(minutes=90))

        entry = FunnelEntry.objects.get(email="buyer@example.com", funnel_type="language")
        assert entry.run_id == run.pk and entry.entered_at == completed
        assert (entry.certificate_purchased, entry.payment_id, entry.certificate_purchased_at) == (
            True, 1, paid_at,
        )
    finally:
        modx_rows_delete()
        default_rows_restore()
