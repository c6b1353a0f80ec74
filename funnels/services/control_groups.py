"""Control groups: who of a funnel's new entries is held out from Brevo, and the share.

Assignment. A person's place is a number in [0, 1) drawn from a keyed hash of the funnel
and their normalised email: HMAC-SHA256 with FUNNELS_CONTROL_SECRET, the first 8 bytes
read as an integer over 2**64. The person is in control when that number is below the
funnel's share. The same person therefore lands in the same group on every test and after
a re-entry without any lookup, in a dry run exactly as in the live run, and nobody without
the secret can tell from an address which group it falls in. The funnel's slug is part
of the message, so the groups of two funnels are independent. Raising the share only
adds people to control (everyone below 10 % is also below 20 %).

Periods. Changing the share starts a new period (a ControlPeriod row, the funnel's
control_period moves on); every entry records the period it was assigned in, and the
report compares groups only within one period, because a different share is a different
experiment.

Control entries are written with sync status `control`, which the outbox never selects
and no writer moves out of, so nothing about them reaches Brevo; their purchases are
tracked like everyone's. Their funnel starts when the run assigns them.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from funnels.models import ControlPeriod, ExperimentGroup, Funnel

MAX_CONTROL_SHARE = 50
_SCALE = 2**64


def control_secret() -> bytes:
    """FUNNELS_CONTROL_SECRET (settings derive it from SECRET_KEY when it is not set)."""
    return settings.FUNNELS_CONTROL_SECRET.encode("utf-8")


def control_position(*, funnel_slug: str, email: str, secret: bytes | None = None) -> float:
    """The person's uniform number in [0, 1) for this funnel (email already normalised)."""
    key = control_secret() if secret is None else secret
    message = f"{funnel_slug}\n{email}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def control_group_of(
    *, funnel_slug: str, email: str, share: int, secret: bytes | None = None
) -> str:
    """treatment or control for a share in percent (0 puts everyone in treatment)."""
    if share <= 0:
        return ExperimentGroup.TREATMENT
    position = control_position(funnel_slug=funnel_slug, email=email, secret=secret)
    return ExperimentGroup.CONTROL if position < share / 100 else ExperimentGroup.TREATMENT


def control_share_validate(share: int) -> None:
    if not isinstance(share, int) or not 0 <= share <= MAX_CONTROL_SHARE:
        raise ValidationError(
            _("The control group share must be a whole number from 0 to %(max)s.")
            % {"max": MAX_CONTROL_SHARE}
        )


@transaction.atomic
def funnel_control_share_set(*, funnel: Funnel, user, share: int, now: datetime) -> Funnel:
    """Set a funnel's control share: a new period starts (even back to 0, so that the
    report never mixes people assigned under different shares), recorded in the admin
    log with who changed it from what to what. The caller checks the permission
    (funnels.change_control_share); this refuses a share out of range."""
    control_share_validate(share)
    row = Funnel.objects.select_for_update().get(pk=funnel.pk)
    previous = row.control_share
    if previous == share:
        return row
    row.control_share = share
    row.control_period += 1
    row.save(update_fields=["control_share", "control_period", "updated_at"])
    ControlPeriod.objects.create(
        funnel=row, number=row.control_period, share=share, started_at=now,
        started_by=user if getattr(user, "pk", None) else None,
    )
    if getattr(user, "pk", None):
        LogEntry.objects.log_actions(
            user_id=user.pk,
            queryset=[row],
            action_flag=CHANGE,
            change_message=(
                f"control group: {previous}% -> {share}% (period {row.control_period})"
            ),
            single_object=True,
        )
    funnel.control_share = row.control_share
    funnel.control_period = row.control_period
    return row
