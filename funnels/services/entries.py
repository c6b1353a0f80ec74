"""Decidable test results -> funnel entries: the funnel rules, planned per chunk.

The results source (services/results.py) hands the planner only results that can be
decided: a valid email, a test id, a completion time not in the future. The planner
applies the funnel rules (kind and test ids, active, list id, maximum age, re-entry) and
`entries_write` writes the chunk inside the transaction that moves the watermark
(services/modx_reader.py), so a crash between chunks loses nothing and repeats nothing.

Times. `entered_at` is when the person completed the test (MODX Datep), so a purchase
made between the test and our run still counts as a conversion. A completion time within
the allowed clock skew after the run's time is entered at the run's time (noted in the
item's detail): an entry time in the future would hide the person from every report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connections
from django.utils import timezone

from funnels.emails import email_check
from funnels.codes import SkipReason
from funnels.models import ExperimentGroup, Funnel, FunnelEntry, SyncRun, SyncRunItem, SyncStatus
from funnels.selectors.candidates import Candidate
from funnels.services.control_groups import control_group_of
from funnels.services.report_rollup import report_days_dirty_mark
from funnels.selectors.funnels import ExistingEntry, funnel_accepts, funnel_entries_existing


@dataclass
class ChunkOutcome:
    results_read: int = 0
    added: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    last_id: int = 0
    # Existing entry id -> its new previous_entered_at, when a late result enters the
    # same person earlier (written with the chunk's entries).
    previous_updates: dict[int, datetime | None] = field(default_factory=dict)
    # (email, funnel) of the entries held out in a control group: no Brevo contact.
    control_keys: set[tuple[str, str]] = field(default_factory=set)

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())


class EntryPlanner:
    """Decides, candidate by candidate, what a run does; remembers what this run added.

    The memory spans chunks so that a dry run (which commits nothing) reports a person's
    second result in a later chunk the same way a live run would not add it twice.
    """

    def __init__(self, *, funnels: list[Funnel], list_ids: dict[str, int | None]) -> None:
        self.funnels = funnels
        self.list_ids = list_ids
        self._added_keys: set[tuple] = set()
        # Entries planned from now on are held back from Brevo (the flood guard tripped).
        self.hold = False

    @staticmethod
    def reentry_key(funnel: Funnel, email: str, test_id: int) -> tuple:
        if funnel.reentry == Funnel.Reentry.PER_TEST:
            return (email, funnel.slug, test_id)
        return (email, funnel.slug)

    @staticmethod
    def qualifies(funnel: Funnel, candidate: Candidate) -> bool:
        return funnel_accepts(funnel=funnel, kind=candidate.kind, test_id=candidate.test_id)

    def plan_chunk(
        self, *, run: SyncRun, candidates: list[Candidate], now: datetime
    ) -> tuple[list[FunnelEntry], list[SyncRunItem], ChunkOutcome]:
        """What `run` does with these candidates; a dry run (`run.dry_run`) plans only."""
        dry_run = run.dry_run
        outcome = ChunkOutcome(results_read=len(candidates))
        if candidates:
            outcome.last_id = candidates[-1].result_id
        checked = [(c, email_check(c.raw_email)) for c in candidates]
        existing = funnel_entries_existing(
            emails=[check.email for _, check in checked if check.ok],
            funnel_types=[f.slug for f in self.funnels],
        )
        existing_once = {(email, slug) for email, slug, _ in existing}
        add_action = SyncRunItem.Action.WOULD_ADD if dry_run else SyncRunItem.Action.ADDED
        entries: list[FunnelEntry] = []
        items: list[SyncRunItem] = []

        def skip(candidate: Candidate, reason: str, *, email: str = "", slug: str = "",
                 detail: str = "") -> None:
            outcome.skipped_by_reason[reason] += 1
            items.append(
                SyncRunItem(
                    run=run, action=SyncRunItem.Action.SKIPPED, reason=reason,
                    email=email[:255], funnel_type=slug, test_id=candidate.test_id,
                    source_id=candidate.result_id, detail=detail,
                )
            )

        for candidate, check in checked:
            if not check.ok:
                skip(candidate, check.reason, email=(candidate.raw_email or "").strip())
                continue
            email = check.email
            if candidate.test_id is None:
                skip(candidate, SkipReason.NO_TEST_ID, email=email)
                continue
            matching = [f for f in self.funnels if self.qualifies(f, candidate)]
            if not matching:
                skip(candidate, SkipReason.NO_MATCHING_FUNNEL, email=email,
                     detail=f"test kind: {candidate.kind}")
                continue
            entered_at, detail = _entry_time(candidate, now=now)
            for funnel in matching:
                if not funnel.active:
                    skip(candidate, SkipReason.FUNNEL_INACTIVE, email=email, slug=funnel.slug)
                    continue
                oldest = funnel_oldest_entry_time(funnel=funnel, now=now)
                if candidate.completed_at < oldest:
                    skip(candidate, SkipReason.TOO_OLD, email=email, slug=funnel.slug,
                         detail=f"completed {candidate.completed_at.isoformat()}, "
                                f"before {oldest.isoformat()}")
                    continue
                if not self.list_ids.get(funnel.slug):
                    skip(candidate, SkipReason.NO_LIST_ID, email=email, slug=funnel.slug)
                    continue
                key = self.reentry_key(funnel, email, candidate.test_id)
                if key in self._added_keys:
                    skip(candidate, SkipReason.DUPLICATE_IN_BATCH, email=email, slug=funnel.slug)
                    continue
                if funnel.reentry == Funnel.Reentry.PER_TEST:
                    already = (email, funnel.slug, candidate.test_id) in existing
                else:
                    already = (email, funnel.slug) in existing_once
                if already:
                    skip(candidate, SkipReason.ALREADY_IN_FUNNEL, email=email, slug=funnel.slug)
                    continue
                self._added_keys.add(key)
                outcome.added += 1
                group = control_group_of(
                    funnel_slug=funnel.slug, email=email, share=funnel.control_share
                )
                control = group == ExperimentGroup.CONTROL
                if control:
                    outcome.control_keys.add((email, funnel.slug))
                    # Never sent (the outbox does not read this status), so never held.
                    status = SyncStatus.CONTROL
                else:
                    status = SyncStatus.HELD if self.hold else SyncStatus.PENDING
                entry = FunnelEntry(
                    email=email,
                    funnel_type=funnel.slug,
                    user_id=candidate.result_id,
                    test_id=candidate.test_id,
                    entered_at=entered_at,
                    test_completed_at=candidate.completed_at,
                    sync_status=status,
                    experiment_group=group,
                    control_period=funnel.control_period,
                    # A held-out person's funnel starts now; a treated one's when Brevo
                    # first confirms the contact (services/outbox.py).
                    funnel_started_at=now if control else None,
                    run=None if dry_run else run,
                )
                if not dry_run:
                    entries.append(entry)
                items.append(
                    SyncRunItem(
                        run=run, action=add_action, email=email, funnel_type=funnel.slug,
                        test_id=candidate.test_id, source_id=candidate.result_id,
                        entry=None if dry_run else entry,
                        detail=_with_group(detail, funnel=funnel, group=group),
                    )
                )
        outcome.previous_updates = previous_link(entries=entries, existing=existing)
        return entries, items, outcome


def _with_group(detail: str, *, funnel: Funnel, group: str) -> str:
    """The plan line says the group once the funnel has a control group (or had one)."""
    if not funnel.control_share and not funnel.control_period:
        return detail
    text = f"group: {group} (control period {funnel.control_period}, " \
           f"{funnel.control_share}% control)"
    return f"{detail}; {text}" if detail else text


def funnel_oldest_entry_time(*, funnel: Funnel, now: datetime) -> datetime:
    """The earliest completion time the funnel still enters: the start of the local day
    `max_age_days` before today, the same day boundary as the first run's look-back."""
    days = funnel.max_age_days or settings.FUNNELS_MAX_AGE_DAYS
    day = timezone.localtime(now).date() - timedelta(days=days)
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(settings.TIME_ZONE))


def previous_link(
    *, entries: list[FunnelEntry], existing: Mapping[tuple, ExistingEntry]
) -> dict[int, datetime | None]:
    """Set previous_entered_at on new `entries` (unsaved, in creation order) and return
    the existing entries whose previous_entered_at must change because of them.

    A person's entries in a funnel are ordered by (entered_at, id), as in migration 0008;
    new entries get ids above every existing one, in list order.
    """
    timelines: dict[tuple[str, str], list] = defaultdict(list)
    for position, entry in enumerate(entries):
        timelines[(entry.funnel_type, entry.email)].append(
            (entry.entered_at, 1, position, entry)
        )
    if not timelines:
        return {}
    for (email, slug, _test_id), known in existing.items():
        timeline = timelines.get((slug, email))
        if timeline is not None:
            timeline.append((known.entered_at, 0, known.id, known))
    updates: dict[int, datetime | None] = {}
    for timeline in timelines.values():
        timeline.sort(key=lambda item: item[:3])
        previous = None
        for entered_at, is_new, _order, row in timeline:
            if is_new:
                row.previous_entered_at = previous
            elif row.previous_entered_at != previous:
                updates[row.id] = previous
            previous = entered_at
    return updates


def entries_previous_refresh(*, keys: Iterable[tuple[str, str]], chunk_size: int = 500) -> int:
    """Recompute previous_entered_at for every entry of these (funnel_type, email)
    people, for writers that add entries without the planner (legacy adoption, test
    factories). Returns how many rows changed."""
    by_funnel: dict[str, set[str]] = defaultdict(set)
    for funnel_type, email in keys:
        by_funnel[funnel_type].add(email)
    changed = 0
    for funnel_type, emails in by_funnel.items():
        ordered = sorted(emails)
        for start in range(0, len(ordered), chunk_size):
            rows = FunnelEntry.objects.filter(
                funnel_type=funnel_type, email__in=ordered[start:start + chunk_size]
            ).order_by("email", "entered_at", "id").values_list(
                "id", "email", "entered_at", "previous_entered_at"
            )
            updates: dict[datetime | None, list[int]] = defaultdict(list)
            changed_times: list[datetime] = []
            person, previous = None, None
            for pk, email, entered_at, stored in rows:
                if email != person:
                    person, previous = email, None
                if stored != previous:
                    updates[previous].append(pk)
                    changed_times.append(entered_at)
                previous = entered_at
            for value, ids in updates.items():
                changed += FunnelEntry.objects.filter(id__in=ids).update(
                    previous_entered_at=value
                )
            # The report's rollup counts these days again (services/report_rollup.py).
            report_days_dirty_mark(times=changed_times)
    return changed


def _entry_time(candidate: Candidate, *, now: datetime) -> tuple[datetime, str]:
    """When the person entered: when they completed the test. A completion time a little
    after `now` (within the clock skew the results source allows; later ones wait) is taken
    as `now`: an entry time in the future would hide the person from every report."""
    completed = candidate.completed_at
    if completed is None:  # never planned: such a result waits on the recheck list
        raise ValueError(f"result #{candidate.result_id} has no completion time")
    if completed > now:
        return now, (
            f"completion time {completed.isoformat()} is slightly after the run's time: "
            "entered at the run's time"
        )
    return completed, ""


def entries_write(
    *, entries: list[FunnelEntry], items: list[SyncRunItem], outcome: ChunkOutcome, run: SyncRun
) -> None:
    """Write a planned chunk (live): its entries, the previous-entry links it changes and
    its items. Call inside the transaction that moves the reader's watermark."""
    created = FunnelEntry.objects.bulk_create(entries, batch_size=500)
    _ensure_pks(created, run=run)
    # Rare (a late result entering a person before an entry they already have): one
    # UPDATE per changed row. No sync_revision bump: Brevo never sees this column.
    changed_times = []
    for pk, previous in outcome.previous_updates.items():
        FunnelEntry.objects.filter(pk=pk).update(previous_entered_at=previous)
    if outcome.previous_updates:
        changed_times = list(FunnelEntry.objects.filter(
            pk__in=list(outcome.previous_updates)
        ).values_list("entered_at", flat=True))
    # The report's rollup counts these days again (services/report_rollup.py).
    report_days_dirty_mark(times=[e.entered_at for e in entries] + changed_times)
    # bulk_create copies each entry's new primary key into item.entry_id.
    SyncRunItem.objects.bulk_create(items, batch_size=1000)


def _ensure_pks(entries: list[FunnelEntry], *, run: SyncRun) -> None:
    """Backends that cannot return ids from a bulk insert: one query to fetch them."""
    missing = [e for e in entries if e.pk is None]
    if not missing:
        return
    if connections["default"].features.can_return_rows_from_bulk_insert:
        return
    ids = {
        (email, slug, test_id): pk
        for pk, email, slug, test_id in FunnelEntry.objects.filter(
            run=run, user_id__in=[e.user_id for e in missing]
        ).values_list("id", "email", "funnel_type", "test_id")
    }
    for entry in missing:
        entry.pk = ids[(entry.email, entry.funnel_type, entry.test_id)]
