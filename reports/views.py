"""The conversion report page in the admin: a filter form, charts, tables and the CSV."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from reports.formatters import (
    opt_outs_csv,
    report_chart_data,
    report_csv,
    report_csv_people,
    report_data,
)
from reports.forms import ConversionReportForm
from funnels.admin_site import site as admin_site
from reports.lift_format import lift_chart_data, lift_csv, origin_label
from reports.selectors import (
    conversion_report,
    first_entry_day,
    funnel_names_list,
    opt_out_counts,
)


def staff_required(view):
    """Anonymous visitors and signed-in non-staff go to the admin login, which tells the
    latter, in their language, that their account may not see this page (the admin's own
    friendly answer, rather than a bare "403 Forbidden")."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not (request.user.is_active and request.user.is_staff):
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@staff_required
def conversions(request):
    now = timezone.now()
    funnel_names = dict(funnel_names_list())
    funnel_slugs = list(funnel_names)
    data = request.GET if "from_date" in request.GET else ConversionReportForm.defaults(
        today=timezone.localdate(now)
    )
    form = ConversionReportForm(data, funnel_slugs=funnel_slugs, funnel_names=funnel_names)
    report = None
    if form.is_valid():
        report = conversion_report(
            **form.report_filters(), as_of=now, funnel_slugs=funnel_slugs
        )
        # The downloads: what is written, and the file's name around the period.
        downloads = {
            "csv": (lambda: report_csv(report), "conversions", ""),
            "csv_lift": (lambda: lift_csv(report.lift), "lift", ""),
            "csv_opt_outs": (
                lambda: opt_outs_csv(opt_out_counts(report=report)), "opt_outs", ""
            ),
            "csv_people": (
                lambda: report_csv_people(report, funnel_names=funnel_names),
                "conversions", "_excel",
            ),
        }
        chosen = downloads.get(request.GET.get("format", ""))
        if chosen is not None:
            write, prefix, suffix = chosen
            response = HttpResponse(write(), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = (
                f'attachment; filename="{prefix}_{report.date_from}_{report.date_to}{suffix}.csv"'
            )
            return response

    csv_query = csv_people_query = csv_lift_query = csv_opt_outs_query = None
    opt_outs = None
    first_entry = None
    if report is not None:
        # The same filters as the page shows, defaults included.
        query = QueryDict(mutable=True)
        query.update({key: value for key, value in form.data.items() if key != "format"})
        query["format"] = "csv"
        csv_query = query.urlencode()
        query["format"] = "csv_people"
        csv_people_query = query.urlencode()
        query["format"] = "csv_lift"
        csv_lift_query = query.urlencode()
        query["format"] = "csv_opt_outs"
        csv_opt_outs_query = query.urlencode()
        if not report.totals.entered:
            first_entry = first_entry_day(funnel=report.funnel)
        else:
            opt_outs = opt_out_counts(report=report)
    context = {
        **admin_site.each_context(request),
        "title": _("Conversion report"),
        "form": form,
        "report": report,
        "data": report_data(report, opt_outs=opt_outs or []) if report else None,
        "chart_data": (
            {**report_chart_data(report, funnel_names=funnel_names),
             "lift": lift_chart_data(report.lift, funnel_names=funnel_names)}
            if report else None
        ),
        "csv_query": csv_query,
        "csv_lift_query": csv_lift_query,
        # Control groups: each funnel's and period's lift, with its chart's data.
        "bought_before_start": (
            sum(report.lift.bought_before_start.values()) if report else None
        ),
        "origin_text": origin_label(report.origin) if report else "",
        "lift_rows": report.lift.rows if report else [],
        "csv_people_query": csv_people_query,
        "funnel_names": funnel_names,
        "first_entry": first_entry,
        # What the Brevo audit read, beside the conversions (its own block and query).
        "opt_outs": opt_outs,
        "csv_opt_outs_query": csv_opt_outs_query,
    }
    return render(request, "reports/conversions.html", context)
