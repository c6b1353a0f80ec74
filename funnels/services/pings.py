"""Dead-man's-switch pings (healthchecks.io style), optional via FUNNELS_PING_URL.

GET <url>/start when a run starts, <url> when it finishes, <url>/fail when it fails. A
ping that cannot be delivered is logged and otherwise ignored: monitoring must never be
the reason a run fails. The URL usually embeds a private token, so it is never logged.
"""

from __future__ import annotations

import logging

import requests
from django.conf import settings

logger = logging.getLogger("funnels.pings")

PING_TIMEOUT = (3.0, 5.0)
_SUFFIX = {"start": "/start", "success": "", "fail": "/fail"}


def ping_send(*, event: str, url: str | None = None) -> bool:
    """True if the ping was delivered (2xx); False if disabled or failed."""
    base = settings.FUNNELS_PING_URL if url is None else url
    if not base:
        return False
    target = base.rstrip("/") + _SUFFIX[event]
    try:
        response = requests.get(target, timeout=PING_TIMEOUT)
    except requests.RequestException as exc:
        logger.warning("ping %s not delivered: %s", event, type(exc).__name__)
        return False
    if not 200 <= response.status_code < 300:
        logger.warning("ping %s answered HTTP %s", event, response.status_code)
        return False
    return True
