#!/usr/bin/env python
import os
import sys

# sysexits.h: EX_TEMPFAIL for a database we cannot reach (worth retrying), EX_CONFIG for a
# setting we refuse to guess about (not worth retrying until someone edits it).
EXIT_DATABASE_UNAVAILABLE = 75
EXIT_CONFIG = 78


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _redacted(exc: BaseException) -> str:
    # The driver's message names host and port but not the password; redact anyway, and
    # if the settings cannot even be read, say less rather than risk echoing a secret.
    try:
        from funnels.logging_filters import redact

        return _one_line(redact(str(exc)))
    except Exception:  # noqa: BLE001
        return exc.__class__.__name__


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testizer_funnels.settings")
    from django.db.utils import InterfaceError, OperationalError

    from testizer_funnels.config import ConfigError

    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        # A bad setting is an operator mistake, not a bug: one clear line, no traceback.
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except (OperationalError, InterfaceError) as exc:
        # An unreachable or refusing database is an operations problem, not a bug: the
        # traceback would only bury the one line that says what is wrong.
        print(f"database unavailable: {_redacted(exc)}", file=sys.stderr)
        sys.exit(EXIT_DATABASE_UNAVAILABLE)


if __name__ == "__main__":
    main()
