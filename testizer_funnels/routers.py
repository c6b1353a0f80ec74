"""Moved to funnels/routers.py: the app holds the MODX alias and its router, the project
only names the router in settings. Kept so that older imports keep working."""

from funnels.routers import (  # noqa: F401
    MODX_ALIAS,
    ModxRouter,
    ModxWriteRefused,
    is_test_database,
    modx_writes_allowed,
)
