import importlib
import io

import pytest
from django.conf import settings
from django.core.management import get_commands, load_command_class

from funnels.models import SyncRun


def _entries():
    return [pytest.param(job, id=f"job{n}") for n, job in enumerate(settings.CRONJOBS)]


def _callable(path):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("job", _entries())
def test_every_cron_job_resolves_to_a_callable(job):
    schedule, path, *rest = job
    assert len(schedule.split()) == 5, schedule
    assert callable(_callable(path))


@pytest.mark.parametrize("job", _entries())
def test_management_command_jobs_name_a_command_and_valid_options(job):
    _, path, *rest = job
    if path != "django.core.management.call_command":
        pytest.skip("not a management command job")
    args = rest[0] if rest else []
    kwargs = rest[1] if len(rest) > 1 else {}
    name = args[0]
    commands = get_commands()
    assert name in commands, f"no management command {name!r}"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    dests = {action.dest: action for action in parser._actions}
    for key, value in kwargs.items():
        assert key in dests, f"{name} has no option {key!r}"
        if dests[key].choices:
            assert value in dests[key].choices
    parser.parse_args([str(a) for a in args[1:]])


def test_the_schedule_follows_the_setting():
    minutes = settings.FUNNELS_SCHEDULE_MINUTES
    assert any(job[0] == f"*/{minutes} * * * *" for job in settings.CRONJOBS)


@pytest.mark.django_db(databases=["default", "modx"])
def test_the_funnel_job_runs_as_cron_would_run_it():
    [job] = [j for j in settings.CRONJOBS if j[2][:1] == ["run_funnels"]]
    _, path, args, kwargs, *_ = job
    _callable(path)(*args, **kwargs, stdout=io.StringIO(), stderr=io.StringIO())
    run = SyncRun.objects.get()
    assert run.trigger == "cron"
    assert run.status == "success"
    assert run.dry_run is True  # the runtime settings row starts in dry run
