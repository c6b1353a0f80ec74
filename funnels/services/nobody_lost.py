"""The daily proof that nobody is lost: the production twin of the proof tests' invariant
(funnels/tests/proof_support.py, docs/proof.md), run after the Brevo audit.

Over the last FUNNELS_RECHECK_DAYS (up to a grace period before now, for what the next
run has not read yet), three sources are compared:
- MODX, read here through the unmanaged models with the rules written out again, never
  through the job's selectors or services: a result counts when its email is valid
  (funnels.emails, by definition what an email is), it names a test and has a completion
  time; a test is a language test when one of its simpletest_test rows has a LangId that
  is a simpletest_lang id; a funnel takes it when the funnel is active, has a Brevo list,
  the kind matches (or the funnel takes any) and the test is in its list of tests (when it
  has one); a person enters a funnel once, or once per test (the funnel's re-entry rule);
  a payment is paid when id_status = 2 and it has a time; buyer and taker are the same
  person when their emails normalise alike; a purchase counts at or after entry;
- funnel_entries (the rows this job can use);
- Brevo as the last audit read it (brevo_state).
Every difference is a ProofDifference with its class and the person's explanation (what
explain_funnel says for that funnel); the check's row keeps the count per class. The goal
is zero, every day; funnels_health warns when a class is not.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from funnels.emails import email_check
from funnels.locks import RunLock, RunLockBusy
from funnels.logging_filters import redact
from funnels.models import (
    BrevoState,
    Funnel,
    FunnelEntry,
    ProofCheck,
    ProofDifference,
    SyncStatus,
)
from funnels.modx import models as modx
from funnels.selectors.funnels import funnel_entry_usable_q, funnel_list_id
from funnels.routers import MODX_ALIAS

logger = logging.getLogger("funnels.nobody_lost")

Kind = ProofDifference.Kind
# Explanations cost a few queries each: past this many differences, only the count grows.
MAX_EXPLAINED = 200
_CHUNK = 1000


class ProofBusy(Exception):
    """A run or an audit holds the run lock."""


def _language_tests() -> set[int]:
    languages = set(modx.TestLanguage.objects.using(MODX_ALIAS).values_list("id", flat=True))
    return {
        test_id for test_id, lang_id in
        modx.Test.objects.using(MODX_ALIAS).values_list("test_id", "lang_id")
        if lang_id in languages
    }


def _takes(funnel: Funnel, *, test_id: int, language: bool) -> bool:
    if funnel.test_kind == Funnel.TestKind.LANGUAGE and not language:
        return False
    if funnel.test_kind == Funnel.TestKind.NON_LANGUAGE and language:
        return False
    wanted = {int(t) for t in (funnel.test_ids or [])}
    return not wanted or test_id in wanted


def _key(funnel: Funnel, email: str, test_id: int | None) -> tuple:
    if funnel.reentry == Funnel.Reentry.PER_TEST:
        return (email, funnel.slug, test_id)
    return (email, funnel.slug)


class _Check:
    def __init__(self, *, proof: ProofCheck, funnels: list[Funnel]) -> None:
        self.proof = proof
        self.funnels = funnels
        self.by_slug = {f.slug: f for f in funnels}
        self.found: list[ProofDifference] = []
        self.language = _language_tests()

    def add(self, kind: str, *, email: str, funnel: str, test_id=None, modx_id=None,
            entry_id=None) -> None:
        self.found.append(ProofDifference(
            proof=self.proof, kind=kind, email=email, funnel_type=funnel, test_id=test_id,
            modx_id=modx_id, entry_id=entry_id,
        ))

    # -- MODX: who should be in which funnel -------------------------------------------

    def expected(self) -> dict[tuple, tuple[int, int]]:
        """(email, funnel[, test]) -> (first result id, test id) for results in the window."""
        wanted: dict[tuple, tuple[int, int]] = {}
        results = (
            modx.TestResult.objects.using(MODX_ALIAS)
            .filter(completed_at__gte=self.proof.window_from,
                    completed_at__lte=self.proof.window_to)
            .order_by("id").values_list("id", "email", "test_id")
        )
        self.results: dict[int, tuple[str | None, int | None]] = {}
        for result_id, raw, test_id in results.iterator(chunk_size=5000):
            self.proof.results_read += 1
            email = email_check(raw).email
            self.results[result_id] = (email, test_id)
            if email is None or test_id is None:
                continue
            language = test_id in self.language
            for funnel in self.funnels:
                if _takes(funnel, test_id=test_id, language=language):
                    wanted.setdefault(_key(funnel, email, test_id), (result_id, test_id))
        return wanted

    # -- our table ---------------------------------------------------------------------

    def entries_of(self, emails: Iterable[str]) -> set[tuple]:
        have: set[tuple] = set()
        wanted = sorted(set(emails))
        for start in range(0, len(wanted), _CHUNK):
            rows = FunnelEntry.objects.filter(
                funnel_entry_usable_q(), email__in=wanted[start : start + _CHUNK]
            ).order_by().values_list("email", "funnel_type", "test_id")
            for email, slug, test_id in rows:
                funnel = self.by_slug.get(slug)
                if funnel is not None:
                    have.add(_key(funnel, email, test_id))
        return have

    def window_entries(self) -> list[tuple]:
        return list(
            FunnelEntry.objects.filter(
                funnel_entry_usable_q(), entered_at__gte=self.proof.window_from,
                entered_at__lte=self.proof.window_to,
            ).order_by("id").values_list(
                "id", "email", "funnel_type", "test_id", "user_id", "entered_at",
                "sync_status", "brevo_state", "certificate_purchased",
            )
        )

    def paid(self) -> dict[tuple[str, int], list[datetime]]:
        """(normalised buyer email, certificate type) -> paid times, in the window."""
        paid: dict[tuple[str, int], list[datetime]] = defaultdict(list)
        rows = (
            modx.CertPayment.objects.using(MODX_ALIAS)
            .filter(status_id=modx.PAYMENT_STATUS_PAID, paid_at__isnull=False,
                    paid_at__gte=self.proof.window_from, paid_at__lte=self.proof.window_to)
            .values_list("paid_at", "result__user__email", "result__test__type")
        )
        for paid_at, raw, cert_type in rows:
            email = email_check(raw).email
            if email is not None and cert_type is not None:
                paid[(email, cert_type)].append(paid_at)
        return paid

    def run(self) -> None:
        wanted = self.expected()
        have = self.entries_of(key[0] for key in wanted)
        for key, (result_id, test_id) in sorted(wanted.items(), key=lambda kv: kv[1]):
            if key not in have:
                self.add(Kind.SHOULD_BE_IN, email=key[0], funnel=key[1], test_id=test_id,
                         modx_id=result_id)

        entries = self.window_entries()
        self.proof.entries_read = len(entries)
        unknown = [row[4] for row in entries if row[4] and row[4] not in self.results]
        for start in range(0, len(unknown), _CHUNK):
            for result_id, raw, test_id in (
                modx.TestResult.objects.using(MODX_ALIAS)
                .filter(id__in=unknown[start : start + _CHUNK])
                .values_list("id", "email", "test_id")
            ):
                self.results[result_id] = (email_check(raw).email, test_id)
        paid = self.paid()
        for (entry_id, email, slug, test_id, result_id, entered_at, status, brevo_state,
             purchased) in entries:
            funnel = self.by_slug.get(slug)
            source = self.results.get(result_id) if result_id else None
            if funnel is None or (result_id and not self._source_ok(funnel, email, test_id,
                                                                       source)):
                self.add(Kind.SHOULD_NOT_BE_IN, email=email, funnel=slug, test_id=test_id,
                         modx_id=result_id, entry_id=entry_id)
                continue
            if status in (SyncStatus.PENDING, SyncStatus.FAILED):
                self.add(Kind.NOT_SENT, email=email, funnel=slug, test_id=test_id,
                         entry_id=entry_id)
            elif status == SyncStatus.SYNCED and brevo_state == BrevoState.MISSING:
                self.add(Kind.MISSING_IN_BREVO, email=email, funnel=slug, test_id=test_id,
                         entry_id=entry_id)
            bought = any(t >= entered_at for t in paid.get((email, funnel.certificate_type), ()))
            if bought and not purchased:
                self.add(Kind.BUYER_NOT_MARKED, email=email, funnel=slug, test_id=test_id,
                         entry_id=entry_id)
            elif purchased and not bought:
                self.add(Kind.MARKED_NOT_BUYER, email=email, funnel=slug, test_id=test_id,
                         entry_id=entry_id)

    def _source_ok(self, funnel: Funnel, email: str, test_id: int | None, source) -> bool:
        if source is None:
            return False  # its MODX result is gone
        source_email, source_test = source
        if source_email != email or source_test != test_id or source_test is None:
            return False
        return _takes(funnel, test_id=source_test, language=source_test in self.language)


def _explain(differences: list[ProofDifference]) -> None:
    from funnels.selectors.explain import funnel_explain  # the one explanation

    cache: dict[str, dict[str, str]] = {}
    for difference in differences[:MAX_EXPLAINED]:
        if difference.email not in cache:
            explanation = funnel_explain(raw_email=difference.email)
            cache[difference.email] = {
                v.funnel.slug: "; ".join(v.lines) for v in explanation.verdicts
            }
        difference.explanation = cache[difference.email].get(difference.funnel_type, "")[:2000]


def nobody_lost_check(
    *, now: datetime, lock: RunLock | None = None,
    clock: Callable[[], datetime] = timezone.now,
) -> ProofCheck:
    """Compare MODX, funnel_entries and Brevo over the last FUNNELS_RECHECK_DAYS; see the
    module docstring. Takes the run lock (ProofBusy), so no run moves things under it."""
    lock = lock or RunLock()
    try:
        lock.acquire(now=clock())
    except RunLockBusy as exc:
        raise ProofBusy(f"a run or an audit holds the lock: {exc}") from None
    try:
        grace = timedelta(minutes=2 * settings.FUNNELS_SCHEDULE_MINUTES
                          + settings.FUNNELS_CLOCK_SKEW_MINUTES)
        proof = ProofCheck.objects.create(
            started_at=now, window_from=now - timedelta(days=settings.FUNNELS_RECHECK_DAYS),
            window_to=now - grace,
        )
        try:
            funnels = [f for f in Funnel.objects.order_by("id")
                       if f.active and funnel_list_id(funnel=f)]
            check = _Check(proof=proof, funnels=funnels)
            check.run()
            _explain(check.found)
            ProofDifference.objects.bulk_create(check.found, batch_size=500)
            counts: dict[str, int] = {kind: 0 for kind in Kind.values}
            for difference in check.found:
                counts[difference.kind] += 1
            proof.counts = counts
            proof.status = ProofCheck.Status.SUCCESS
        except Exception as exc:
            logger.exception("proof #%s failed", proof.pk)
            proof.status = ProofCheck.Status.FAILED
            proof.error = redact(f"{type(exc).__name__}: {exc}")[:5000]
        proof.finished_at = clock()
        proof.save()
    finally:
        lock.release()
    total = proof.differences_total
    (logger.warning if total else logger.info)(
        "proof #%s %s: %s results, %s entries, %s differences %s",
        proof.pk, proof.status, proof.results_read, proof.entries_read, total,
        {k: v for k, v in (proof.counts or {}).items() if v},
    )
    return proof
