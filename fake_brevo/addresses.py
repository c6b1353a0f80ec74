"""Which addresses the fake Brevo accepts as a contact's email.

Brevo's description types every contact email as ``format: email`` (RFC 5321's mailbox,
not ``idn-email``), and Brevo refuses what a mail system would: an empty domain label
(``user@example..com``), a dot at either end of the local part, two dots in a row, a
domain without a dot, a label starting or ending with a hyphen, an all-digit top-level
domain, an address over 254 characters or a local part over 64. The funnels send only
addresses their own check (``funnels/emails.py``) accepted; the fake must be at least as
strict, or a test could pass on an address Brevo would refuse. It does not import the
product's check, so that the two can be compared: it is written here, stdlib only, for
the ASCII forms that reach Brevo (international domains go as punycode, and Brevo's
``format: email`` has no Unicode).

Stricter than RFC 5321 on purpose, like ours: quoted local parts, IP-literal domains and
comments are legal there but are not addresses a marketing list takes.
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard

__all__ = ["MAX_ADDRESS", "MAX_LOCAL", "address_valid"]

MAX_ADDRESS = 254  # RFC 5321: the forward path is at most 256 octets with its brackets.
MAX_LOCAL = 64
_LOCAL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*", re.I)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.I)


def address_valid(value: Any) -> TypeGuard[str]:
    """Would Brevo take this as a contact's email? (Case does not matter to it.)"""
    if not isinstance(value, str) or not value.isascii() or len(value) > MAX_ADDRESS:
        return False
    local, at, domain = value.rpartition("@")
    if not at or not local or len(local) > MAX_LOCAL or not _LOCAL.fullmatch(local):
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit()
