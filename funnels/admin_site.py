"""The operator's admin site: the mode and the job's health on every page, the dashboard
on the index, the dry-run switch.

A site of our own (rather than a context processor) keeps the header's queries to admin
pages only and needs no settings change. Views outside the admin that extend
admin/base_site.html (the reports page) get the same header by using
`site.each_context(request)`.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.urls import path
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy as _

from funnels import views
from funnels.codes import Source
from funnels.labels import audit_label, funnel_name_display, reason_label
from funnels.models import Funnel
from funnels.selectors.dashboard import (
    admin_status_get,
    dashboard_get,
    funnels_without_list_get,
    live_mode_blockers_get,
)
from funnels.selectors.held import held_summary_get
from funnels.selectors.recheck import recheck_counts_get
from funnels.services.runtime import dry_run_changes

DRY_RUN_CHANGES_SHOWN = 5


def duration_format(value: dt.timedelta | None) -> str:
    if value is None:
        return "—"
    seconds = int(value.total_seconds())
    if seconds < 60:
        return gettext("%(s)d s") % {"s": seconds}
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return gettext("%(m)d min %(s)02d s") % {"m": minutes, "s": seconds}
    hours, minutes = divmod(minutes, 60)
    return gettext("%(h)d h %(m)02d min") % {"h": hours, "m": minutes}


def _held_and_waiting_context() -> dict:
    """The flood guard's and the recheck lists' blocks, with codes put into words."""
    held = held_summary_get()
    names = {}
    if held.entries:  # the funnel names only when something is held: one query
        names = {slug: funnel_name_display(name)
                 for slug, name in Funnel.objects.values_list("slug", "name")}
    waiting = recheck_counts_get()
    sources = {Source.PAYMENTS: gettext("Payments"), Source.RESULTS: gettext("Test results")}
    return {
        "held": held,
        "held_rows": [(names.get(slug, slug), n) for slug, n in held.by_funnel.items()],
        "waiting": waiting,
        "waiting_rows": [
            (sources.get(source, source), reason_label(reason), n)
            for source, reasons in waiting.by_source.items() for reason, n in reasons.items()
        ],
    }


class FunnelsAdminSite(admin.AdminSite):
    site_header = _("Testizer Funnels")
    site_title = _("Testizer Funnels")
    index_title = _("Dashboard")
    # "View site" would lead back here: the admin is the whole site.
    site_url = None
    # One sign for "no value" on every page (Django's default is "-", ours "—").
    empty_value_display = "—"
    # The dashboard lists every model; the sidebar would take 280 px from every table.
    enable_nav_sidebar = False

    def each_context(self, request):
        context = super().each_context(request)
        user = getattr(request, "user", None)
        # The login page is an admin page too: strangers learn nothing about the job.
        if user is not None and user.is_active and user.is_staff:
            context["funnels_status"] = admin_status_get(now=timezone.now())
        return context

    def get_urls(self):
        return [
            path("dry-run/", self.admin_view(views.dry_run_toggle), name="funnels_dry_run"),
            path("release-held/", self.admin_view(views.held_release),
                 name="funnels_release_held"),
            path("schedule/", self.admin_view(views.schedule_pause_toggle),
                 name="funnels_schedule"),
            *super().get_urls(),
        ]

    def index(self, request, extra_context=None):
        dashboard = dashboard_get(now=timezone.now())
        context = {
            "dashboard": dashboard,
            "last_run_rows": [
                {"run": run, "duration": duration_format(run.duration)}
                for run in dashboard.last_runs
            ],
            "site_time_zone": settings.TIME_ZONE,
            "dry_run_changes": [
                {"change": change, "message": audit_label(change.get_change_message())}
                for change in dry_run_changes(limit=DRY_RUN_CHANGES_SHOWN)
            ],
            "can_change_dry_run": request.user.has_perm(views.DRY_RUN_PERMISSION),
            "can_pause_schedule": request.user.has_perm(views.PAUSE_PERMISSION),
            "live_mode_blockers": live_mode_blockers_get(),
            "funnels_without_list": funnels_without_list_get(),
            **_held_and_waiting_context(),
            "held_limit": settings.FUNNELS_MAX_NEW_CONTACTS_PER_RUN,
            "can_release_held": request.user.has_perm(views.RELEASE_HELD_PERMISSION),
            "recheck_days": settings.FUNNELS_RECHECK_DAYS,
            **_brevo_context(),
            **(extra_context or {}),
        }
        return super().index(request, extra_context=context)


def _brevo_context() -> dict:
    """The last Brevo audit, the drift it found and the last proof (three queries)."""
    from funnels.labels import funnel_name_display
    from funnels.selectors.brevo_state import brevo_audit_latest, brevo_drift_by_funnel

    from funnels.models import Funnel, ProofCheck, ProofDifference

    audit = brevo_audit_latest()
    drift = brevo_drift_by_funnel() if audit is not None else {}
    names = (
        dict(Funnel.objects.filter(slug__in=list(drift)).values_list("slug", "name"))
        if drift else {}
    )
    proof = ProofCheck.objects.order_by("-started_at", "-id").first()
    return {
        "proof": proof,
        "proof_rows": [
            {"kind": kind, "label": label, "n": (proof.counts or {}).get(kind, 0)}
            for kind, label in ProofDifference.Kind.choices
        ] if proof is not None else [],
        "brevo_audit": audit,
        "brevo_drift": [
            {"funnel": slug, "name": funnel_name_display(names.get(slug, slug)),
             "people": people}
            for slug, people in sorted(drift.items())
        ],
    }


site = FunnelsAdminSite(name="admin")
site.register(User, UserAdmin)
site.register(Group, GroupAdmin)
