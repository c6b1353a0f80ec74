"""Masking helpers so that logs and error messages stay free of personal data."""

from __future__ import annotations

import re

__all__ = ["mask_email", "mask_emails_in_text", "redact"]

# Deliberately loose: it only has to catch what a human would recognise as an
# address inside free text (Brevo messages, proxy bodies), not validate it.
_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+\-']+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")

REDACTED = "***"
SECRET_REDACTED = "[redacted]"


def mask_email(email: str) -> str:
    """Return ``j***@example.com`` for ``john@example.com``.

    The domain is kept because it is what operators need when a whole provider
    misbehaves; the local part is what identifies a person.
    """
    if not isinstance(email, str) or "@" not in email:
        return REDACTED
    local, _, domain = email.rpartition("@")
    if not local:
        return f"{REDACTED}@{domain}"
    return f"{local[0]}{REDACTED}@{domain}"


def mask_emails_in_text(text: str) -> str:
    """Mask every address found in ``text``; Brevo sometimes echoes the email."""
    return _EMAIL_IN_TEXT.sub(lambda match: mask_email(match.group(0)), text)


def redact(text: str, *secrets: str | None) -> str:
    """Replace each non-empty secret in ``text`` with ``[redacted]``: the one definition
    (funnels.logging_filters.redact adds the configured secrets).

    Short secrets are still removed: an API key must never leak, even at the
    cost of over-redacting an unrelated substring.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, SECRET_REDACTED)
    return text
