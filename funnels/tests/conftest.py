"""Fixtures every sync test may ask for by name: the fake Brevo (real HTTP on loopback),
clients bound to it, live settings pointing at it, the MODX catalogue. Defined in
sync_support.py (whose helpers test modules import); made visible here, to funnels/tests
only, instead of each module importing them."""

from funnels.tests.sync_support import (  # noqa: F401 - fixtures
    catalogue,
    client_factory,
    configured,
    fake_brevo,
    live_settings,
    live_two_people,
    sleeps,
)
