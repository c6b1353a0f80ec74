"""A last line of defence: secrets that somehow reach a log record are replaced.

The code never logs secrets on purpose; this filter makes an accident harmless.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from funnels.brevo import masking


def known_secrets() -> list[str]:
    values = [
        getattr(settings, name, "")
        for name in ("BREVO_API_KEY", "EMAIL_HOST_PASSWORD", "FUNNELS_PING_URL", "SENTRY_DSN",
                     "FUNNELS_CONTROL_SECRET")
    ]
    for db in settings.DATABASES.values():
        values.append(db.get("PASSWORD") or "")
    # Short values would redact ordinary words; real keys and passwords are longer.
    return [v for v in values if v and len(v) >= 6]


def redact(text: str, *secrets: str | None) -> str:
    """`text` without the configured secrets (and any given): masking.redact's marker."""
    return masking.redact(text, *known_secrets(), *secrets)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Formatting the traceback happens later; pre-render it redacted.
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


class UtcFormatter(logging.Formatter):
    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"
