"""Reads of our own funnel tables that the sync engine needs."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings

from funnels.models import Funnel, FunnelEntry, SyncState

# The two standard funnels may take their list from the environment, so that a fresh
# installation configured only through .env works; a list id saved on the row wins.
_SETTINGS_LIST_IDS = {
    "language": "BREVO_LANGUAGE_LIST_ID",
    "non_language": "BREVO_NON_LANGUAGE_LIST_ID",
}


def funnels_all() -> list[Funnel]:
    return list(Funnel.objects.order_by("id"))


def funnel_accepts(*, funnel: Funnel, kind: str | None, test_id: int | None) -> bool:
    """Does a result of this test (kind and id) qualify for the funnel?"""
    if test_id is None:
        return False
    if funnel.test_kind != Funnel.TestKind.ANY and funnel.test_kind != kind:
        return False
    wanted = funnel.test_ids or []
    return not wanted or test_id in {int(t) for t in wanted}


def funnel_list_id(*, funnel: Funnel) -> int | None:
    if funnel.brevo_list_id:
        return int(funnel.brevo_list_id)
    setting = _SETTINGS_LIST_IDS.get(funnel.slug)
    value = getattr(settings, setting, None) if setting else None
    return int(value) if value else None


def funnel_list_ids() -> dict[str, int | None]:
    """Funnel slug -> Brevo list id, for every funnel row."""
    return {funnel.slug: funnel_list_id(funnel=funnel) for funnel in funnels_all()}


def funnel_entries_existing(
    *, emails: Iterable[str], funnel_types: Iterable[str]
) -> set[tuple[str, str, int | None]]:
    """(email, funnel_type, test_id) of the entries these people already have: ONE query,
    served by idx_email_funnel."""
    emails = sorted(set(emails))
    funnel_types = sorted(set(funnel_types))
    if not emails or not funnel_types:
        return set()
    return set(
        FunnelEntry.objects.filter(email__in=emails, funnel_type__in=funnel_types).values_list(
            "email", "funnel_type", "test_id"
        )
    )


def watermark_get(*, key: str) -> int | None:
    """The last MODX id fully handled by `key`'s reader; None before the first live run."""
    return SyncState.objects.filter(key=key).values_list("last_id", flat=True).first()
