"""Small builders for hand-computed report fixtures."""

from __future__ import annotations

import datetime as dt

from funnels.tests.factories import FunnelEntryFactory

UTC = dt.timezone.utc


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def entry(email, entered_at, *, purchased_at=None, funnel="language", test_id=100):
    return FunnelEntryFactory(
        email=email,
        funnel_type=funnel,
        test_id=test_id,
        entered_at=entered_at,
        certificate_purchased=purchased_at is not None,
        certificate_purchased_at=purchased_at,
    )
