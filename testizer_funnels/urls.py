from django.urls import include, path
from django.views.generic import RedirectView

from funnels.admin_site import site as admin_site

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/reports/", include("reports.urls")),
    path("admin/", admin_site.urls),
    # The header's language switch posts here; the choice is kept in a cookie.
    path("i18n/", include("django.conf.urls.i18n")),
]
