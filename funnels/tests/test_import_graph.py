"""The job never loads test tooling: the fake Brevo and the OpenAPI checker (and what they
need, openapi-core, PyYAML, jsonschema: development-only requirements) stay out of a live
run_funnels, as cron starts it. `python -X importtime` lists every module a process imports.
"""

from __future__ import annotations

import re

import pytest

from funnels.tests.sync_support import (
    manage_run,
    subprocess_env,
)

pytestmark = pytest.mark.django_db(databases=["default", "modx"], transaction=True)

TEST_TOOLING = ("fake_brevo", "openapi_core", "yaml", "jsonschema")


def _imported(stderr: str) -> set[str]:
    # "import time:       123 |        456 |   package.module"
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s+(\S+)\s*$", stderr, re.M)}


def test_a_live_run_imports_no_test_tooling(live_two_people, fake_brevo, tmp_path):
    env = subprocess_env(fake=fake_brevo, log_file=tmp_path / "app.log",
                         FUNNELS_INITIAL_LOOKBACK_DAYS="3650", PYTHONPROFILEIMPORTTIME="1")

    done = manage_run("run_funnels", env=env)

    assert done.returncode == 0, done.stderr[-2000:]
    assert len(fake_brevo.contacts) == 2  # it really went live, through the client
    modules = _imported(done.stderr)
    assert "funnels.brevo.client" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in TEST_TOOLING)
    assert loaded == []
    # Nor the one-off adoption tool, which only adopt_legacy_entries runs.
    assert not [m for m in modules if m.startswith("funnels.adoption")]
