"""MODX's naive times as one text, however they were read.

The ORM hands a MODX time back aware (DATABASES["modx"]["TIME_ZONE"]), a raw cursor hands
it back naive (mysqlclient) or as text (SQLite, for a column declared without a datetime
type). A row's fingerprint must not depend on which read it came from, so the fingerprint
takes the wall-clock time MODX stored, as ISO text.
"""

from __future__ import annotations

import datetime as dt

from django.db import connections
from django.utils.dateparse import parse_datetime

from funnels.routers import MODX_ALIAS


def modx_time_text(value) -> str | None:
    """The naive wall-clock time MODX stored, as ISO text; None stays None, text that is
    not a time stays as it is."""
    if value is None:
        return None
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            return value
        value = parsed
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(connections[MODX_ALIAS].timezone).replace(tzinfo=None)
    return value.isoformat()
