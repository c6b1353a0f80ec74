"""The admin pages: funnel entries, sync runs, funnels, watermarks.

Thin: reads are querysets the indexes fit, writes go through services. Registered on the
project's own site (funnels.admin_site), which adds the mode and the health
banners to every page.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import DatabaseError
from django.db.models import OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext, gettext_lazy as _, ngettext

from funnels.admin_filters import (
    BrevoStateFilter,
    FunnelFilter,
    PurchasedFilter,
    UsableFilter,
    RunModeFilter,
    RunStatusFilter,
    SyncStateFilter,
)
from funnels.admin_paginator import CountFreeChangeList, CountFreePaginationMixin
from funnels.brevo.attributes import AttributeNames
from funnels.emails import email_check, email_normalize
from funnels.labels import error_label, funnel_name_display, reason_is_payment, reason_label
from funnels.logging_filters import redact
from funnels.models import (
    BrevoAudit, Funnel, FunnelEntry, ProofCheck, ProofDifference, SyncRun, SyncRunItem,
    SyncState, SyncStatus,
)
from funnels.modx.models import CERT_TYPE_LANGUAGE, CERT_TYPE_NON_LANGUAGE
from funnels.selectors.funnels import funnel_attribute_names
from funnels.services.control_groups import MAX_CONTROL_SHARE, funnel_control_share_set
from funnels.selectors.drilldown import DateLink, date_drilldown_get
from funnels.selectors.run_items import run_items_page_get
from funnels.services.brevo_repair import RESTORE_PERMISSION, brevo_missing_restore
from funnels.services.sync_retry import entries_retry_sync
from funnels.admin_site import duration_format, site

logger = logging.getLogger(__name__)

DEFAULT_FUNNEL_SLUGS = frozenset({"language", "non_language"})
MODX_INT_MAX = 2**31 - 1
RUN_ITEMS_PER_PAGE = 100
# funnels.services.purchases keeps these payment skips as counts only (no run item).
PAYMENT_REASONS_COUNTED_ONLY = frozenset({"payment:not_paid", "payment:no_entry"})


def _short(text: str, *, chars: int = 80) -> str:
    # Run records are not supposed to hold secrets; if one slipped through, the page
    # still does not show it.
    return Truncator(redact(text or "")).chars(chars)


def email_display(email: str | None) -> str:
    """A stored email with its domain in Unicode (пример.рф), as people write it."""
    local, at, domain = (email or "").rpartition("@")
    if not at or "xn--" not in domain:
        return email or ""
    try:
        return f"{local}@{domain.encode('ascii').decode('idna')}"
    except UnicodeError:
        return email or ""


def funnel_names() -> dict[str, str]:
    """Funnel slug -> the name shown for it (one small query)."""
    return {
        slug: funnel_name_display(name)
        for slug, name in Funnel.objects.values_list("slug", "name")
    }


EMPTY = "—"


def email_search_prefixes(*, term: str) -> list[str]:
    """What an operator's search text may be the start of, in stored (normalised) form.

    Stored emails are trimmed, lower-case, with the domain in punycode (funnels.emails).
    A Cyrillic domain typed in the search box is therefore also looked up encoded.
    """
    term = email_normalize(term)
    if not term:
        return []
    prefixes = [term]
    local, at, domain = term.rpartition("@")
    if at and domain:
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_domain = domain
        if ascii_domain != domain:
            prefixes.append(f"{local}@{ascii_domain}")
    return prefixes


# --- Funnel entries ----------------------------------------------------------------


class TitledAdminMixin:
    """Page titles written for each model: Django's generic "Select %s to change" and
    "Add %s" put the model's name in the wrong case in Russian ("Выберите воронка")."""

    list_title = None
    add_title = None
    change_title = None
    view_title = None

    def changelist_view(self, request, extra_context=None):
        context = dict(extra_context or {})
        if self.list_title:
            context.setdefault("title", self.list_title)
        return super().changelist_view(request, extra_context=context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if object_id is None:
            title = self.add_title
        else:
            obj = self.get_object(request, object_id) if object_id else None
            editable = obj is not None and self.has_change_permission(request, obj)
            title = self.change_title if editable else self.view_title
        context = dict(extra_context or {})
        if title:
            context.setdefault("title", title)
        return super().changeform_view(request, object_id, form_url, extra_context=context)


class ReadOnlyAdminMixin:
    """Rows written only by the job: the admin shows them, nobody edits them by hand."""

    def get_readonly_fields(self, request, obj=None):
        if self.fieldsets:
            return [name for _title, options in self.fieldsets for name in options["fields"]]
        return super().get_readonly_fields(request, obj)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class FunnelEntryChangeList(CountFreeChangeList):
    def get_ordering(self, request, queryset):
        # Only entered_at is sortable, and the tie-breaker follows its direction so the
        # index on entered_at (which ends in the primary key) serves the ORDER BY in
        # either direction; a hand-made ?o= for another column falls back to the default.
        ordering = super().get_ordering(request, queryset)
        first = ordering[0] if ordering else "-entered_at"
        if first not in ("entered_at", "-entered_at"):
            first = "-entered_at"
        return [first, "-pk" if first.startswith("-") else "pk"]

    def date_hierarchy_links(self) -> dict:
        """Year / month / day links (selectors.drilldown: two index look-ups, no DISTINCT)."""
        field = self.date_hierarchy
        drill = date_drilldown_get(queryset=self.root_queryset, field=field,
                                   params=self.params)

        def link(choice: DateLink) -> str:
            return self.get_query_string(choice.params, [f"{field}__"])

        choices = [{"link": link(c), "title": c.title} for c in drill.choices]
        if drill.current is not None:
            choices.append({"title": drill.current})
        return {
            "show": drill.show,
            "back": {"link": link(drill.back), "title": drill.back.title} if drill.back else None,
            "choices": choices,
        }


class FunnelEntryAdmin(TitledAdminMixin, ReadOnlyAdminMixin, CountFreePaginationMixin,
                       admin.ModelAdmin):
    list_title = _("Funnel entries")
    view_title = _("Funnel entry")
    # Five columns that fit a laptop: what an operator scans for (who, where, when, is it
    # in Brevo, did they buy); test id and payment id ride along in smaller print.
    list_display = [
        "email_shown",
        "funnel_test",
        "entered_at",
        "sync_state",
        "purchase",
    ]
    list_display_links = ["email_shown"]
    list_filter = [FunnelFilter, SyncStateFilter, BrevoStateFilter, PurchasedFilter, UsableFilter]
    date_hierarchy = "entered_at"
    search_fields = ["email"]
    search_help_text = _(
        "An email or its beginning; case and surrounding spaces do not matter."
    )
    sortable_by = ["entered_at"]
    list_per_page = 100
    # Facet counts would be a COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    actions = ["retry_brevo_sync", "restore_missing_in_brevo"]
    fieldsets = [
        (None, {"fields": ["email", "funnel_shown", "test_id", "user_id", "entered_at",
                           "test_completed_at", "run_link"]}),
        (_("Certificate"), {"fields": ["certificate_purchased", "certificate_purchased_at",
                                       "payment_id"]}),
        (_("Brevo"), {"fields": ["sync_status", "sync_attempts", "sync_error",
                                 "sync_next_attempt_at", "synced_at", "sync_revision",
                                 "synced_revision", "brevo_state", "brevo_seen_at"]}),
        # Control groups: the group the entry was assigned in, and its funnel's start.
        (_("Control group"), {"fields": ["experiment_group", "control_period",
                                         "funnel_started_at"]}),
        (_("Record"), {"fields": ["created_at", "updated_at"]}),
    ]

    def get_changelist(self, request, **kwargs):
        return FunnelEntryChangeList

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context=extra_context)
        term = request.GET.get("q", "")
        context = getattr(response, "context_data", None)
        # An email that finds nobody: say why, as explain_funnel would (its queries run
        # only on such a search; the page already knows it found nothing).
        if context and "cl" in context and "@" in term and email_check(term).ok:
            if not list(context["cl"].result_list):
                context["funnels_explanation"] = _explanation_for(term)
        return response

    def get_queryset(self, request):
        # The funnel's name rides along with each row (a look-up on the unique slug).
        return super().get_queryset(request).annotate(
            funnel_name=Subquery(
                Funnel.objects.filter(slug=OuterRef("funnel_type")).values("name")[:1]
            )
        )

    @admin.display(description=_("email"), ordering=None)
    def email_shown(self, obj: FunnelEntry) -> str:
        return email_display(obj.email)

    @admin.display(description=_("funnel"))
    def funnel_shown(self, obj: FunnelEntry):
        # The name people gave the funnel, and the slug the records and commands use.
        name = funnel_name_display(getattr(obj, "funnel_name", None) or obj.funnel_type)
        return format_html('{} <span class="quiet">({})</span>', name, obj.funnel_type)

    @admin.display(description=_("funnel · test"))
    def funnel_test(self, obj: FunnelEntry):
        name = funnel_name_display(getattr(obj, "funnel_name", None) or obj.funnel_type)
        return format_html(
            '{}<br><span class="quiet">{}</span>', name,
            gettext("test %(id)s") % {"id": obj.test_id} if obj.test_id else EMPTY,
        )

    @admin.display(description=_("certificate"))
    def purchase(self, obj: FunnelEntry):
        if not obj.certificate_purchased:
            return EMPTY
        return format_html(
            '<span class="funnels-bought">{}</span><br><span class="quiet">{}</span>',
            formats.date_format(timezone.localtime(obj.certificate_purchased_at),
                                "DATETIME_FORMAT")
            if obj.certificate_purchased_at else gettext("bought"),
            gettext("payment %(id)s") % {"id": obj.payment_id} if obj.payment_id else "",
        )


    def has_retry_sync_permission(self, request) -> bool:
        return request.user.has_perm("funnels.change_funnelentry")

    def get_search_results(self, request, queryset, search_term):
        prefixes = email_search_prefixes(term=search_term)
        if not prefixes:
            return queryset, False
        # A prefix match on the indexed, already-normalised column: LIKE 'x%' is an index
        # range, where Django's default '%x%' would read every row.
        condition = Q()
        for prefix in prefixes:
            condition |= Q(email__istartswith=prefix)
        return queryset.filter(condition), False

    @admin.display(description=_("Brevo sync"), ordering=None)
    def sync_state(self, obj: FunnelEntry):
        label = obj.get_sync_status_display()
        if obj.sync_status == SyncStatus.FAILED and obj.sync_last_error:
            return format_html(
                '<span class="funnels-sync funnels-sync-{}" title="{}">{}</span>',
                obj.sync_status, error_label(redact(obj.sync_last_error)), label,
            )
        return format_html(
            '<span class="funnels-sync funnels-sync-{}">{}</span>', obj.sync_status, label
        )

    @admin.display(description=_("last sync error"))
    def sync_error(self, obj: FunnelEntry) -> str:
        return error_label(redact(obj.sync_last_error)) or EMPTY

    @admin.display(description=_("created by run"))
    def run_link(self, obj: FunnelEntry):
        if obj.run_id is None:
            return EMPTY
        url = reverse("admin:funnels_syncrun_change", args=[obj.run_id])
        return format_html('<a href="{}">#{}</a>', url, obj.run_id)

    @admin.action(
        description=_("Retry Brevo sync of the selected failed entries"),
        permissions=["retry_sync"],
    )
    def retry_brevo_sync(self, request, queryset):
        ids = list(
            queryset.filter(sync_status=SyncStatus.FAILED).order_by().values_list("id", flat=True)
        )
        reset = entries_retry_sync(entry_ids=ids, now=timezone.now())
        if reset:
            self.message_user(
                request,
                ngettext(
                    "%(count)d failed entry will be sent to Brevo again by the next run.",
                    "%(count)d failed entries will be sent to Brevo again by the next run.",
                    reset,
                ) % {"count": reset},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request, gettext("None of the selected entries had failed."), messages.WARNING
            )


    def has_restore_missing_permission(self, request) -> bool:
        return request.user.has_perm(RESTORE_PERMISSION)

    @admin.action(
        description=_("Put the selected people missing in Brevo back in their list"),
        permissions=["restore_missing"],
    )
    def restore_missing_in_brevo(self, request, queryset):
        ids = list(queryset.order_by().values_list("id", flat=True))
        result = brevo_missing_restore(entry_ids=ids, now=timezone.now(), user=request.user)
        if result.requeued:
            self.message_user(
                request,
                ngettext(
                    "%(count)d entry will be put back in its Brevo list by the next run.",
                    "%(count)d entries will be put back in their Brevo lists by the next run.",
                    result.requeued,
                ) % {"count": result.requeued},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request, gettext("None of the selected entries is missing in Brevo."),
                messages.WARNING,
            )
        if result.opted_out:
            self.message_user(
                request,
                ngettext(
                    "%(count)d entry left alone: the person unsubscribed or is blacklisted.",
                    "%(count)d entries left alone: the people unsubscribed or are blacklisted.",
                    result.opted_out,
                ) % {"count": result.opted_out},
                messages.INFO,
            )


site.register(FunnelEntry, FunnelEntryAdmin)


# --- Sync runs -----------------------------------------------------------------------


class SyncRunAdmin(TitledAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_title = _("Sync runs")
    view_title = _("Sync run")
    # Six columns that fit a laptop: the counts combined the way an operator reads them
    # ("2000 → 1325 / 675"), the error under the status.
    list_display = [
        "run_started",
        "status_shown",
        "results_shown",
        "contacts_shown",
        "purchases_shown",
    ]
    list_display_links = ["run_started"]
    list_filter = [RunStatusFilter, RunModeFilter]
    show_facets = admin.ShowFacets.NEVER
    sortable_by = ["run_started"]
    list_per_page = 50
    change_form_template = "admin/funnels/syncrun/change_form.html"
    fieldsets = [
        (None, {"fields": ["status", "mode", "trigger", "started_at", "finished_at",
                           "duration_display", "error_full"]}),
        (_("Counts"), {"fields": ["results_read", "entries_added_shown", "skipped",
                                  "skipped_reasons", "payment_reasons", "items_arithmetic",
                                  "waiting_reasons", "contacts_held",
                                  "contacts_sent", "contacts_failed",
                                  "payments_read", "purchases_found", "purchases_revoked"]}),
        (_("Brevo"), {"classes": ["collapse"],
                      "fields": ["brevo_requests", "ratelimit_remaining", "ratelimit_limit"]}),
        (_("Process"), {"classes": ["collapse"],
                        "fields": ["heartbeat_at", "as_of", "hostname", "pid"]}),
    ]

    @admin.display(description=_("run"), ordering="started_at")
    def run_started(self, obj: SyncRun):
        return format_html(
            "#{}<br><span class=\"quiet\">{}<br>{}</span>", obj.pk,
            formats.date_format(timezone.localtime(obj.started_at), "SHORT_DATETIME_FORMAT"),
            duration_format(obj.duration),
        )

    @admin.display(description=_("status"))
    def status_shown(self, obj: SyncRun):
        error = _short(error_label(obj.error), chars=160)
        return format_html(
            '<span class="funnels-status funnels-status-{}">{}</span> '
            '<span class="quiet">· {} · {}</span>{}',
            obj.status, obj.get_status_display(), self.mode(obj), obj.get_trigger_display(),
            format_html('<div class="funnels-run-error">{}</div>', error) if error else "",
        )

    @admin.display(description=_("results: read → added / skipped"))
    def results_shown(self, obj: SyncRun):
        added = (
            gettext("would add %(n)s") if obj.dry_run else "%(n)s"
        ) % {"n": obj.entries_added}
        return format_html("{} → {} / {}", obj.results_read, added, obj.skipped)

    @admin.display(description=_("Brevo: sent / failed"))
    def contacts_shown(self, obj: SyncRun):
        if obj.dry_run:
            return EMPTY
        return format_html(
            '{} / <span class="{}">{}</span>', obj.contacts_sent,
            "funnels-bad" if obj.contacts_failed else "", obj.contacts_failed,
        )

    @admin.display(description=_("purchases"))
    def purchases_shown(self, obj: SyncRun) -> str:
        if obj.purchases_revoked:
            return f"{obj.purchases_found} (−{obj.purchases_revoked})"
        return str(obj.purchases_found)

    @admin.display(description=_("mode"))
    def mode(self, obj: SyncRun) -> str:
        return gettext("Dry run") if obj.dry_run else gettext("Live")

    @admin.display(description=_("duration"))
    def duration_display(self, obj: SyncRun) -> str:
        return duration_format(obj.duration)

    @admin.display(description=_("error"))
    def error_full(self, obj: SyncRun) -> str:
        return error_label(redact(obj.error)) or EMPTY

    @admin.display(description=_("entries added"))
    def entries_added_shown(self, obj: SyncRun) -> str:
        if obj.dry_run:
            return gettext("would add %(n)s (a dry run adds nobody)") % {"n": obj.entries_added}
        return str(obj.entries_added)

    @staticmethod
    def _reasons(reasons: dict, *, payments: bool) -> list[tuple[str, int]]:
        chosen = [
            (reason_label(code), int(n)) for code, n in (reasons or {}).items()
            if reason_is_payment(code) == payments
        ]
        return sorted(chosen, key=lambda item: (-item[1], item[0]))

    @admin.display(description=_("skipped test results by reason"))
    def skipped_reasons(self, obj: SyncRun):
        reasons = self._reasons(obj.skipped_by_reason, payments=False)
        if not reasons:
            return EMPTY
        return format_html_join(mark_safe("<br>"), "{}: {}", reasons)

    @admin.display(description=_("payments not counted as purchases, by reason"))
    def payment_reasons(self, obj: SyncRun):
        reasons = [
            (label.split(": ", 1)[-1], n)
            for label, n in self._reasons(obj.skipped_by_reason, payments=True)
        ]
        if not reasons:
            return EMPTY
        return format_html_join(mark_safe("<br>"), "{}: {}", reasons)

    @admin.display(description=_("skipped items listed below"))
    def items_arithmetic(self, obj: SyncRun) -> str:
        payments = {
            code: int(n) for code, n in (obj.skipped_by_reason or {}).items()
            if reason_is_payment(code)
        }
        counted_only = sum(
            n for code, n in payments.items() if code in PAYMENT_REASONS_COUNTED_ONLY
        )
        listed = sum(payments.values()) - counted_only
        return gettext(
            "%(total)s = %(results)s test results + %(payments)s payments "
            "(%(counted)s payments not paid or by people in no funnel are counted only, "
            "not listed)"
        ) % {
            "total": obj.skipped + listed, "results": obj.skipped, "payments": listed,
            "counted": counted_only,
        }

    @admin.display(description=_("put on the recheck list, by reason"))
    def waiting_reasons(self, obj: SyncRun):
        reasons = (self._reasons(obj.waiting_by_reason, payments=False)
                   + self._reasons(obj.waiting_by_reason, payments=True))
        if not reasons:
            return EMPTY
        return format_html_join(mark_safe("<br>"), "{}: {}", reasons)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = dict(extra_context or {})
        try:
            run_id = int(object_id)
        except (TypeError, ValueError):
            run_id = None
        if run_id is not None:
            context.update(self._items_context(request, run_id=run_id))
        return super().change_view(request, object_id, form_url, extra_context=context)

    def _items_context(self, request, *, run_id: int) -> dict:
        action = request.GET.get("action")
        if action not in SyncRunItem.Action.values:
            action = None
        term = request.GET.get("q", "").strip()
        found = run_items_page_get(
            run_id=run_id, action=action, email_prefixes=email_search_prefixes(term=term),
            page_number=request.GET.get("page"), per_page=RUN_ITEMS_PER_PAGE,
        )
        page, action_counts = found.page, found.action_counts
        labels = dict(SyncRunItem.Action.choices)
        names = funnel_names()
        rows = page.object_list

        def url(**params) -> str:
            query = {k: v for k, v in params.items() if v}
            return "?" + urlencode(query) if query else "?"

        def entry_url(item) -> tuple[str | None, int | None]:
            entry_id = found.entry_id_of(item)
            if entry_id is None:
                return None, None
            return reverse("admin:funnels_funnelentry_change", args=[entry_id]), entry_id

        rendered = []
        for item in rows:
            link, entry_id = entry_url(item)
            rendered.append({
                "item": item,
                "email": email_display(item.email),
                "funnel": names.get(item.funnel_type, item.funnel_type),
                "action_label": labels.get(item.action, item.action),
                "reason": reason_label(item.reason),
                "detail": _short(error_label(item.detail), chars=300),
                "entry_url": link,
                "entry_id": entry_id,
                "duplicate_of": entry_id if item.entry_id is None else None,
            })
        return {
            "items_page": page,
            "items_action": action,
            "items_query": term,
            "items_rows": rendered,
            "items_actions": [
                {
                    "action": key,
                    "label": labels.get(key, key),
                    "count": count,
                    "url": url(action=key, q=term),
                }
                for key, count in sorted(action_counts.items())
            ],
            "items_total": sum(action_counts.values()),
            "items_deferred": action_counts.get(SyncRunItem.Action.DEFERRED, 0),
            "items_deferred_url": url(action=SyncRunItem.Action.DEFERRED),
            "items_all_url": url(q=term),
            "items_previous_url": (
                url(action=action, q=term, page=page.previous_page_number())
                if page.has_previous()
                else None
            ),
            "items_next_url": (
                url(action=action, q=term, page=page.next_page_number())
                if page.has_next() else None
            ),
        }


def _explanation_for(term: str):
    from funnels.selectors.explain import funnel_explain

    try:
        return funnel_explain(raw_email=term)
    except DatabaseError:
        # MODX down: the list still renders; the reason is in the log.
        logger.warning("explain on an empty search failed", exc_info=True)
        return None


site.register(SyncRun, SyncRunAdmin)


# --- Funnels -------------------------------------------------------------------------


class TestIdsField(forms.CharField):
    """MODX test ids typed as "12, 15 17"; stored as a sorted list of distinct ints."""

    default_error_messages = {
        "not_positive": _("“%(value)s” is not a positive whole number."),
        "too_big": _("“%(value)s” is larger than any MODX test id can be."),
    }

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v) for v in value)
        return value

    def to_python(self, value):
        if isinstance(value, (list, tuple)):
            return sorted({int(v) for v in value})
        text = super().to_python(value)
        ids = set()
        for part in re.split(r"[\s,;]+", text):
            if not part:
                continue
            if not (part.isascii() and part.isdigit()) or int(part) < 1:
                raise forms.ValidationError(
                    self.error_messages["not_positive"], code="not_positive",
                    params={"value": part},
                )
            if int(part) > MODX_INT_MAX:
                raise forms.ValidationError(
                    self.error_messages["too_big"], code="too_big", params={"value": part}
                )
            ids.add(int(part))
        return sorted(ids)


class FunnelForm(forms.ModelForm):
    brevo_list_id = forms.IntegerField(
        label=_("Brevo list id"),
        min_value=1,
        max_value=MODX_INT_MAX,
        required=False,
        help_text=_("The id of the Brevo contact list people of this funnel are added to."),
    )
    test_ids = TestIdsField(
        label=_("only these test ids"),
        required=False,
        help_text=_(
            "MODX test ids separated by commas or spaces. Empty: every test of the kind "
            "above qualifies."
        ),
    )
    certificate_type = forms.TypedChoiceField(
        label=_("certificate type"),
        coerce=int,
        choices=[
            (CERT_TYPE_LANGUAGE, _("1 — language certificate")),
            (CERT_TYPE_NON_LANGUAGE, _("2 — non-language certificate")),
        ],
        help_text=_("A paid certificate of this type after entry counts as a conversion."),
    )
    control_share = forms.IntegerField(
        label=_("control group, %"),
        min_value=0,
        max_value=MAX_CONTROL_SHARE,
        required=False,
        help_text=_(
            "This share of the people entered from now on is held out: recorded and "
            "measured, never sent to Brevo, to show what the emails add (the conversion "
            "report's lift). 0: everyone gets the emails. Each change starts a new period."
        ),
    )

    class Meta:
        model = Funnel
        fields = [
            "name",
            "slug",
            "active",
            "brevo_list_id",
            "test_kind",
            "test_ids",
            "reentry",
            "certificate_type",
            "attribute_funnel_type",
            "attribute_purchased",
            "attribute_purchased_at",
            "control_share",
        ]

    def clean(self):
        cleaned = super().clean()
        fields = ("attribute_funnel_type", "attribute_purchased", "attribute_purchased_at")
        names = [cleaned.get(name) for name in fields]
        if None in names:
            return cleaned  # a name is invalid: its own error says why
        mine = AttributeNames(*names)
        if len(mine.roles()) < 3:
            raise forms.ValidationError(
                _("The three attributes need three different names."), code="attribute_same"
            )
        # A name holds one kind of value (text, yes/no, date) in Brevo: another funnel may
        # share it only for the same thing.
        roles = mine.roles()
        for slug, theirs in funnel_attribute_names().items():
            if self.instance.pk and slug == self.instance.slug:
                continue
            for name, role in theirs.roles().items():
                if roles.get(name, role) != role:
                    field_name = fields[list(roles).index(name)]
                    self.add_error(field_name, forms.ValidationError(
                        _("The funnel “%(slug)s” writes another kind of value to "
                          "%(name)s."),
                        code="attribute_role", params={"slug": slug, "name": name},
                    ))
        return cleaned


CONTROL_SHARE_PERMISSION = "funnels.change_control_share"


class FunnelAdmin(TitledAdminMixin, admin.ModelAdmin):
    list_title = _("Funnels")
    add_title = _("Add a funnel")
    change_title = _("Edit the funnel")
    view_title = _("Funnel")
    form = FunnelForm
    list_display = [
        "name_shown",
        "slug",
        "active",
        "brevo_list_id",
        "test_kind",
        "test_ids_display",
        "reentry",
        "certificate_type",
        "control_shown",
    ]
    list_filter = ["active", "test_kind"]
    show_facets = admin.ShowFacets.NEVER
    fieldsets = [
        (None, {"fields": ["name", "slug", "active", "brevo_list_id", "test_kind", "test_ids",
                           "reentry", "certificate_type", "control_share"]}),
        (_("Brevo attributes"), {
            "fields": ["attribute_funnel_type", "attribute_purchased",
                       "attribute_purchased_at"],
            "description": _(
                "The contact attributes this funnel writes in Brevo. They must exist in the "
                "Brevo account (Brevo ignores an attribute it does not know). Funnels that "
                "share a name share its value; names of its own give a person in several "
                "funnels a true value for each. A new name applies to contacts sent from "
                "then on."
            ),
        }),
    ]

    def get_readonly_fields(self, request, obj=None):
        # Entries refer to a funnel by its slug (funnel_entries.funnel_type): renaming it
        # would orphan them.
        fields = ["slug"] if obj is not None else []
        # Without the permission the share is shown, not a form field: a POST cannot
        # change it (and save_model checks again).
        if not request.user.has_perm(CONTROL_SHARE_PERMISSION):
            fields.append("control_share")
        return fields

    def save_model(self, request, obj, form, change):
        share = form.cleaned_data.get("control_share")
        # Only the service changes the share: it starts the period and writes the audit
        # entry. An empty field leaves it as it is.
        stored = Funnel.objects.get(pk=obj.pk).control_share if change else 0
        obj.control_share = stored
        if share is not None and share != stored:
            if not request.user.has_perm(CONTROL_SHARE_PERMISSION):
                raise PermissionDenied
        else:
            share = None
        super().save_model(request, obj, form, change)
        if share is not None:
            funnel_control_share_set(funnel=obj, user=request.user, share=share,
                                     now=timezone.now())

    @admin.display(description=_("control group"), ordering="control_share")
    def control_shown(self, obj: Funnel) -> str:
        if not obj.control_share:
            return gettext("off")
        return gettext("%(share)s%% (period %(period)s)") % {
            "share": obj.control_share, "period": obj.control_period,
        }

    def has_delete_permission(self, request, obj=None):
        if obj is not None:
            if obj.slug in DEFAULT_FUNNEL_SLUGS:
                return False
            # Deactivate instead: its entries and their report would lose their funnel.
            if FunnelEntry.objects.filter(funnel_type=obj.slug).exists():
                return False
        return super().has_delete_permission(request, obj)

    @admin.display(description=_("name"), ordering="name")
    def name_shown(self, obj: Funnel) -> str:
        return str(obj)

    @admin.display(description=_("only these test ids"))
    def test_ids_display(self, obj: Funnel) -> str:
        return ", ".join(str(v) for v in obj.test_ids) if obj.test_ids else gettext("all")


site.register(Funnel, FunnelAdmin)


# --- Watermarks ----------------------------------------------------------------------


class SyncStateAdmin(TitledAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_title = _("How far the job has read MODX")
    view_title = _("MODX reading position")
    list_display = ["key", "last_id", "gap_count", "run", "updated_at"]
    readonly_fields = ["key", "last_id", "gap_count", "run", "updated_at"]
    list_select_related = ["run"]

    @admin.display(description=_("ids awaited below the watermark"))
    def gap_count(self, obj):
        return sum(len(ids) for ids in (obj.gaps or {}).values())



site.register(SyncState, SyncStateAdmin)


# --- Brevo audits --------------------------------------------------------------------


class BrevoAuditAdmin(TitledAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_title = _("Brevo audits")
    view_title = _("Brevo audit")
    list_display = ["started_at", "status", "kind", "contacts_read", "states_changed",
                    "unsubscribed", "blacklisted", "missing", "strangers"]
    list_filter = ["status", "kind"]
    list_per_page = 50
    show_facets = admin.ShowFacets.NEVER
    fieldsets = [
        (None, {"fields": ["started_at", "finished_at", "status", "kind", "trigger",
                           "modified_since", "error"]}),
        (_("What was read"), {"fields": ["contacts_read", "pages", "brevo_requests",
                                         "states_changed", "lists_shown"]}),
        (_("People per state after the audit"), {"fields": ["in_list", "unsubscribed",
                                                            "blacklisted", "missing"]}),
        (_("Contacts we did not add"), {"fields": ["strangers", "strangers_shown"]}),
    ]

    @admin.display(description=_("lists"))
    def lists_shown(self, obj: BrevoAudit):
        rows = [
            (gettext("%(funnel)s: list %(list)s, %(kind)s, %(n)s contacts read%(error)s") % {
                "funnel": slug, "list": item.get("list_id"),
                "kind": BrevoAudit.Kind(item.get("kind", "incremental")).label,
                "n": item.get("contacts", 0),
                "error": f" ({item['error']})" if item.get("error") else "",
            },)
            for slug, item in (obj.lists or {}).items()
        ]
        return format_html_join(format_html("<br>"), "{}", rows) if rows else EMPTY

    @admin.display(description=_("some of them"))
    def strangers_shown(self, obj: BrevoAudit):
        sample = obj.strangers_sample or []
        if not sample:
            return EMPTY
        return format_html_join(
            format_html("<br>"), "{} ({})",
            ((item.get("email", ""), item.get("funnel", ""))
             for item in sample),
        )


site.register(BrevoAudit, BrevoAuditAdmin)


# --- The proof that nobody is lost ---------------------------------------------------


class ProofCheckAdmin(TitledAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_title = _("Proofs that nobody is lost")
    view_title = _("Proof that nobody is lost")
    list_display = ["started_at", "status", "results_read", "entries_read", "differences"]
    list_per_page = 50
    show_facets = admin.ShowFacets.NEVER
    fieldsets = [(None, {"fields": ["started_at", "finished_at", "status", "window_from",
                                    "window_to", "results_read", "entries_read",
                                    "counts_shown", "error"]})]

    @admin.display(description=_("differences"))
    def differences(self, obj: ProofCheck) -> int:
        return obj.differences_total

    @admin.display(description=_("differences by class"))
    def counts_shown(self, obj: ProofCheck):
        labels = dict(ProofDifference.Kind.choices)
        url = reverse("admin:funnels_proofdifference_changelist")
        return format_html_join(
            format_html("<br>"), '<a href="{}?proof__id__exact={}&amp;kind__exact={}">{}</a>: {}',
            ((url, obj.pk, kind, labels.get(kind, kind), n)
             for kind, n in (obj.counts or {}).items()),
        ) or EMPTY


class ProofDifferenceAdmin(TitledAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_title = _("Differences found by the proof")
    view_title = _("Difference")
    list_display = ["kind", "email", "funnel_type", "test_id", "modx_id", "explanation"]
    list_filter = ["kind", "proof"]
    search_fields = ["email"]
    list_per_page = 100
    show_facets = admin.ShowFacets.NEVER
    fieldsets = [(None, {"fields": ["proof", "kind", "email", "funnel_type", "test_id",
                                    "modx_id", "entry", "explanation"]})]


site.register(ProofCheck, ProofCheckAdmin)
site.register(ProofDifference, ProofDifferenceAdmin)
