"""django-crontab's `crontab` command, with a `run` that keeps the job's exit code.

`manage.py crontab add` installs lines of the form `... manage.py crontab run <hash>`.
django-crontab's own `run` catches every exception the job raises, SystemExit included,
and logs a traceback: a failed run exited 0 and cron.log got pages instead of the one
line the command prints. Here `run` calls the job and lets its exit code through, so the
installed line exits like `manage.py run_funnels` itself (README, "Commands"). `add`,
`show` and `remove` are django-crontab's.
"""

from __future__ import annotations

import sys
from importlib import import_module

from django_crontab.crontab import Crontab
from django_crontab.management.commands.crontab import Command as DjangoCrontabCommand

EXIT_CONFIG = 78


def cron_job_by_hash(job_hash: str):
    """The CRONJOBS entry the installed line names; RuntimeError if none matches."""
    # django-crontab keeps the hash private; its lookup is the only definition of it, so
    # we call it rather than compute a second, possibly different, hash.
    return Crontab()._Crontab__get_job_by_hash(job_hash)


class Command(DjangoCrontabCommand):
    def handle(self, *args, **options):
        if options["subcommand"] != "run":
            return super().handle(*args, **options)
        try:
            job = cron_job_by_hash(options["jobhash"] or "")
        except RuntimeError:
            self.stderr.write(
                f"configuration error: no job with hash {options['jobhash']!r} in CRONJOBS; "
                "run `manage.py crontab add` again"
            )
            sys.exit(EXIT_CONFIG)
        path = job[1]
        job_args = job[2] if len(job) > 2 and not isinstance(job[2], str) else []
        job_kwargs = job[3] if len(job) > 3 and isinstance(job[3], dict) else {}
        module_path, name = path.rsplit(".", 1)
        function = getattr(import_module(module_path), name)
        # SystemExit (the command's exit code) and the errors manage.py turns into one line
        # (configuration, database unavailable) pass through untouched.
        function(*job_args, **job_kwargs)
