"""Read the funnels' Brevo lists back and record, per entry, what Brevo holds.

The job writes to Brevo and used to never read back: people unsubscribe from a list or
from everything, get deleted, or a marketer empties a list by hand, and `funnel_entries`
kept saying "synced". An audit reads each funnel's list and stores on every entry of that
person in that funnel one of `BrevoState` and when it was read:
- blacklisted: the contact's emailBlacklisted (all emails, whatever the list);
- unsubscribed_from_list: the list is in the contact's listUnsubscribed;
- in_list: on the list, neither of the above;
- missing: a full read of the list did not find the person although Brevo once confirmed
  them (synced_revision > 0): removed from the list, or the contact deleted. An opt-out
  read before is kept instead (it must never look like somebody to put back).
Contacts on a list without any entry of that funnel are strangers: counted, and the
first STRANGERS_SAMPLE of them kept on the audit's record.

Full or incremental:
- no audit completed yet, a full one older than BREVO_AUDIT_FULL_EVERY_DAYS, or `full=True`:
  every list whole through GET /contacts/lists/{id}/contacts, 500 a page, oldest first
  (ceil(n / 500) pages a list; 100,000 contacts = 200 pages, ~22 s at 9 req/s);
- otherwise, for all the lists together, two reads:
  1. their sizes (totalSubscribers): GET /contacts/lists, 50 lists a page. One request
     when the funnels' lists are among the account's first 50; else the next pages or
     GET /contacts/lists/{id} for each list not found yet, whichever takes fewer requests.
     Read first, so that the changes are asked only of lists that exist.
  2. the contacts modified since the last completed audit started (minus
     MODIFIED_SINCE_MARGIN for clocks that differ) in any of them: GET /contacts with
     listIds, 1,000 a page. Each contact carries its listIds and listUnsubscribed, so it
     is stored for every funnel whose list it is in.
  Then each list's size is compared with what we now believe is in it (people
  in_list/unsubscribed/blacklisted + the strangers the last completed audit knew of): a
  removal or a deletion changes no contact still in the list, so modifiedSince cannot
  show it, but the size does; when the two disagree that list is read whole at once.
  Nothing changed: 2 requests whatever the number of lists up to 50 (1 a list with the
  two funnels; it was 2 a list, the list endpoint's count being the filtered count, so
  the size took a request of its own).
Every contact our run sends is touched (modifiedAt), so an incremental read sees people
synced since the last audit too.
Known limits: a removal and a new stranger on the same day leave the size unchanged, so
the removal waits for the weekly full read; someone found unsubscribed and later removed
from the list keeps their opt-out (it must never look like somebody to put back), so they
still count as a member and that list is read whole every day until the numbers agree
again; a contact deleted while a read pages through the contacts shifts the pages behind
it and can hide one person until the next read; a removal or a new stranger between the
two reads of an incremental audit is missed by it and found by the next one (its sizes
disagree, so the list is read whole).

Shares the run lock: never at the same time as run_funnels (both write funnel_entries,
and a run adding people while a full read is under way would look like missing people).

Faults: the client retries 429 (waiting for Brevo's reset) and 5xx as for the runs. When
it gives up, the audit stops and ends `partial`: what the pages already read said is
stored (it is true), `missing` is only ever concluded from a full read that finished, and
the next audit reads from the last *completed* one, so nothing is skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from funnels.brevo.client import (
    CONTACTS_MAX,
    LIST_CONTACTS_MAX,
    LISTS_MAX,
    BrevoClient,
    ListContactsPage,
)
from funnels.brevo.errors import BrevoAuthError, BrevoError, BrevoPermanentError
from funnels.brevo.factory import brevo_client_build
from funnels.locks import RunLock, RunLockBusy, RunLockLost
from funnels.logging_filters import redact
from funnels.models import (
    OPTED_OUT_STATES,
    BrevoAudit,
    BrevoState,
    Funnel,
    FunnelEntry,
    SyncStatus,
)
from funnels.selectors.funnels import funnel_entry_usable_q, funnel_list_id, funnels_all

logger = logging.getLogger("funnels.brevo_audit")

STRANGERS_SAMPLE = 50
MODIFIED_SINCE_MARGIN = timedelta(minutes=10)
_UPDATE_CHUNK = 1000
# Where a person is still a member of the list, in Brevo's count.
_MEMBER_STATES = (BrevoState.IN_LIST, BrevoState.UNSUBSCRIBED, BrevoState.BLACKLISTED)


class AuditBusy(Exception):
    """A run or another audit holds the run lock (exit code 3)."""


class _Stop(Exception):
    """Brevo gave up on us (the client's retries are spent): end the audit partial."""


def contact_state(*, contact: dict, list_id: int) -> str:
    """One contact of a list page as a BrevoState; an opt-out wins over membership."""
    if contact.get("emailBlacklisted") is True:
        return BrevoState.BLACKLISTED
    if list_id in (contact.get("listUnsubscribed") or ()):
        return BrevoState.UNSUBSCRIBED
    return BrevoState.IN_LIST


def _list_size(item: dict) -> tuple[int, int]:
    return int(item.get("totalSubscribers") or 0), int(item.get("totalBlacklisted") or 0)


def _size_agrees(result: _ListResult) -> bool:
    """Whether Brevo's size of the list is ours. The description calls totalSubscribers
    "contacts in the list", but its examples have uniqueSubscribers = totalSubscribers +
    totalBlacklisted, as if the blacklisted were left out; either reading is accepted,
    or a list holding one blacklisted person would be read whole every day. A removal of
    exactly as many people as are blacklisted passes for the second reading: the weekly
    whole read finds it."""
    ours = result.our_count
    return result.brevo_count == ours or result.brevo_count + result.brevo_blacklisted == ours


@dataclass
class _ListResult:
    list_id: int
    kind: str = BrevoAudit.Kind.INCREMENTAL
    brevo_count: int | None = None
    # The list's totalBlacklisted, read with its size (see _size_agrees).
    brevo_blacklisted: int = 0
    our_count: int | None = None
    pages: int = 0
    contacts: int = 0
    changed: int = 0
    strangers: int = 0
    # Strangers believed in the list after this audit (counted by a whole read, or
    # carried over when the size agreed), which the next audit's size check adds to ours:
    # `strangers` alone is only those an incremental read met.
    known_strangers: int = 0
    sample: list[str] = field(default_factory=list)
    error: str = ""

    def as_json(self) -> dict:
        # pages: the list's own pages (a whole read); the shared read of the changes of
        # all lists is counted on the audit only.
        return {
            "list_id": self.list_id, "kind": self.kind, "brevo_count": self.brevo_count,
            "brevo_blacklisted": self.brevo_blacklisted,
            "our_count": self.our_count, "pages": self.pages, "contacts": self.contacts,
            "changed": self.changed, "strangers": self.strangers,
            "known_strangers": self.known_strangers, "error": self.error,
        }


class _Audit:
    def __init__(
        self, *, audit: BrevoAudit, client: BrevoClient, lock: RunLock, now: datetime,
        previous: BrevoAudit | None, force_full: bool | None,
    ) -> None:
        self.audit = audit
        self.client = client
        self.lock = lock
        self.now = now
        self.previous = previous
        self.force_full = force_full
        self.results: dict[str, _ListResult] = {}
        # Per-list failures (Brevo refused a list's read): the audit ends partial.
        self.errors: list[str] = []

    # -- all lists --------------------------------------------------------------------

    def lists(self, targets: list[tuple[Funnel, int]]) -> None:
        """Every funnel's list, into self.results: whole when due, else by its changes
        and its size. Raises _Stop (Brevo gave up), BrevoAuthError, RunLockLost."""
        full = self._full_due()
        for funnel, list_id in targets:
            self.results[funnel.slug] = _ListResult(
                list_id=list_id,
                kind=BrevoAudit.Kind.FULL if full else BrevoAudit.Kind.INCREMENTAL,
            )
        if full:
            for funnel, _list_id in targets:
                self._whole_guarded(funnel)
            return
        sizes = self._sizes(sorted({list_id for _funnel, list_id in targets}))
        live: list[tuple[Funnel, int]] = []
        for funnel, list_id in targets:
            size = sizes[list_id]
            if isinstance(size, BrevoPermanentError):
                self._fail(funnel, size)
            else:
                result = self.results[funnel.slug]
                result.brevo_count, result.brevo_blacklisted = size
                live.append((funnel, list_id))
        if not live:
            return
        try:
            self._changes(live)
        except BrevoPermanentError as exc:
            # One request for all lists: Brevo refusing it leaves every list unread.
            for funnel, _list_id in live:
                self._fail(funnel, exc)
            return
        for funnel, list_id in live:
            result = self.results[funnel.slug]
            result.known_strangers = self._known_strangers(funnel)
            result.our_count = self._our_count(funnel) + result.known_strangers
            if _size_agrees(result):
                continue
            logger.info(
                "brevo audit: list %s holds %s contacts, we expect %s: reading it whole",
                list_id, result.brevo_count, result.our_count,
            )
            self._whole_guarded(funnel)

    def _fail(self, funnel: Funnel, exc: BrevoPermanentError) -> None:
        result = self.results[funnel.slug]
        self.errors.append(f"{funnel.slug} (list {result.list_id}): {exc}")
        result.error = str(exc)[:500]

    def _whole_guarded(self, funnel: Funnel) -> None:
        # About this list (it does not exist, Brevo refused the read): the others go on.
        try:
            self._whole(funnel, self.results[funnel.slug])
        except BrevoPermanentError as exc:
            self._fail(funnel, exc)

    def _sizes(
        self, list_ids: list[int]
    ) -> dict[int, tuple[int, int] | BrevoPermanentError]:
        """Each list's (totalSubscribers, totalBlacklisted), or why Brevo would not give
        them."""
        wanted = set(list_ids)
        sizes: dict[int, tuple[int, int] | BrevoPermanentError] = {}
        offset = 0
        try:
            while True:
                page = self._call(lambda: self.client.lists_page(offset=offset, limit=LISTS_MAX))
                for item in page.lists:
                    if item.get("id") in wanted:
                        sizes[int(item["id"])] = _list_size(item)
                offset += len(page.lists)
                missing = len(wanted) - len(sizes)
                pages_left = -(-(page.count - offset) // LISTS_MAX) if page.lists else 0
                # Page on only while that costs no more requests than asking for each
                # list not found yet: an account with hundreds of lists is not read through.
                if not missing or pages_left <= 0 or pages_left > missing:
                    break
        except BrevoPermanentError as exc:
            logger.warning("brevo audit: GET /contacts/lists refused (%s): list by list", exc)
        for list_id in sorted(wanted - set(sizes)):
            try:
                info = self._call(lambda: self.client.get_list(list_id=list_id))
            except BrevoPermanentError as exc:
                sizes[list_id] = exc
                continue
            sizes[list_id] = (
                BrevoPermanentError(f"list {list_id} does not exist", status=404)
                if info is None else _list_size(info)
            )
        return sizes

    def _changes(self, targets: list[tuple[Funnel, int]]) -> None:
        """The contacts modified since the last completed audit in any of the lists, in
        one paged read, each stored for every funnel whose list it is in."""
        by_list: dict[int, list[Funnel]] = {}
        for funnel, list_id in targets:
            by_list.setdefault(list_id, []).append(funnel)
        pages = self._pages(lambda offset: self.client.contacts_page(
            list_ids=sorted(by_list), offset=offset, limit=CONTACTS_MAX,
            modified_since=self.audit.modified_since,
        ))
        for contacts in pages:
            for list_id, funnels in by_list.items():
                members = [c for c in contacts if list_id in (c.get("listIds") or ())]
                if not members:
                    continue
                for funnel in funnels:
                    result = self.results[funnel.slug]
                    result.contacts += len(members)
                    self._store_page(funnel, result, members)

    def _pages(self, fetch: Callable[[int], ListContactsPage]) -> Iterator[list[dict]]:
        """Each page's contacts (those with an email) from `fetch(offset)`, until Brevo's
        count is reached or a page comes back empty; counted on the audit."""
        offset = 0
        while True:
            page = self._call(lambda: fetch(offset))
            self.audit.pages += 1
            contacts = [c for c in page.contacts if isinstance(c.get("email"), str)]
            self.audit.contacts_read += len(contacts)
            yield contacts
            offset += len(page.contacts)
            if not page.contacts or offset >= page.count:
                return

    # -- one list, whole --------------------------------------------------------------

    def _whole(self, funnel: Funnel, result: _ListResult) -> None:
        result.kind = BrevoAudit.Kind.FULL
        result.strangers = 0
        result.sample = []
        seen = self._read(funnel, result)
        result.changed += self._mark_missing(funnel, seen)
        result.known_strangers = result.strangers
        result.our_count = self._our_count(funnel) + result.strangers
        if result.brevo_count is None:
            result.brevo_count = result.our_count

    def _full_due(self) -> bool:
        if self.force_full is True or self.previous is None:
            return True
        if self.force_full is False:
            return False
        last_full = (
            BrevoAudit.objects.filter(status=BrevoAudit.Status.SUCCESS, kind=BrevoAudit.Kind.FULL)
            .order_by("-started_at").values_list("started_at", flat=True).first()
        )
        every = timedelta(days=settings.BREVO_AUDIT_FULL_EVERY_DAYS)
        return last_full is None or self.now - last_full >= every

    def _known_strangers(self, funnel: Funnel) -> int:
        # The last completed read of this list counted them; an incremental read that
        # met a new one makes the counts disagree, which reads the list whole again.
        lists = self.previous.lists if self.previous is not None else {}
        last = lists.get(funnel.slug) or {}
        # Audits recorded before known_strangers existed kept the count in strangers.
        return int(last.get("known_strangers", last.get("strangers")) or 0)

    def _our_count(self, funnel: Funnel) -> int:
        return (
            FunnelEntry.objects.filter(
                funnel_entry_usable_q(), funnel_type=funnel.slug, brevo_state__in=_MEMBER_STATES
            ).values("email").distinct().count()
        )

    def _read(self, funnel: Funnel, result: _ListResult) -> set[str]:
        """The whole list, page by page; the emails of ours it holds."""
        seen: set[str] = set()
        pages = self._pages(lambda offset: self.client.list_contacts_page(
            list_id=result.list_id, offset=offset, limit=LIST_CONTACTS_MAX,
        ))
        for contacts in pages:
            result.pages += 1
            result.contacts += len(contacts)
            if contacts:
                seen.update(self._store_page(funnel, result, contacts))
        return seen

    def _store_page(self, funnel: Funnel, result: _ListResult, contacts: list[dict]) -> set[str]:
        states = {
            c["email"].strip().lower(): contact_state(contact=c, list_id=result.list_id)
            for c in contacts
        }
        with transaction.atomic():
            # Control entries are held out by design: they have no place in Brevo to read.
            ours = dict(
                FunnelEntry.objects.filter(
                    funnel_entry_usable_q(), funnel_type=funnel.slug, email__in=list(states)
                ).exclude(sync_status=SyncStatus.CONTROL)
                .order_by().values_list("email", "brevo_state")
            )
            by_state: dict[str, list[str]] = {}
            for email, state in states.items():
                if email not in ours:
                    result.strangers += 1
                    if len(result.sample) < STRANGERS_SAMPLE:
                        result.sample.append(email)
                    continue
                if ours[email] != state:
                    result.changed += 1
                by_state.setdefault(state, []).append(email)
            for state, emails in by_state.items():
                FunnelEntry.objects.filter(
                    funnel_entry_usable_q(), funnel_type=funnel.slug, email__in=emails
                ).exclude(sync_status=SyncStatus.CONTROL).update(
                    brevo_state=state, brevo_seen_at=self.now
                )
            self.lock.check()
        return set(ours)

    def _mark_missing(self, funnel: Funnel, seen: set[str]) -> int:
        """After a whole read: everyone Brevo once confirmed and the read did not find."""
        # An opt-out read earlier stays: someone who unsubscribed and was then removed
        # from the list (or deleted) must never look like somebody to put back.
        confirmed = set(
            FunnelEntry.objects.filter(funnel_entry_usable_q(), funnel_type=funnel.slug,
                                       synced_revision__gt=0)
            .exclude(brevo_state__in=(BrevoState.MISSING, *OPTED_OUT_STATES))
            .order_by().values_list("email", flat=True).distinct()
        )
        gone = sorted(confirmed - seen)
        for start in range(0, len(gone), _UPDATE_CHUNK):
            with transaction.atomic():
                FunnelEntry.objects.filter(
                    funnel_entry_usable_q(), funnel_type=funnel.slug,
                    email__in=gone[start : start + _UPDATE_CHUNK],
                ).exclude(brevo_state__in=OPTED_OUT_STATES).exclude(
                    sync_status=SyncStatus.CONTROL
                ).update(brevo_state=BrevoState.MISSING, brevo_seen_at=self.now)
                self.lock.check()
        return len(gone)

    def _call(self, call: Callable):
        try:
            return call()
        except BrevoAuthError:
            raise
        except BrevoPermanentError:
            raise
        except BrevoError as exc:
            raise _Stop(str(exc)) from exc


def _states_totals() -> dict[str, int]:
    """People per state, over all funnels (a person in two funnels counts in each).

    Grouped by funnel and state, the count reads idx_fe_brevo (funnel, state, email) alone,
    in its order; the usable-row filter is left out because only the audit writes a state,
    and it writes usable rows only. With the filter, and one group per state across
    funnels, it was a sort of a million rows: 80 s on the benchmark's data."""
    totals: Counter = Counter()
    for row in (
        FunnelEntry.objects.exclude(brevo_state="")
        .values("funnel_type", "brevo_state").annotate(n=Count("email", distinct=True))
        .order_by()
    ):
        totals[row["brevo_state"]] += row["n"]
    return dict(totals)


def audits_mark_crashed(*, now: datetime) -> int:
    """Close audits left running by a dead process; call only while holding the lock."""
    return BrevoAudit.objects.filter(status=BrevoAudit.Status.RUNNING).update(
        status=BrevoAudit.Status.CRASHED, finished_at=now,
        error=f"found dead at the next start ({now.isoformat(timespec='seconds')})",
    )


def brevo_audit_run(
    *,
    now: datetime,
    full: bool | None = None,
    trigger: str = "manual",
    client: BrevoClient | None = None,
    lock: RunLock | None = None,
    clock: Callable[[], datetime] = timezone.now,
) -> BrevoAudit:
    """Audit every funnel's Brevo list once (see the module docstring).

    `full`: True reads every list whole, False never unless nothing was audited before,
    None decides per list (weekly, or when the counts disagree). Raises AuditBusy when a
    run or another audit holds the lock.
    """
    lock = lock or RunLock()
    try:
        lock.acquire(now=clock())
    except RunLockBusy as exc:
        raise AuditBusy(f"a run or an audit holds the lock: {exc}") from None
    try:
        return _audit_locked(now=now, full=full, trigger=trigger, client=client, lock=lock,
                             clock=clock)
    finally:
        lock.release()


def _audit_locked(
    *, now: datetime, full: bool | None, trigger: str, client: BrevoClient | None,
    lock: RunLock, clock: Callable[[], datetime],
) -> BrevoAudit:
    client = client or brevo_client_build()
    audits_mark_crashed(now=clock())
    previous = (
        BrevoAudit.objects.filter(status=BrevoAudit.Status.SUCCESS).order_by("-started_at").first()
    )
    audit = BrevoAudit.objects.create(
        started_at=now, kind=BrevoAudit.Kind.INCREMENTAL, trigger=trigger[:10],
        modified_since=(previous.started_at - MODIFIED_SINCE_MARGIN) if previous else None,
    )
    requests_before = client.request_count
    state = _Audit(audit=audit, client=client, lock=lock, now=now, previous=previous,
                   force_full=full)
    errors = state.errors
    try:
        state.lists([
            (funnel, list_id) for funnel in funnels_all()
            if (list_id := funnel_list_id(funnel=funnel))
        ])
        status = BrevoAudit.Status.PARTIAL if errors else BrevoAudit.Status.SUCCESS
    except _Stop as exc:
        errors.append(f"Brevo stopped the audit: {exc}")
        status = BrevoAudit.Status.PARTIAL
    except BrevoAuthError:
        errors.append("Brevo rejected the API key (401)")
        status = BrevoAudit.Status.FAILED
    except RunLockLost as exc:
        errors.append(f"{exc}: audit stopped")
        status = BrevoAudit.Status.FAILED
    except Exception as exc:
        logger.exception("brevo audit #%s failed unexpectedly", audit.pk)
        errors.append(f"unexpected error: {type(exc).__name__}: {exc}")
        status = BrevoAudit.Status.FAILED
    _finish(audit, results=state.results, status=status, errors=errors,
            requests=client.request_count - requests_before, clock=clock)
    return audit


def _finish(
    audit: BrevoAudit, *, results: dict[str, _ListResult], status: str, errors: Iterable[str],
    requests: int, clock: Callable[[], datetime],
) -> None:
    lists = {slug: r.as_json() for slug, r in results.items()}
    audit.lists = lists
    if results and all(r.kind == BrevoAudit.Kind.FULL for r in results.values()):
        audit.kind = BrevoAudit.Kind.FULL
    audit.states_changed = sum(r.changed for r in results.values())
    audit.strangers = sum(r.strangers for r in results.values())
    audit.strangers_sample = [
        {"funnel": slug, "email": email} for slug, r in results.items() for email in r.sample
    ][:STRANGERS_SAMPLE]
    totals = _states_totals()
    audit.in_list = totals.get(BrevoState.IN_LIST, 0)
    audit.unsubscribed = totals.get(BrevoState.UNSUBSCRIBED, 0)
    audit.blacklisted = totals.get(BrevoState.BLACKLISTED, 0)
    audit.missing = totals.get(BrevoState.MISSING, 0)
    audit.brevo_requests = requests
    audit.status = status
    audit.error = redact("; ".join(errors))[:5000]
    audit.finished_at = clock()
    audit.save()
    log = logger.info if status == BrevoAudit.Status.SUCCESS else logger.warning
    log(
        "brevo audit #%s %s (%s): %s contacts read in %s pages, %s states changed, "
        "%s strangers, %s Brevo requests%s",
        audit.pk, status, audit.kind, audit.contacts_read, audit.pages, audit.states_changed,
        audit.strangers, requests, f"; {audit.error}" if audit.error else "",
    )
