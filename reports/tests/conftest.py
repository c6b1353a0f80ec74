"""Shared set-up for the report tests."""

from __future__ import annotations

import pytest

from funnels.models import Funnel


@pytest.fixture
def funnels(db):
    # Migration 0002 creates them, but a transactional test elsewhere may have flushed.
    for slug, cert_type in (("language", 1), ("non_language", 2)):
        Funnel.objects.get_or_create(
            slug=slug,
            defaults={"name": slug, "test_kind": slug, "certificate_type": cert_type},
        )
    return ["language", "non_language"]
