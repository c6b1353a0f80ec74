"""Admin views that are not a model's pages. Wired, behind the admin's login and CSRF
checks, by funnels.admin_site."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from funnels.selectors.dashboard import live_mode_blockers_get
from funnels.services.flood_guard import held_entries_release
from funnels.services.runtime import dry_run_set
from funnels.services.schedule import schedule_pause_set

DRY_RUN_PERMISSION = "funnels.change_dry_run"
RELEASE_HELD_PERMISSION = "funnels.release_held"
PAUSE_PERMISSION = "funnels.pause_schedule"


class DryRunForm(forms.Form):
    # The wanted mode, not "flip": a double submit or two operators at once must not
    # switch it back.
    mode = forms.ChoiceField(choices=[("dry", "dry"), ("live", "live")])
    # Going live is a deliberate act: the index asks for a tick, and so does the server.
    confirm = forms.BooleanField(required=False)


@require_POST
def dry_run_toggle(request):
    if not request.user.has_perm(DRY_RUN_PERMISSION):
        raise PermissionDenied
    form = DryRunForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest(_("Unknown mode."))
    want_dry_run = form.cleaned_data["mode"] == "dry"
    if not want_dry_run:
        if not form.cleaned_data["confirm"]:
            messages.error(request, _("Not switched to live: tick the confirmation first."))
            return redirect("admin:index")
        blockers = live_mode_blockers_get()
        if blockers:
            messages.error(
                request, _("Not switched to live: %(reasons)s") % {"reasons": " ".join(blockers)}
            )
            return redirect("admin:index")
    dry_run_set(user=request.user, value=want_dry_run)
    if want_dry_run:
        messages.success(request, _("Dry run: the next runs will write nothing to Brevo."))
    else:
        messages.warning(
            request, _("Live: the next run will add contacts to Brevo and record entries.")
        )
    return redirect("admin:index")


class ReleaseHeldForm(forms.Form):
    # Sending thousands of emails is a deliberate act: a tick on the page and here.
    confirm = forms.BooleanField(required=True)


@require_POST
def held_release(request):
    if not request.user.has_perm(RELEASE_HELD_PERMISSION):
        raise PermissionDenied
    if not ReleaseHeldForm(request.POST).is_valid():
        messages.error(request, _("Nothing released: tick the confirmation first."))
        return redirect("admin:index")
    released = held_entries_release(
        now=timezone.now(), user=request.user, source="admin dashboard"
    )
    if released:
        messages.warning(
            request,
            ngettext(
                "Released %(n)s entry: the next run sends it to Brevo.",
                "Released %(n)s entries: the next run sends them to Brevo.",
                released,
            ) % {"n": released},
        )
    else:
        messages.info(request, _("Nothing was held any more."))
    return redirect("admin:index")


class SchedulePauseForm(forms.Form):
    # The wanted state, not "flip", for the same reason as the mode.
    schedule = forms.ChoiceField(choices=[("pause", "pause"), ("resume", "resume")])


@require_POST
def schedule_pause_toggle(request):
    if not request.user.has_perm(PAUSE_PERMISSION):
        raise PermissionDenied
    form = SchedulePauseForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest(_("Unknown schedule state."))
    paused = form.cleaned_data["schedule"] == "pause"
    schedule_pause_set(user=request.user, paused=paused, now=timezone.now())
    if paused:
        messages.warning(
            request,
            _("Schedule paused: scheduled runs stop at once until you resume it. A run by "
              "hand still works: run_funnels --ignore-pause."),
        )
    else:
        messages.success(request, _("Schedule resumed: the next scheduled run works as usual."))
    return redirect("admin:index")
