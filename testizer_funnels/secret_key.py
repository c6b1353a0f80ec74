"""Refuse a production SECRET_KEY that anyone can read in this repository.

`.env.example` carries a 50+ character placeholder, so a production `.env` copied from it
passes the length check with a key that is public. Any key found verbatim in the files we
ship as examples or documentation is refused; the test suite checks that no other tracked
file holds a SECRET_KEY value (testizer_funnels/tests/test_secret_key.py).
"""

from __future__ import annotations

from pathlib import Path

HOW_TO_MAKE_ONE = 'python3 -c "import secrets; print(secrets.token_urlsafe(50))"'


def public_key_files(*, base_dir: Path) -> list[Path]:
    """The tracked files that show example values of settings."""
    return [base_dir / ".env.example", base_dir / "README.md", *sorted((base_dir / "docs").glob("*.md"))]


def secret_key_is_public(*, key: str, base_dir: Path) -> bool:
    for path in public_key_files(base_dir=base_dir):
        try:
            if key in path.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


def secret_key_problem(*, key: str, base_dir: Path) -> str | None:
    """Why `key` cannot be a production key (one line), or None when it can."""
    if not key:
        return "SECRET_KEY must be set when APP_ENV=production; make one with: " + HOW_TO_MAKE_ONE
    if len(key) < 50:
        return (
            "SECRET_KEY must be at least 50 characters in production; make one with: "
            + HOW_TO_MAKE_ONE
        )
    if secret_key_is_public(key=key, base_dir=base_dir):
        return (
            "SECRET_KEY is the example value from this repository (anyone can read it); "
            "make one with: " + HOW_TO_MAKE_ONE
        )
    return None
