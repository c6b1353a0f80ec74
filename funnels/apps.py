from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class FunnelsConfig(AppConfig):
    name = "funnels"
    verbose_name = _("Funnels")
    default_auto_field = "django.db.models.BigAutoField"
