"""The funnel's page with its control share, and a control entry's page, in Chromium at
1366 and 390 px, in English and Russian: no sideways scrolling; screenshots in
test-artifacts/control-share-*.png."""

from __future__ import annotations

import pytest

from funnels.models import ExperimentGroup, Funnel, SyncStatus
from funnels.tests.browser_support import ARTIFACTS, chromium_launched
from funnels.tests.factories import FunnelEntryFactory

PASSWORD = "control-share-password-1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(scope="module")
def browser():
    with chromium_launched() as browser:
        yield browser


@pytest.mark.parametrize("language", ["en", "ru"])
@pytest.mark.parametrize("width", [1366, 390])
def test_the_share_field_and_a_control_entry_fit_the_screen(
    browser, live_server, django_user_model, language, width
):
    funnel, _ = Funnel.objects.get_or_create(
        slug="language", defaults={"name": "Language tests", "test_kind": "language",
                                   "certificate_type": 1})
    entry = FunnelEntryFactory(experiment_group=ExperimentGroup.CONTROL, control_period=1,
                               sync_status=SyncStatus.CONTROL)
    django_user_model.objects.create_superuser("lead", "lead@example.com", PASSWORD)
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.add_cookies([{"name": "django_language", "value": language,
                          "url": live_server.url}])
    page = context.new_page()
    try:
        change = f"/admin/funnels/funnel/{funnel.pk}/change/"
        page.goto(f"{live_server.url}/admin/login/?next={change}")
        page.fill("#id_username", "lead")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}{change}")
        assert page.locator("#id_control_share").is_visible()
        label = page.inner_text("label[for=id_control_share]").lower()
        assert label.startswith("control group, %" if language == "en"
                                else "контрольная группа, %")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"control-share-funnel-{language}-{width}.png"),
                        full_page=True)
        assert page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        page.goto(f"{live_server.url}/admin/funnels/funnelentry/{entry.pk}/change/")
        page.screenshot(path=str(ARTIFACTS / f"control-share-entry-{language}-{width}.png"),
                        full_page=True)
        assert page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        assert ("Not sent (control group)" if language == "en"
                else "Не отправляется (контрольная группа)") in page.content()
    finally:
        context.close()
