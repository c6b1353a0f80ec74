"""Why is (or isn't) a person in each funnel? For the explain_funnel command."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.utils import timezone
from django.utils.translation import gettext as _

from funnels.emails import email_check
from funnels.labels import reason_label
from funnels.models import (
    ExperimentGroup, Funnel, FunnelEntry, RecheckRow, SyncRunItem, SyncStatus,
)
from funnels.services.control_groups import control_group_of
from funnels.codes import SkipReason, Source
from funnels.selectors.candidates import (
    Candidate,
    candidates_for_email,
)
from funnels.selectors.funnels import (
    WatermarkState,
    funnel_accepts,
    funnels_all,
    watermark_state_get,
)


@dataclass
class FunnelVerdict:
    funnel: Funnel
    member: bool
    lines: list[str] = field(default_factory=list)


@dataclass
class Explanation:
    email: str | None
    invalid_reason: str | None
    results: list[Candidate]
    verdicts: list[FunnelVerdict]
    # MODX rows of this person that wait on a recheck list (results and payments).
    waiting: list[RecheckRow] = field(default_factory=list)

    def waiting_lines(self) -> list[str]:
        return [waiting_line(row) for row in self.waiting]


def waiting_line(row: RecheckRow) -> str:
    what = (_("result #%(id)s") if row.source == Source.RESULTS else _("payment #%(id)s")) % {
        "id": row.modx_id
    }
    return _("%(what)s waits for a recheck since %(since)s: %(reason)s; read again by "
             "every run until %(until)s") % {
        "what": what, "since": _when(row.first_seen_at), "reason": reason_label(row.reason),
        "until": _when(row.recheck_until),
    }


def recheck_rows_for(*, email: str, result_ids: list[int]) -> list[RecheckRow]:
    """A person's waiting rows: by the email MODX has now, or by their results' ids (a
    result found by a looser spelling). Two indexed look-ups."""
    rows = {
        (row.source, row.modx_id): row
        for row in RecheckRow.objects.filter(email=email).order_by("source", "modx_id")
    }
    if result_ids:
        for row in RecheckRow.objects.filter(source=Source.RESULTS, modx_id__in=result_ids):
            rows[(row.source, row.modx_id)] = row
    return [rows[key] for key in sorted(rows)]


def _when(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z") if moment else "?"


def _entry_line(entry: FunnelEntry) -> str:
    line = _("in it since %(when)s (test %(test)s, MODX result #%(result)s)") % {
        "when": _when(entry.entered_at), "test": entry.test_id, "result": entry.user_id or "?",
    }
    if entry.sync_status == SyncStatus.SYNCED and entry.synced_at is None:
        # Only an adopted entry is synced without a time: the earlier outbox's success.
        brevo = _("in Brevo (sent by the earlier tool, confirmed by its outbox)")
    elif entry.sync_status == SyncStatus.SYNCED:
        brevo = _("in Brevo since %(when)s") % {"when": _when(entry.synced_at)}
    elif entry.sync_status == SyncStatus.FAILED:
        brevo = _("Brevo failed: %(error)s") % {"error": entry.sync_last_error or "?"}
    elif entry.sync_status == SyncStatus.CONTROL:
        brevo = _("never sent to Brevo: control group of period %(period)s") % {
            "period": entry.control_period
        }
    elif entry.sync_status == SyncStatus.OPTED_OUT:
        brevo = _("not sent: the person opted out in Brevo")
    else:
        brevo = _("waiting to be sent to Brevo")
    line += "; " + brevo
    if entry.brevo_state:
        line += "; " + _("Brevo audit: %(state)s (read %(when)s)") % {
            "state": entry.get_brevo_state_display(), "when": _when(entry.brevo_seen_at),
        }
    elif entry.synced_revision:
        line += "; " + _("Brevo audit: not read yet")
    if entry.certificate_purchased:
        line += "; " + _("certificate bought %(when)s") % {
            "when": _when(entry.certificate_purchased_at)
        }
    return line


def _group_line(funnel: Funnel, *, email: str) -> str:
    """The person's group under the funnel's current share (the hash is stable, so this is
    the group of every entry they get in this period)."""
    group = control_group_of(funnel_slug=funnel.slug, email=email, share=funnel.control_share)
    text = (_("control group (held out from Brevo)") if group == ExperimentGroup.CONTROL
            else _("treatment group (sent to Brevo)"))
    return _("group in control period %(period)s (%(share)s%% control): %(group)s") % {
        "period": funnel.control_period, "share": funnel.control_share, "group": text,
    }


def funnel_explain(*, raw_email: str) -> Explanation:
    check = email_check(raw_email)
    funnels = funnels_all()
    if not check.ok:
        verdicts = [
            FunnelVerdict(
                f, False,
                [_("not in it: invalid email (%(r)s)") % {"r": reason_label(check.reason)}],
            )
            for f in funnels
        ]
        return Explanation(None, check.reason, [], verdicts)
    email = check.email
    results = candidates_for_email(email=email)
    watermark = watermark_state_get(key=Source.RESULTS)
    entries: dict[str, list[FunnelEntry]] = {}
    for entry in FunnelEntry.objects.filter(email=email).order_by("entered_at", "id"):
        entries.setdefault(entry.funnel_type, []).append(entry)
    result_ids = [r.result_id for r in results]
    items: dict[tuple[int, str], SyncRunItem] = {}
    if result_ids:
        # Latest live-run verdict per (result, funnel); dry-run plans do not decide anything.
        for item in (
            SyncRunItem.objects.filter(
                source_id__in=result_ids,
                run__dry_run=False,
                action=SyncRunItem.Action.SKIPPED,
                reason__in=SkipReason.OF_RESULTS,
            ).order_by("id")
        ):
            items[(item.source_id, item.funnel_type)] = item
    waiting = recheck_rows_for(email=email, result_ids=result_ids)
    waiting_results = {row.modx_id: row for row in waiting if row.source == Source.RESULTS}
    verdicts = []
    for funnel in funnels:
        if funnel.slug in entries:
            verdicts.append(
                FunnelVerdict(funnel, True, [_entry_line(e) for e in entries[funnel.slug]])
            )
        else:
            verdicts.append(
                FunnelVerdict(
                    funnel, False, [_why_not(funnel, results, watermark, items, waiting_results)]
                )
            )
        if funnel.control_share or funnel.control_period:
            verdicts[-1].lines.append(_group_line(funnel, email=email))
    return Explanation(email, None, results, verdicts, waiting)


def _why_not(
    funnel: Funnel, results: list[Candidate], watermark: WatermarkState | None, items,
    waiting: dict[int, RecheckRow],
) -> str:
    if not results:
        return _("not in it: no test result in MODX for this email")
    waits = [waiting[r.result_id] for r in results if r.result_id in waiting]
    if waits and not any(r.result_id not in waiting for r in results):
        # Nothing else to go by: every result of the person waits (no time, no test...).
        return _("not in it yet: ") + "; ".join(waiting_line(row) for row in waits)
    qualifying = [
        r for r in results if funnel_accepts(funnel=funnel, kind=r.kind, test_id=r.test_id)
    ]
    if not qualifying:
        same_kind = [
            r for r in results
            if funnel.test_kind in (Funnel.TestKind.ANY, r.kind) and r.test_id is not None
        ]
        if same_kind:
            return _("not in it: tests %(tests)s are not among the funnel's tests %(wanted)s") % {
                "tests": sorted({r.test_id for r in same_kind}), "wanted": funnel.test_ids,
            }
        return _("not in it: only tests of the other kind (%(tests)s)") % {
            "tests": ", ".join(f"test {r.test_id}: {r.kind or '?'}" for r in results),
        }
    if not funnel.active:
        return _("not in it: funnel inactive")
    ids = ", ".join(f"#{r.result_id}" for r in qualifying)
    if watermark is None:
        return _("not in it yet: no live run has read MODX yet (results %(ids)s)") % {"ids": ids}
    # Beyond the watermark, or below it in a gap (a row that committed late): both are
    # read by the next run.
    unread = [
        r for r in qualifying
        if r.result_id > watermark.last_id or r.result_id in watermark.gaps
    ]
    reasons = []
    for r in qualifying:
        item = items.get((r.result_id, funnel.slug)) or items.get((r.result_id, ""))
        if item is not None:
            reasons.append(
                _("result #%(id)s skipped in run #%(run)s: %(reason)s")
                % {"id": r.result_id, "run": item.run_id, "reason": reason_label(item.reason)}
            )
    if reasons:
        return _("not in it: ") + "; ".join(reasons)
    if any(r.result_id in waiting for r in qualifying):
        return _("not in it yet: ") + "; ".join(
            waiting_line(waiting[r.result_id]) for r in qualifying if r.result_id in waiting
        )
    if unread:
        return _("not in it yet: not yet read (results %(ids)s are beyond the watermark "
                 "#%(w)s); the next run will read them") % {
            "ids": ", ".join(f"#{r.result_id}" for r in unread), "w": watermark.last_id,
        }
    return _("not in it: results %(ids)s were before the first run's starting point "
             "(older than the initial look-back)") % {"ids": ids}
