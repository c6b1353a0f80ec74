"""No SECRET_KEY value in the repository can start production."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from django.conf import settings

from testizer_funnels.secret_key import public_key_files, secret_key_problem

BASE_DIR = Path(settings.BASE_DIR)
# SECRET_KEY=value, SECRET_KEY: value, "SECRET_KEY": "value", SECRET_KEY = "value"
ASSIGNMENT = re.compile(r"""SECRET_KEY["']?\s*[=:]\s*["']?([A-Za-z0-9_\-+/=!@#$%^&*().]{20,})""")


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=BASE_DIR, capture_output=True, check=True
    ).stdout.decode().split("\0")
    return [BASE_DIR / name for name in listed if name and (BASE_DIR / name).is_file()]


def test_every_secret_key_written_in_the_repository_is_refused_in_production():
    found = {}
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for match in ASSIGNMENT.finditer(text):
            found[match.group(1)] = path.relative_to(BASE_DIR)
    assert found, "expected at least the placeholder of .env.example"
    shipped = set(public_key_files(base_dir=BASE_DIR))
    for key, path in found.items():
        problem = secret_key_problem(key=key, base_dir=BASE_DIR)
        assert problem is not None, (key, path)
        # Refused because it is public, not by luck of its length: keep literal keys in
        # the files production reads for this check.
        if len(key) >= 50:
            assert BASE_DIR / path in shipped, path
            assert "example value from this repository" in problem


def test_a_fresh_key_is_accepted_and_a_missing_one_says_how_to_make_one():
    import secrets

    assert secret_key_problem(key=secrets.token_urlsafe(50), base_dir=BASE_DIR) is None
    problem = secret_key_problem(key="", base_dir=BASE_DIR)
    assert problem.startswith("SECRET_KEY must be set when APP_ENV=production; make one with: ")
    assert "\n" not in problem
