"""Test set-up shared by every app: MODX tables in the test databases, pinned time."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connections

from funnels.demo import modx_tables_create
from funnels.routers import is_test_database

# Tests that care about time use this instant (a Saturday evening in Moscow).
CURRENT_TIME = dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.timezone.utc)


def pytest_configure(config):
    from pathlib import Path

    from django.conf import settings

    for db in settings.DATABASES.values():
        test_name = db.get("TEST", {}).get("NAME")
        if db["ENGINE"].endswith("sqlite3") and test_name:
            Path(test_name).parent.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        if not is_test_database("modx"):
            # pytest-django only creates the databases that collected tests ask for; never
            # fall through to the real MODX database.
            return
        modx_tables_create(alias="modx")


def pytest_collection_modifyitems(config, items):
    vendor = connections["default"].vendor
    for item in items:
        if item.get_closest_marker("mariadb_only") and vendor != "mysql":
            item.add_marker(pytest.mark.skip(reason="needs MariaDB; runs in the MariaDB pass"))


def pytest_report_header(config):
    return [
        f"databases: default={connections['default'].vendor} "
        f"({connections['default'].settings_dict['NAME']}), "
        f"modx={connections['modx'].vendor} ({connections['modx'].settings_dict['NAME']})"
    ]


@pytest.fixture
def now():
    return CURRENT_TIME
