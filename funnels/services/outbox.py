"""Push due funnel entries to Brevo and record what Brevo confirmed.

Invariants:
- An entry is already committed (pending) when it gets here; it becomes synced only after
  Brevo confirmed it (an upsert answered 2xx, or an import process reached `completed`),
  and only if its sync_revision is still the one that was sent (the compare-and-set of
  services/entry_sync.py): a purchase recorded while the request was in flight bumps the
  revision, so the entry stays pending and its new state goes out in the next push.
- Every Brevo write is idempotent (upsert with updateEnabled, import with
  updateExistingContacts), so a send repeated after a crash or a lost answer is harmless.
- We never send emailBlacklisted (it would re-subscribe people who unsubscribed).

Failures:
- 401: the key is wrong; stop at once (BrevoAuthError propagates). What was confirmed
  before is marked, everything else stays as it was.
- 400 and other permanent answers for one contact: that contact's entries become failed
  with the reason and no next attempt (the admin's retry resets them); the others go on.
- Transient (429 beyond the client's patience, 5xx streak, timeout, dropped connection):
  the entries become failed with a next attempt time on a capped exponential backoff.
  After MAX_CONSECUTIVE_FAILURES in a row the push stops for this run and leaves the rest
  untouched: Brevo is down, hammering it helps nobody.
- An import whose process ends `failed` (or cannot be confirmed in time) leaves its
  entries pending, with the attempt and the error recorded, for the next run.

One contact, several funnels:
Brevo keeps one contact per email, and its attributes belong to the contact, not to a list.
A person in both funnels is one contact in two lists, so attributes sent per funnel would
overwrite each other: whichever funnel went last decided, and a buyer could be shown as a
non-buyer and keep getting "buy now" emails. So a contact's attributes are built from ALL
of that email's entries (one query per outbox chunk, idx_email_funnel), whichever are due:
- CERTIFICATE_PURCHASED: a purchase is recorded on any of them; CERTIFICATE_PURCHASED_AT:
  the latest such purchase (a calendar date in TIME_ZONE);
- FUNNEL_TYPE: the funnel of the most recent entry (entered_at, then id), among the funnels
  that have a Brevo list (the lists the contact is really in).
Those are the default names. The names are the funnel's (Funnel.attribute_*): each value is
built from the entries of the funnels that write that name, so funnels that share a name
share one value, as above, and a funnel with names of its own gives the person a true
value for it whatever their other funnels say.

A withdrawn purchase empties its date attribute in Brevo. The one way the API description
documents is an import with emptyContactsAttributes=true and the value sent as "" (every
import says so; an empty value only ever stands for a date with no purchase behind it). The
single-contact upsert documents none ("" is not a date, and a value of the wrong type is
ignored), so a contact that must lose a value and may hold one (a due entry that changed
after it was made) goes by import even below the threshold. Withdrawals are rare: the cost
is an import and its few /processes polls each time, against an old date shown for ever.
Each email is sent once per push with those attributes and the list ids of its due entries
(an upsert with both lists, or a row of the import for that set of lists), so one run never
sends two values for the same contact. When a purchase changes one entry, only that entry
becomes due: the person's other entries, already synced, need no resend, because the one
contact record they share has just been sent whole.

Upsert or import (cut-over BREVO_IMPORT_THRESHOLD, default 50)?
Brevo allows 10 contact requests per second, and we keep to 9, so N upserts take about
N/9 seconds and N requests: 50 contacts cost about 5.5 s and 50 requests. One import is a
single POST of up to BREVO_IMPORT_BATCH_SIZE (5,000) contacts plus a few GET /processes
polls, whatever the size; but /processes is limited to about 100 calls an hour, and an
import is asynchronous (seconds to minutes before it completes). Below the threshold the
per-contact upsert is faster end-to-end, confirms each contact on its own (a bad address
fails alone), and spends no /processes budget; at or above it the import wins by orders
of magnitude (a 100,000-contact backfill is ~20 imports, ~40-60 requests). Polls start at
IMPORT_POLL_INTERVAL and grow by half each time (client.wait_for_process), so a typical
import costs 2-6 polls. Imports are grouped by the contacts' list ids because an import's
listIds apply to every contact in it; each group's buffer is flushed when it reaches the
batch size, so the number of imports follows the number of contacts, not the number of
chunks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from funnels.brevo.attributes import DEFAULT_NAMES, AttributeNames
from funnels.brevo.client import BrevoClient
from funnels.brevo.errors import (
    BrevoAuthError,
    BrevoError,
    BrevoPermanentError,
)
from funnels.brevo.masking import mask_email
from funnels.locks import RunLock
from funnels.models import FunnelEntry, SyncRun, SyncRunItem, SyncStatus
from funnels.selectors.brevo_state import brevo_opted_out
from funnels.selectors.funnels import funnel_attribute_names, funnel_list_ids
from funnels.selectors.outbox import DueEntry, PersonEntry, outbox_due_chunk, outbox_people
from funnels.services.entry_sync import entries_defer, entries_mark_failed, entries_mark_synced

logger = logging.getLogger("funnels.outbox")

IMPORT_POLL_INTERVAL = 1.0
IMPORT_TIMEOUT = 300.0
BACKOFF_BASE = timedelta(minutes=5)
BACKOFF_CAP = timedelta(hours=6)
MAX_CONSECUTIVE_FAILURES = 3
_UPDATE_CHUNK = 1000


@dataclass
class OutboxResult:
    contacts_sent: int = 0
    contacts_failed: int = 0
    entries_synced: int = 0
    entries_failed: int = 0
    entries_deferred: int = 0  # still pending: import not confirmed, revision moved on
    imports: int = 0
    upserts: int = 0
    stopped: str = ""

    @property
    def had_failures(self) -> bool:
        return bool(self.contacts_failed or self.stopped)


def retry_delay(*, attempts: int) -> timedelta:
    """Capped exponential backoff after `attempts` failed sends (1 -> 5 min, 2 -> 10...)."""
    exponent = max(0, attempts - 1)
    if exponent > 20:
        return BACKOFF_CAP
    return min(BACKOFF_CAP, BACKOFF_BASE * (2**exponent))


def contact_attributes(
    *,
    entries: Iterable[PersonEntry],
    funnels_with_list: Collection[str] | None = None,
    names: Mapping[str, AttributeNames] | None = None,
) -> dict:
    """Brevo attributes of one contact, from all of its email's entries (see the module
    docstring): purchased if any entry is, FUNNEL_TYPE of the latest entry of a funnel in
    `funnels_with_list` (of any funnel when None, or when none is). Each value comes from
    the entries of the funnels that write that attribute (`names`, funnel slug -> its
    attribute names; today's names for a funnel not in it)."""
    return _attribute_values(entries, funnels_with_list=funnels_with_list, names=names)[0]


def _attribute_values(
    entries: Iterable[PersonEntry],
    *,
    funnels_with_list: Collection[str] | None,
    names: Mapping[str, AttributeNames] | None,
) -> tuple[dict, tuple[str, ...]]:
    entries = list(entries)
    if not entries:
        raise ValueError("a contact has at least one entry")
    names = names or {}
    writers: dict[tuple[str, str], list[PersonEntry]] = defaultdict(list)
    for entry in entries:
        written = names.get(entry.funnel_type, DEFAULT_NAMES)
        for name, role in written.roles().items():
            writers[(role, name)].append(entry)
    attributes: dict = {}
    emptied: list[str] = []
    for (role, name), group in sorted(writers.items()):
        if role == "funnel_type":
            listed = [
                e for e in group
                if funnels_with_list is None or e.funnel_type in funnels_with_list
            ]
            attributes[name] = max(listed or group, key=lambda e: (e.entered_at, e.id)).funnel_type
        elif role == "purchased":
            attributes[name] = any(e.certificate_purchased for e in group)
        else:
            dates = [
                e.certificate_purchased_at for e in group
                if e.certificate_purchased and e.certificate_purchased_at
            ]
            if dates:
                # A calendar date as the business sees it (TIME_ZONE), which is what a
                # Brevo date attribute holds.
                attributes[name] = timezone.localtime(max(dates)).date().isoformat()
            else:
                emptied.append(name)
    return attributes, tuple(emptied)


@dataclass
class _Contact:
    """One email as it goes to Brevo: its due entries, the lists they belong to, and the
    attributes built from all of the person's entries."""

    email: str
    list_ids: tuple[int, ...]
    attributes: dict
    entries: list[DueEntry] = field(default_factory=list)
    # Date attributes to empty in Brevo (no purchase behind them).
    emptied: tuple[str, ...] = ()

    @property
    def must_empty(self) -> bool:
        """Brevo may hold an old value in an attribute that must now be empty: one of the
        due entries changed since it was made (a purchase found, changed or withdrawn, or
        an operator's retry). A contact sent for the first time has nothing to empty."""
        return bool(self.emptied) and any(e.sync_revision > 1 for e in self.entries)

    def import_row(self) -> dict:
        # An empty value is how an import (with emptyContactsAttributes) erases one.
        return {"email": self.email,
                "attributes": {**self.attributes, **dict.fromkeys(self.emptied, "")}}


def _contacts_of(
    rows: list[DueEntry],
    *,
    list_ids: dict[str, int | None],
    names: Mapping[str, AttributeNames],
) -> list[_Contact]:
    """The chunk's due entries (all with a list) as contacts, one per email; one query for
    all of those people's entries."""
    people = outbox_people(emails=(row.email for row in rows))
    funnels_with_list = {slug for slug, list_id in list_ids.items() if list_id}
    due: dict[str, list[DueEntry]] = defaultdict(list)
    for row in rows:
        due[row.email].append(row)
    contacts = []
    for email, entries in due.items():
        attributes, emptied = _attribute_values(
            _person(people.get(email, []), due=entries),
            funnels_with_list=funnels_with_list, names=names,
        )
        contacts.append(
            _Contact(
                email=email,
                list_ids=tuple(sorted({list_ids[e.funnel_type] for e in entries})),
                attributes=attributes,
                entries=entries,
                emptied=emptied,
            )
        )
    return contacts


def _person(entries: list[PersonEntry], *, due: list[DueEntry]) -> list[PersonEntry]:
    """The person's entries as read, where the due ones win: they carry the revision that
    is being sent, and the attributes must say what that revision says."""
    by_id = {e.id: e for e in entries}
    for entry in due:
        by_id[entry.id] = PersonEntry(
            id=entry.id, email=entry.email, funnel_type=entry.funnel_type,
            entered_at=entry.entered_at, certificate_purchased=entry.certificate_purchased,
            certificate_purchased_at=entry.certificate_purchased_at,
        )
    return list(by_id.values())


class _Buffers:
    """Contacts waiting to be sent, grouped by their list ids (an import's listIds apply to
    all of its rows). An email still waiting absorbs a later chunk's entries, so that it is
    sent once, to the union of their lists."""

    def __init__(self, *, batch_size: int) -> None:
        self.batch_size = batch_size
        self.groups: dict[tuple[int, ...], dict[str, _Contact]] = defaultdict(dict)
        self.waiting: dict[str, tuple[int, ...]] = {}

    def add(self, contact: _Contact) -> tuple[int, ...] | None:
        """Queue a contact; returns its group if that made the group full."""
        group = self.waiting.pop(contact.email, None)
        if group is not None:
            earlier = self.groups[group].pop(contact.email)
            contact = _Contact(
                email=contact.email,
                list_ids=tuple(sorted({*earlier.list_ids, *contact.list_ids})),
                attributes=contact.attributes,
                entries=earlier.entries + contact.entries,
                emptied=contact.emptied,
            )
        self.groups[contact.list_ids][contact.email] = contact
        self.waiting[contact.email] = contact.list_ids
        if len(self.groups[contact.list_ids]) >= self.batch_size:
            return contact.list_ids
        return None

    def take(self, group: tuple[int, ...]) -> list[_Contact]:
        contacts = list(self.groups.pop(group, {}).values())
        for contact in contacts:
            del self.waiting[contact.email]
        return contacts

    def groups_waiting(self) -> list[tuple[int, ...]]:
        return [group for group, contacts in self.groups.items() if contacts]


def _error_text(exc: BrevoError) -> str:
    # BrevoError messages are already scrubbed of the key and of addresses.
    return str(exc)[:1000]


def _error_reason(exc: BrevoError) -> str:
    if exc.code:
        return exc.code[:50]
    if exc.status:
        return f"http_{exc.status}"
    return type(exc).__name__.lower()[:50]


class _Pusher:
    def __init__(
        self,
        *,
        run: SyncRun,
        client: BrevoClient,
        now: datetime,
        lock: RunLock | None,
        threshold: int,
        poll_interval: float,
        import_timeout: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.run = run
        self.client = client
        self.now = now
        self.lock = lock
        self.threshold = threshold
        self.poll_interval = poll_interval
        self.import_timeout = import_timeout
        self.clock = clock
        self.result = OutboxResult()
        self.consecutive_failures = 0

    @property
    def stopped(self) -> bool:
        return bool(self.result.stopped)

    def _failure(self) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES and not self.stopped:
            self.result.stopped = (
                f"stopped after {self.consecutive_failures} consecutive Brevo failures"
            )
            logger.warning("outbox: %s; the rest stays due for the next run", self.result.stopped)

    # -- flushing ---------------------------------------------------------------------

    def flush(self, list_ids: tuple[int, ...], contacts: list[_Contact]) -> None:
        """Send contacts that go to the same lists: one import, or one upsert each."""
        if not contacts:
            return
        if len(contacts) >= self.threshold:
            self._import(list_ids, contacts)
            return
        # A single-contact write has no documented way to empty an attribute (an empty
        # string in a date attribute is "of the wrong type" and ignored), the import has
        # one (emptyContactsAttributes): the few contacts that must lose a value, a
        # withdrawn purchase's date, go by import whatever their number.
        emptying = [c for c in contacts if c.must_empty]
        others = [c for c in contacts if not c.must_empty]
        if others:
            self._upsert(list_ids, others)
        if emptying and not self.stopped:
            self._import(list_ids, emptying)

    def _import(self, list_ids: tuple[int, ...], contacts: list[_Contact]) -> None:
        entries = [e for c in contacts for e in c.entries]
        payload = [c.import_row() for c in contacts]
        self.result.imports += 1
        try:
            process_id = self.client.import_contacts(
                contacts=payload, list_ids=list(list_ids), erase_empty=True
            )
            self.client.wait_for_process(
                process_id=process_id,
                poll_interval=self.poll_interval,
                timeout=self.import_timeout,
            )
        except BrevoAuthError:
            raise
        except BrevoError as exc:
            logger.warning(
                "outbox: import of %d contacts to lists %s not confirmed, they stay pending: %s",
                len(contacts), _lists(list_ids), _error_text(exc),
            )
            self.result.contacts_failed += len(contacts)
            self._defer(entries, exc)
            self._failure()
            return
        self.consecutive_failures = 0
        logger.info(
            "outbox: imported %d contacts to lists %s (process %s)",
            len(contacts), _lists(list_ids), process_id,
        )
        self._mark_synced(entries, contacts=len(contacts))

    def _upsert(self, list_ids: tuple[int, ...], contacts: list[_Contact]) -> None:
        confirmed: list[_Contact] = []
        try:
            for contact in contacts:
                if self.stopped:
                    break
                self.result.upserts += 1
                try:
                    self.client.upsert_contact(
                        email=contact.email, attributes=contact.attributes,
                        list_ids=list(list_ids),
                    )
                except BrevoAuthError:
                    raise
                except BrevoPermanentError as exc:
                    # About this contact only (a 400): record it and go on with the others.
                    self.consecutive_failures = 0
                    self._fail(contact, exc, permanent=True)
                except BrevoError as exc:
                    self._fail(contact, exc, permanent=False)
                    self._failure()
                else:
                    self.consecutive_failures = 0
                    confirmed.append(contact)
        finally:
            # Also on a 401 half-way: what Brevo confirmed is recorded as confirmed.
            if confirmed:
                self._mark_synced(
                    [e for c in confirmed for e in c.entries], contacts=len(confirmed)
                )
        logger.info(
            "outbox: upserted %d of %d contacts to lists %s",
            len(confirmed), len(contacts), _lists(list_ids),
        )

    # -- outcomes (funnels/services/entry_sync.py: compare-and-set on sync_revision) ----

    def _mark_synced(self, entries: list[DueEntry], *, contacts: int) -> None:
        with transaction.atomic():
            marked = entries_mark_synced(entries=entries, at=self.clock())
            self._check_lock()
        self.result.contacts_sent += contacts
        self.result.entries_synced += marked
        self.result.entries_deferred += len(entries) - marked

    def _fail(self, contact: _Contact, exc: BrevoError, *, permanent: bool) -> None:
        reason = _error_reason(exc)
        text = _error_text(exc)
        logger.warning(
            "outbox: Brevo %s %s for %s: %s",
            "refused" if permanent else "failed (will retry)",
            reason, mask_email(contact.email), text,
        )
        stamp = self.clock()
        # Each entry backs off from its own count of attempts.
        by_next_attempt: dict[datetime | None, list[DueEntry]] = defaultdict(list)
        for entry in contact.entries:
            next_attempt = (
                None if permanent else self.now + retry_delay(attempts=entry.sync_attempts + 1)
            )
            by_next_attempt[next_attempt].append(entry)
        marked = 0
        with transaction.atomic():
            for next_attempt, entries in by_next_attempt.items():
                marked += entries_mark_failed(
                    entries=entries, error=text, next_attempt_at=next_attempt, at=stamp
                )
            SyncRunItem.objects.bulk_create(
                SyncRunItem(
                    run=self.run, action=SyncRunItem.Action.FAILED, reason=reason,
                    email=contact.email, funnel_type=entry.funnel_type,
                    test_id=None, entry_id=entry.id,
                    detail=("permanent: " if permanent else "will retry: ") + text,
                )
                for entry in contact.entries
            )
            self._check_lock()
        self.result.contacts_failed += 1
        self.result.entries_failed += marked
        self.result.entries_deferred += len(contact.entries) - marked

    def _defer(self, entries: list[DueEntry], exc: BrevoError) -> None:
        """Not confirmed: keep pending for the next run, with the attempt recorded."""
        with transaction.atomic():
            entries_defer(entries=entries, error=_error_text(exc), at=self.clock())
            self._check_lock()
        self.result.entries_deferred += len(entries)

    def _fail_unroutable(self, entries: list[DueEntry]) -> None:
        """Entries of a funnel with no Brevo list: nothing to send them to."""
        stamp = self.clock()
        by_funnel: dict[str, list[DueEntry]] = defaultdict(list)
        for entry in entries:
            by_funnel[entry.funnel_type].append(entry)
        with transaction.atomic():
            for funnel_type, funnel_entries in by_funnel.items():
                entries_mark_failed(
                    entries=funnel_entries,
                    error=f"no Brevo list id for funnel {funnel_type!r}",
                    next_attempt_at=None, at=stamp,
                )
            self._check_lock()
        self.result.entries_failed += len(entries)
        self.result.contacts_failed += len({(e.email, e.funnel_type) for e in entries})

    def _check_lock(self) -> None:
        if self.lock is not None:
            self.lock.check()


def outbox_push(
    *,
    run: SyncRun,
    client: BrevoClient,
    now: datetime,
    lock: RunLock | None = None,
    batch_size: int | None = None,
    threshold: int | None = None,
    poll_interval: float = IMPORT_POLL_INTERVAL,
    import_timeout: float = IMPORT_TIMEOUT,
    clock: Callable[[], datetime] = timezone.now,
    list_ids: dict[str, int | None] | None = None,
) -> OutboxResult:
    """Send every entry due at `now`; see the module docstring for the rules. `list_ids`:
    the run's (looked up once), else read now."""
    batch_size = batch_size or settings.BREVO_IMPORT_BATCH_SIZE
    threshold = threshold or settings.BREVO_IMPORT_THRESHOLD
    list_ids = funnel_list_ids() if list_ids is None else list_ids
    names = funnel_attribute_names()
    pusher = _Pusher(
        run=run, client=client, now=now, lock=lock, threshold=threshold,
        poll_interval=poll_interval, import_timeout=import_timeout, clock=clock,
    )
    buffers = _Buffers(batch_size=batch_size)
    after_id = 0
    while not pusher.stopped:
        rows = outbox_due_chunk(now=now, after_id=after_id, limit=batch_size)
        if not rows:
            break
        after_id = rows[-1].id
        rows = _without_opted_out(rows, run=run, clock=clock)
        routable = [row for row in rows if list_ids.get(row.funnel_type)]
        unroutable = [row for row in rows if not list_ids.get(row.funnel_type)]
        for contact in (
            _contacts_of(routable, list_ids=list_ids, names=names) if routable else []
        ):
            full = buffers.add(contact)
            if full is not None:
                pusher.flush(full, buffers.take(full))
                if pusher.stopped:
                    break
        if unroutable:
            pusher._fail_unroutable(unroutable)
    for group in buffers.groups_waiting():
        if not pusher.stopped:
            pusher.flush(group, buffers.take(group))
    if pusher.result.had_failures:
        _record_left_for_later(run=run, stopped=pusher.stopped)
    return pusher.result


def _without_opted_out(rows: list[DueEntry], *, run: SyncRun,
                       clock: Callable[[], datetime]) -> list[DueEntry]:
    """A person's opt-out always wins: entries of people the Brevo audit found blacklisted,
    or unsubscribed from that funnel's list, are never sent (naming the list again would
    subscribe them again). They leave the outbox as `opted_out`, one run item each."""
    opted_out = brevo_opted_out(emails=(row.email for row in rows))
    keep = [r for r in rows if not opted_out.covers(email=r.email, funnel_type=r.funnel_type)]
    if len(keep) == len(rows):
        return rows
    stamp = clock()
    with transaction.atomic():
        for row in rows:
            if opted_out.covers(email=row.email, funnel_type=row.funnel_type):
                FunnelEntry.objects.filter(id=row.id, sync_revision=row.sync_revision).update(
                    sync_status=SyncStatus.OPTED_OUT, sync_next_attempt_at=None,
                    updated_at=stamp,
                )
                SyncRunItem.objects.create(
                    run=run, action=SyncRunItem.Action.SKIPPED, reason="brevo_opted_out",
                    email=row.email, funnel_type=row.funnel_type, entry_id=row.id,
                )
    return keep


def _record_left_for_later(*, run: SyncRun, stopped: bool) -> int:
    """One `deferred` item per entry still waiting for Brevo after a run that did not get
    everything through, so the run's page lists every contact left for the next run.
    Pending rows are read in id order on idx_fe_due, like the outbox reads them."""
    reason = "brevo_stopped" if stopped else "brevo_not_confirmed"
    written = 0
    after_id = 0
    while True:
        rows = list(
            FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING, id__gt=after_id)
            .order_by("id").values_list("id", "email", "funnel_type", "test_id")[:_UPDATE_CHUNK]
        )
        if not rows:
            return written
        after_id = rows[-1][0]
        SyncRunItem.objects.bulk_create(
            SyncRunItem(
                run=run, action=SyncRunItem.Action.DEFERRED, reason=reason, email=email,
                funnel_type=funnel_type, test_id=test_id, entry_id=entry_id,
            )
            for entry_id, email, funnel_type, test_id in rows
        )
        written += len(rows)


def _lists(list_ids: tuple[int, ...]) -> str:
    return ",".join(str(list_id) for list_id in list_ids)
