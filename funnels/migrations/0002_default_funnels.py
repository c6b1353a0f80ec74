from django.conf import settings
from django.db import migrations


def create_defaults(apps, schema_editor):
    alias = schema_editor.connection.alias
    Funnel = apps.get_model("funnels", "Funnel")
    RuntimeSettings = apps.get_model("funnels", "RuntimeSettings")
    defaults = (
        ("language", "Language tests", "language", 1, settings.BREVO_LANGUAGE_LIST_ID),
        ("non_language", "Non-language tests", "non_language", 2,
         settings.BREVO_NON_LANGUAGE_LIST_ID),
    )
    for slug, name, kind, cert_type, list_id in defaults:
        Funnel.objects.using(alias).get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "test_kind": kind,
                "certificate_type": cert_type,
                "brevo_list_id": list_id,
            },
        )
    RuntimeSettings.objects.using(alias).get_or_create(id=1, defaults={"dry_run": settings.APP_DRY_RUN})


class Migration(migrations.Migration):
    dependencies = [("funnels", "0001_initial")]
    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
