"""The command the demo prints to open the admin serves the full, styled admin.

Runs scripts/admin.sh for real (its own process, debug off as in production, an env file
like the one scripts/demo.sh writes) and looks at what a browser gets: the stylesheet,
the header's colours, and the dashboard's mode switch with the demo's Brevo settings.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from funnels.tests.browser_support import ARTIFACTS, chromium_launched
from funnels.tests.manage_subprocess import manage_run

ROOT = Path(settings.BASE_DIR)
DEMO = ROOT / "scripts" / "demo.sh"
ADMIN = ROOT / "scripts" / "admin.sh"
PASSWORD = "admin-script-test-1"

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_demo_prints_the_admin_script_and_writes_its_settings():
    text = DEMO.read_text()
    printed = text[text.index("Demo ready"):]
    assert "scripts/admin.sh" in printed
    assert "runserver" not in printed
    for name in ("DATABASE_URL", "MODX_DATABASE_URL", "BREVO_API_KEY",
                 "BREVO_LANGUAGE_LIST_ID", "BREVO_NON_LANGUAGE_LIST_ID"):
        assert re.search(rf"^{name}=\${name}$", text, re.M), name
    assert "/.demo.env" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.fixture
def admin_server(tmp_path):
    env_file = tmp_path / "demo.env"
    env_file.write_text(
        "APP_ENV=development\nDEBUG=false\n"
        f"DATABASE_URL=sqlite:///{tmp_path / 'db.sqlite3'}\n"
        f"MODX_DATABASE_URL=sqlite:///{tmp_path / 'modx.sqlite3'}\n"
        "BREVO_API_KEY=demo-key-admin-script\n"
        "BREVO_LANGUAGE_LIST_ID=1\nBREVO_NON_LANGUAGE_LIST_ID=2\n"
    )
    env = {"TESTIZER_ENV_FILE": str(env_file), "LANGUAGE_CODE": "ru"}
    created = manage_run("migrate", "--no-input", "-v0", env=env)
    assert created.returncode == 0, created.stderr
    made = manage_run(
        "shell", "-c",
        "from django.contrib.auth.models import User; "
        f"User.objects.create_superuser('demo', 'demo@example.com', {PASSWORD!r})",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    port = _free_port()
    process = subprocess.Popen(
        ["bash", str(ADMIN)],
        # Only what a shell gives: no PYTEST_VERSION, so the settings read the env file.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
             "DEMO_ENV_FILE": str(env_file), "ADMIN_PORT": str(port)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(base + "/admin/login/", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.stdout else ""
                    pytest.fail(f"scripts/admin.sh did not serve the admin:\n{output}")
                time.sleep(0.3)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_the_printed_admin_command_serves_a_styled_admin_with_the_demo_settings(admin_server):
    page_html = urllib.request.urlopen(admin_server + "/admin/login/").read().decode()
    css = re.search(r'href="([^"]*/admin/css/base[^"]*\.css)"', page_html)
    assert css, "no admin stylesheet on the login page"
    with urllib.request.urlopen(admin_server + css.group(1)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/css")
        assert b"--primary" in response.read()

    with chromium_launched() as browser:
        context = browser.new_context(locale="ru-RU", viewport={"width": 1366, "height": 900})
        page = context.new_page()
        page.goto(admin_server + "/admin/login/")
        # Unstyled, the header has no background and the page's font is the browser's.
        header_bg = page.eval_on_selector("#header", "e => getComputedStyle(e).backgroundColor")
        assert header_bg not in ("rgba(0, 0, 0, 0)", "transparent"), header_bg
        page.fill("#id_username", "demo")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#funnels-dashboard")
        page.screenshot(path=str(ARTIFACTS / "admin_script_dashboard_ru.png"), full_page=True)
        # The demo's Brevo settings reached the admin: nothing blocks the live switch.
        assert page.locator("#funnels-live-blockers").count() == 0
        assert page.locator("#funnels-toggle-button").is_enabled()
        context.close()
