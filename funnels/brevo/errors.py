"""Error types raised by the Brevo client.

Kept framework-free so that services, management commands and the fake can
share them. Callers branch on the class (and ``status``/``code``), never on
the message: Brevo rewords its messages.
"""

from __future__ import annotations

from collections.abc import Iterable

from funnels.brevo.masking import mask_emails_in_text, redact

__all__ = [
    "BrevoAuthError",
    "BrevoError",
    "BrevoPermanentError",
    "BrevoTransientError",
]

# Proxy error pages can be whole HTML documents; a log line needs only the start.
_MAX_MESSAGE_CHARS = 500


class BrevoError(Exception):
    """Base class for every failure talking to Brevo.

    ``permanent`` tells the caller whether retrying the same request later can
    succeed; subclasses fix it so that it cannot disagree with the class.
    """

    permanent: bool = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        # The message may embed a response body, which we do not control: scrub
        # it here so that no construction path can leak the key or an address.
        clean = mask_emails_in_text(redact(str(message), *secrets))
        if len(clean) > _MAX_MESSAGE_CHARS:
            clean = clean[:_MAX_MESSAGE_CHARS] + "..."
        super().__init__(clean)
        self.message: str = clean
        self.status: int | None = status
        self.code: str | None = code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"
        )


class BrevoAuthError(BrevoError):
    """401: the key is missing, wrong or revoked. Stop the whole run."""

    permanent = True


class BrevoTransientError(BrevoError):
    """Worth retrying later: 5xx, proxy errors, timeouts, exhausted 429 budget."""

    permanent = False


class BrevoPermanentError(BrevoError):
    """This request will never succeed as sent (400, 404, ...)."""

    permanent = True
