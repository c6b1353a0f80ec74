#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testizer_funnels.settings")
    from testizer_funnels.config import ConfigError

    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        # A bad setting is an operator mistake, not a bug: one clear line, no traceback.
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(78)


if __name__ == "__main__":
    main()
