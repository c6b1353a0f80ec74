"""Build the one Brevo client from settings (the API key comes from settings only)."""

from __future__ import annotations

from django.conf import settings

from funnels.brevo.client import BrevoClient
from funnels.selectors.readiness import live_config_problems


class BrevoNotConfigured(Exception):
    """Live mode needs an API key."""


def brevo_client_build(**overrides) -> BrevoClient:
    """A client configured from BREVO_* settings; keyword overrides are for tests."""
    api_key = overrides.pop("api_key", settings.BREVO_API_KEY)
    problems = live_config_problems(funnels=[], api_key=api_key or "")
    if problems:
        raise BrevoNotConfigured("; ".join(problems))
    options = {
        "base_url": settings.BREVO_BASE_URL,
        "connect_timeout": settings.BREVO_CONNECT_TIMEOUT,
        "read_timeout": settings.BREVO_READ_TIMEOUT,
        "max_retries": settings.BREVO_MAX_RETRIES,
        "requests_per_second": settings.BREVO_REQUESTS_PER_SECOND,
    }
    options.update(overrides)
    return BrevoClient(api_key=api_key, **options)
