"""run_funnels --plan and explain_funnel name a person's control group."""

import io

import pytest
from django.core.management import call_command

from funnels.models import ExperimentGroup, Funnel, FunnelEntry
from funnels.services.control_groups import control_group_of, funnel_control_share_set
from funnels.tests.sync_support import (
    LANG_TEST,
    modx_result,
)
from funnels.tests.test_command_run_funnels import AS_OF, _call, ready  # noqa: F401

pytestmark = pytest.mark.django_db(databases=["default", "modx"])
SECRET = "a fixed secret for the command tests"


@pytest.fixture(autouse=True)
def english_and_secret(settings):
    settings.LANGUAGE_CODE = "en"
    settings.FUNNELS_CONTROL_SECRET = SECRET


def test_the_plan_and_explain_funnel_name_the_group(ready, fake_brevo, now):  # noqa: F811
    funnel_control_share_set(funnel=Funnel.objects.get(slug="language"), user=None,
                             share=50, now=now)
    emails = [f"person{i}@example.com" for i in range(12)]
    for email in emails:
        modx_result(email, LANG_TEST)
    code, out, _ = _call("--dry-run", "--plan", "--since", "2026-10-01", "--as-of", AS_OF)
    assert code == 0
    groups = {
        email: control_group_of(funnel_slug="language", email=email, share=50,
                                secret=SECRET.encode())
        for email in emails
    }
    assert set(groups.values()) == {ExperimentGroup.CONTROL, ExperimentGroup.TREATMENT}
    for email, group in groups.items():
        [line] = [line for line in out.splitlines() if email in line and "Would add" in line]
        assert f"group: {group} (control period 1, 50% control)" in line
    assert FunnelEntry.objects.count() == 0

    control = next(e for e, g in groups.items() if g == ExperimentGroup.CONTROL)
    text = io.StringIO()
    call_command("explain_funnel", control, stdout=text)
    assert "group in control period 1 (50% control): control group (held out from Brevo)" in (
        text.getvalue()
    )
