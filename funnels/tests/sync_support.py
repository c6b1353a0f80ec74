"""Shared set-up for the sync engine tests: MODX catalogue, the fake Brevo, a run helper.

Its fixtures reach the tests through funnels/tests/conftest.py; its helpers are imported
by name.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from funnels.brevo.client import BrevoClient
from fake_brevo.server import FakeBrevo
from funnels.models import Funnel, RuntimeSettings
from funnels.modx import models as modx
from funnels.services.runs import run_funnels
from funnels.tests.factories import TestFactory, TestLanguageFactory, TestResultFactory
# One way to run manage.py in a child process (a clean environment plus `env`).
from funnels.tests.manage_subprocess import MANAGE, manage_run  # noqa: F401 - re-exported
from funnels.routers import modx_writes_allowed

# Long enough for the log redaction filter, distinctive enough to grep for.
API_KEY = "xkeysib-test-0123456789abcdef-SECRET"
LANGUAGE_LIST = 1
OTHER_LIST = 2

LANG_TEST = 1
LANG_TEST_2 = 2
OTHER_TEST = 21  # LangId 0
OTHER_TEST_2 = 22  # LangId 99: no such language row
SINCE = dt.date(2026, 10, 1)
RECENT = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)



class SleepRecorder:
    """Injected into the Brevo client: retries and polls cost no wall time in tests."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def modx_catalogue() -> None:
    """One language (id 1), two language tests, two non-language tests."""
    TestLanguageFactory(id=1)
    TestFactory(test_id=LANG_TEST, lang_id=1)
    TestFactory(test_id=LANG_TEST_2, lang_id=1)
    TestFactory(test_id=OTHER_TEST, lang_id=0)
    TestFactory(test_id=OTHER_TEST_2, lang_id=99)


def modx_result(email, test_id=LANG_TEST, *, completed_at=RECENT, **kwargs):
    return TestResultFactory(email=email, test_id=test_id, completed_at=completed_at, **kwargs)


def funnels_configure(*, language_list=LANGUAGE_LIST, other_list=OTHER_LIST) -> None:
    Funnel.objects.filter(slug="language").update(brevo_list_id=language_list)
    Funnel.objects.filter(slug="non_language").update(brevo_list_id=other_list)


def default_rows_restore() -> None:
    """Transactional tests flush our tables: put back what migration 0002 creates."""
    for slug, name, kind, cert in (
        ("language", "Language tests", "language", 1),
        ("non_language", "Non-language tests", "non_language", 2),
    ):
        Funnel.objects.get_or_create(
            slug=slug,
            defaults={"name": name, "test_kind": kind, "certificate_type": cert,
                      "brevo_list_id": getattr(settings, f"BREVO_{kind.upper()}_LIST_ID")},
        )
    RuntimeSettings.objects.get_or_create(id=1, defaults={"dry_run": settings.APP_DRY_RUN})


def modx_rows_delete() -> None:
    """Flushes skip unmanaged tables: transactional tests clean MODX themselves."""
    with modx_writes_allowed():
        for model in reversed(modx.MODX_MODELS):
            model.objects.using("modx").all().delete()


@pytest.fixture
def fake_brevo():
    with FakeBrevo(
        api_key=API_KEY, requests_per_second=None, process_requests_per_hour=None
    ) as fake:
        yield fake


@pytest.fixture
def sleeps():
    return SleepRecorder()


@pytest.fixture
def client_factory(fake_brevo, sleeps):
    def make(**overrides) -> BrevoClient:
        options = {
            "base_url": fake_brevo.base_url,
            "api_key": API_KEY,
            "max_retries": 3,
            "requests_per_second": 0,
            "connect_timeout": 2,
            "read_timeout": 2,
            "sleep": sleeps,
        }
        options.update(overrides)
        return BrevoClient(**options)

    return make


@pytest.fixture
def live_settings(settings, fake_brevo):
    settings.BREVO_API_KEY = API_KEY
    settings.BREVO_BASE_URL = fake_brevo.base_url
    settings.FUNNELS_PING_URL = ""
    return settings


@pytest.fixture
def catalogue():
    modx_catalogue()


@pytest.fixture
def live_two_people(fake_brevo):
    """For a run in a child process (transaction=True tests): a language and a non-language
    result in MODX, the job switched live; both databases put back afterwards."""
    default_rows_restore()
    modx_catalogue()
    modx_result("ann@example.com", LANG_TEST)
    modx_result("bob@example.com", OTHER_TEST)
    switched_to_live()
    yield
    modx_rows_delete()
    default_rows_restore()


@pytest.fixture
def configured():
    """The MODX catalogue plus list ids on both funnels."""
    modx_catalogue()
    funnels_configure()


def run_live(client_factory, *, now, chunk_size=100, since=SINCE, **kwargs):
    return run_funnels(
        now=now, dry_run=kwargs.pop("dry_run", False), trigger=kwargs.pop("trigger", "manual"),
        since=since, chunk_size=chunk_size, brevo_client_factory=client_factory, **kwargs,
    )


# -- subprocesses -------------------------------------------------------------------------


def database_url(alias: str) -> str:
    """A URL for the database this test process really uses (the test database)."""
    db = connections[alias].settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db.get("USER") or "root"
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    return f"mysql://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 3306}/{db['NAME']}"


def subprocess_env(*, fake: FakeBrevo | None, log_file: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TESTIZER_ENV_FILE": "/dev/null",
        "LANGUAGE_CODE": "en",
        "DATABASE_URL": database_url("default"),
        "MODX_DATABASE_URL": database_url("modx"),
        "LOG_FILE": str(log_file),
        "TIME_ZONE": settings.TIME_ZONE,
        "MODX_TIME_ZONE": settings.MODX_TIME_ZONE,
    }
    if fake is not None:
        env.update({
            "BREVO_BASE_URL": fake.base_url,
            "BREVO_API_KEY": fake.api_key,
            "BREVO_LANGUAGE_LIST_ID": str(LANGUAGE_LIST),
            "BREVO_NON_LANGUAGE_LIST_ID": str(OTHER_LIST),
            "BREVO_REQUESTS_PER_SECOND": "1000",
        })
    env.update(extra)
    return env


def manage_popen(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(MANAGE), *args],
        env=env, cwd=MANAGE.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )


def run_funnels_command(*args: str) -> tuple[int, str, str]:
    """`manage.py run_funnels ARGS` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        call_command("run_funnels", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def switched_to_live() -> None:
    """Live as an operator makes it: switched in the admin (audited), so the first run
    after it does not fall back to a dry run (services.runtime.live_needs_dry_run_first)."""
    from django.contrib.auth import get_user_model

    from funnels.services.runtime import dry_run_set

    user, _ = get_user_model().objects.get_or_create(
        username="operator", defaults={"is_staff": True}
    )
    runtime = RuntimeSettings.objects.get_or_create(id=1)[0]
    if not runtime.dry_run:
        runtime.dry_run = True
        runtime.save(update_fields=["dry_run"])
    dry_run_set(user=user, value=False)
