"""Django's migrate, refusing the MODX database.

The router already keeps every model off "modx", but the migration recorder ignores
routers: `migrate --database modx` would still create django_migrations in the website's
database and record every migration there.
"""

from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate

from funnels.routers import MODX_ALIAS, is_test_database


class Command(DjangoMigrate):
    def handle(self, *args, **options):
        # Test-database creation runs migrate on every alias; it creates nothing there,
        # because the router refuses every model.
        if options.get("database") == MODX_ALIAS and not is_test_database(MODX_ALIAS):
            raise CommandError(
                "refusing to migrate the MODX database: it is read only for this tool"
            )
        return super().handle(*args, **options)
