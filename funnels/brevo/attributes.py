"""The names of the Brevo contact attributes a funnel writes, and what Brevo accepts as one.

A funnel writes three attributes: which funnel the person is in (text), whether they bought
the funnel's certificate (boolean) and when (date). Today's names are the defaults; a funnel
may have its own (LANGUAGE_CERTIFICATE_PURCHASED, ...) so that a person in two funnels gets
a true value for each instead of one value shared by both. The attributes must exist in
the Brevo account: Brevo ignores an attribute it does not know, silently.

Brevo's rules, as its API description states them: an attribute is named in capital
letters when a contact is written ("The attribute's parameter should be passed in capital
letter"); Brevo's own attribute names are letters, digits and underscores starting with a
letter (FIRSTNAME, DOUBLE_OPT-IN aside). Some names are not attributes but the contact's
identifiers (EMAIL in attributes renames the contact; SMS, WHATSAPP, LANDLINE_NUMBER,
EXT_ID): a funnel never writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

MAX_LENGTH = 50
DEFAULT_FUNNEL_TYPE = "FUNNEL_TYPE"
DEFAULT_PURCHASED = "CERTIFICATE_PURCHASED"
DEFAULT_PURCHASED_AT = "CERTIFICATE_PURCHASED_AT"
RESERVED = frozenset({"EMAIL", "SMS", "WHATSAPP", "LANDLINE_NUMBER", "EXT_ID"})
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class AttributeNames:
    """The attributes one funnel writes."""

    funnel_type: str = DEFAULT_FUNNEL_TYPE
    purchased: str = DEFAULT_PURCHASED
    purchased_at: str = DEFAULT_PURCHASED_AT

    def roles(self) -> dict[str, str]:
        """Name -> what it holds ("funnel_type", "purchased", "purchased_at")."""
        return {self.funnel_type: "funnel_type", self.purchased: "purchased",
                self.purchased_at: "purchased_at"}


DEFAULT_NAMES = AttributeNames()


def attribute_name_validate(value: str) -> None:
    """A model/form validator: the name is one Brevo takes and a funnel may write."""
    if not isinstance(value, str) or not value or len(value) > MAX_LENGTH:
        raise ValidationError(
            _("An attribute name has 1 to %(max)d characters."),
            code="attribute_length", params={"max": MAX_LENGTH},
        )
    if not value.isascii() or not _NAME.fullmatch(value):
        raise ValidationError(
            _("Use capital Latin letters, digits and underscores, starting with a letter "
              "(as Brevo names attributes), e.g. LANGUAGE_CERTIFICATE_PURCHASED."),
            code="attribute_name",
        )
    if value in RESERVED:
        raise ValidationError(
            _("%(name)s identifies the contact in Brevo; it cannot be a funnel's attribute."),
            code="attribute_reserved", params={"name": value},
        )
