"""List filters for the admin. Each one is a single indexed condition: no facet counts,
no DISTINCT over the entries table to build its choices."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from funnels.labels import funnel_name_display
from funnels.models import BrevoState, Funnel, SyncRun, SyncStatus
from funnels.selectors.funnels import funnel_entry_usable_q


class FunnelFilter(admin.SimpleListFilter):
    title = _("funnel")
    parameter_name = "funnel"

    def lookups(self, request, model_admin):
        # The choices come from the small funnels table, never from the entries.
        return [
            (slug, funnel_name_display(name))
            for slug, name in Funnel.objects.order_by("slug").values_list("slug", "name")
        ]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(funnel_type=self.value())
        return queryset


class SyncStateFilter(admin.SimpleListFilter):
    title = _("Brevo sync")
    parameter_name = "sync"

    def lookups(self, request, model_admin):
        return SyncStatus.choices

    def queryset(self, request, queryset):
        if self.value() in SyncStatus.values:
            return queryset.filter(sync_status=self.value())
        return queryset


class BrevoStateFilter(admin.SimpleListFilter):
    """What the last Brevo audit read for the person in the funnel's list."""

    title = _("Brevo state")
    parameter_name = "brevo"
    NOT_AUDITED = "none"
    DRIFT = "drift"

    def lookups(self, request, model_admin):
        return [
            *BrevoState.choices,
            (self.DRIFT, _("Synced here, missing in Brevo")),
            (self.NOT_AUDITED, _("Not audited yet")),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value in BrevoState.values:
            return queryset.filter(brevo_state=value)
        if value == self.DRIFT:
            from funnels.selectors.brevo_state import brevo_drift_q

            return queryset.filter(brevo_drift_q())
        if value == self.NOT_AUDITED:
            return queryset.filter(brevo_state="")
        return queryset


class PurchasedFilter(admin.SimpleListFilter):
    title = _("certificate purchased")
    parameter_name = "purchased"

    def lookups(self, request, model_admin):
        return [("yes", _("Purchased")), ("no", _("Not purchased"))]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(certificate_purchased=True)
        if self.value() == "no":
            return queryset.filter(certificate_purchased=False)
        return queryset


class RunModeFilter(admin.SimpleListFilter):
    title = _("mode")
    parameter_name = "mode"

    def lookups(self, request, model_admin):
        return [("dry", _("Dry run")), ("live", _("Live"))]

    def queryset(self, request, queryset):
        if self.value() == "dry":
            return queryset.filter(dry_run=True)
        if self.value() == "live":
            return queryset.filter(dry_run=False)
        return queryset


class RunStatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return SyncRun.Status.choices

    def queryset(self, request, queryset):
        if self.value() in SyncRun.Status.values:
            return queryset.filter(status=self.value())
        return queryset


class UsableFilter(admin.SimpleListFilter):
    """Rows another writer put in funnel_entries (funnel_entry_usable_q): the job leaves
    them alone and funnels_health warns about them; here they can be seen. Not indexed:
    only asked for by hand."""

    title = _("written by this job")
    parameter_name = "usable"

    def lookups(self, request, model_admin):
        return [("no", _("Not usable (written by another tool)"))]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.exclude(funnel_entry_usable_q())
        return queryset
