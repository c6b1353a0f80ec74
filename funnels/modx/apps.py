from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ModxConfig(AppConfig):
    """The website's MODX tables: read only, never migrated (see routers.ModxRouter)."""

    name = "funnels.modx"
    label = "modx"
    verbose_name = _("MODX (read only)")
    default_auto_field = "django.db.models.AutoField"
