"""Is the job ready to run live? The one definition, used by the run (which refuses with
exit 78), by the Brevo client factory and by the admin's switch to live (which refuses
with the same reasons, in words)."""

from __future__ import annotations

from django.conf import settings

from funnels.labels import error_label
from funnels.models import Funnel
from funnels.selectors.funnels import funnel_list_ids, funnels_all

API_KEY_MISSING = "BREVO_API_KEY is not set"


def live_config_problems(
    *, funnels: list[Funnel] | None = None, api_key: str | None = None,
    list_ids: dict[str, int | None] | None = None,
) -> list[str]:
    """What is missing for a live run, as the English lines a run records; empty when it
    may talk to Brevo. `funnels=None` reads them; `api_key=None` takes the setting;
    `list_ids`: the run's (funnel_list_ids), else looked up here."""
    key = settings.BREVO_API_KEY if api_key is None else api_key
    problems = []
    if not key:
        problems.append(API_KEY_MISSING)
    funnels = funnels_all() if funnels is None else funnels
    if list_ids is None:
        list_ids = funnel_list_ids(funnels=funnels)
    for funnel in funnels:
        if funnel.active and not list_ids.get(funnel.slug):
            problems.append(f"funnel {funnel.slug!r} has no Brevo list id")
    return problems


def live_config_problems_display() -> list[str]:
    """The same problems in the page's language."""
    return [error_label(problem) for problem in live_config_problems()]
