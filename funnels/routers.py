"""Send the MODX models to the read-only "modx" alias and keep everything else off it.

MODX belongs to the website: we never write there and never migrate there. The demo
seeder and the test factories are the only writers, and they say so explicitly with
`modx_writes_allowed()`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from django.db import connections

MODX_ALIAS = "modx"
MODX_APP_LABEL = "modx"

_writes_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "modx_writes_allowed", default=False
)


class ModxWriteRefused(RuntimeError):
    """Something tried to write to the MODX database."""


@contextlib.contextmanager
def modx_writes_allowed() -> Iterator[None]:
    token = _writes_allowed.set(True)
    try:
        yield
    finally:
        _writes_allowed.reset(token)


def is_test_database(alias: str) -> bool:
    """Whether the alias points at a test database (test_* by Django's naming, or SQLite
    in memory): the only MODX databases we ever create tables in or migrate."""
    name = str(connections[alias].settings_dict["NAME"])
    return name.rsplit("/", 1)[-1].startswith("test_") or "memorydb" in name


def _is_modx(model) -> bool:
    return getattr(model._meta, "app_label", None) == MODX_APP_LABEL


class ModxRouter:
    def db_for_read(self, model, **hints):
        return MODX_ALIAS if _is_modx(model) else "default"

    def db_for_write(self, model, **hints):
        if _is_modx(model):
            if not _writes_allowed.get():
                raise ModxWriteRefused(
                    f"refusing to write {model._meta.db_table}: the MODX database is read only"
                )
            return MODX_ALIAS
        return "default"

    def allow_relation(self, obj1, obj2, **hints):
        # Relations never cross the two databases: they may be different servers.
        return _is_modx(obj1) == _is_modx(obj2)

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if db == MODX_ALIAS or app_label == MODX_APP_LABEL:
            return False
        return True
