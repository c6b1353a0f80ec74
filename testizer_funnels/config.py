"""Typed, strict reading of the environment; the only place that looks at os.environ.

django-environ parses URLs and lists for us, but its booleans treat any unknown word as
False, which for APP_DRY_RUN would mean a silent switch to live mode. Booleans, integers
and time zones are therefore parsed here, strictly, and a bad value raises ConfigError,
which manage.py turns into one line on stderr.
"""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import environ

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
IDENTIFIER = re.compile(r"[A-Za-z0-9_]*")


class ConfigError(Exception):
    """A setting has a value we refuse to guess about."""


class Config:
    def __init__(self, *, environ_map: dict[str, str] | None = None) -> None:
        self._env = os.environ if environ_map is None else environ_map
        self._parser = environ.Env()

    def raw(self, name: str) -> str | None:
        return self._env.get(name)

    def str(self, name: str, default: str = "") -> str:
        value = self._env.get(name)
        return default if value is None else value.strip()

    def bool(self, name: str, default: bool) -> bool:
        value = self._env.get(name)
        if value is None:
            return default
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ConfigError(
            f"{name}={value!r} is not a boolean; write true or false "
            f"(accepted: {', '.join(sorted(TRUE_WORDS | FALSE_WORDS))})"
        )

    def int(
        self, name: str, default: int | None, *, minimum: int | None = None
    ) -> int | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return default
        try:
            number = int(value.strip())
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a whole number") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{name}={number} must be at least {minimum}")
        return number

    def float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return default
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number") from None
        if number < minimum:
            raise ConfigError(f"{name}={number} must be at least {minimum}")
        return number

    def list(self, name: str, default: list[str]) -> list[str]:
        value = self._env.get(name)
        if value is None:
            return default
        return [item.strip() for item in value.split(",") if item.strip()]

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(name, default)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of: {', '.join(choices)}")
        return value

    def identifier(self, name: str, default: str) -> str:
        """Letters, digits and underscores only: the value becomes part of a table name,
        and a quote or backtick in it would break out of the quoted name."""
        value = self.str(name, default)
        if not IDENTIFIER.fullmatch(value):
            raise ConfigError(
                f"{name}={value!r} may contain only letters, digits and underscores"
            )
        return value

    def time_zone(self, name: str, default: str) -> str:
        value = self.str(name, default)
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{name}={value!r} is not a known time zone") from None
        return value

    def database(self, name: str, default_url: str) -> dict[str, Any]:
        url = self.str(name, "") or default_url
        return self.database_from_url(name=name, url=url)

    def database_from_url(self, *, name: str, url: str) -> dict[str, Any]:
        try:
            # django-environ warns with the whole URL (password included) about some
            # shapes of URL; the warning would reach stderr and the logs.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = self._parser.db_url_config(url)
        except Exception:  # noqa: BLE001 - the URL may hold a password: never echo it
            raise ConfigError(f"{name} is not a valid database URL") from None
        engine = parsed.get("ENGINE", "")
        if engine not in {
            "django.db.backends.sqlite3",
            "django.db.backends.mysql",
        }:
            raise ConfigError(f"{name}: only sqlite:// and mysql:// URLs are supported")
        return parsed


BOM = "\ufeff"


@dataclass(frozen=True)
class DotenvRead:
    path: Path
    found: bool = False
    # The file started with a byte-order mark, which was stripped (and said on stderr).
    bom_stripped: bool = False


def read_dotenv(path: Path, *, stderr: TextIO | None = None) -> DotenvRead:
    """Load KEY=VALUE lines into os.environ without overriding what is already set.

    A byte-order mark at the start (the earlier tool's .env.example has one, so does any
    .env copied from it) would glue itself to the first name: django-environ prints
    "Invalid line: \ufeffAPP_ENV=production" and ignores that line, so the installation
    runs as development without anyone noticing. It is stripped here, with a warning on
    stderr every time, until the file is saved without it. A mark anywhere else (two
    files joined) cannot be stripped safely: refused.
    """
    if not path.is_file():
        return DotenvRead(path=path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    bom = text.startswith(BOM)
    if bom:
        text = text[len(BOM):]
        print(
            f"warning: {path} starts with a byte-order mark (BOM); it was stripped. Save "
            "the file as UTF-8 without BOM: sed -i '1s/^\xEF\xBB\xBF//' " + str(path),
            file=stderr or sys.stderr,
        )
    if BOM in text:
        number = text[: text.index(BOM)].count("\n") + 1
        raise ConfigError(
            f"{path} line {number} contains a byte-order mark (two files joined?); "
            "remove it"
        )
    environ.Env.read_env(io.StringIO(text), overwrite=False)
    return DotenvRead(path=path, found=True, bom_stripped=bom)
