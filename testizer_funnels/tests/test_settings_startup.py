"""What an operator sees when the process starts: one line, the right exit code, no secret.

Each case starts `manage.py` in a child process with a clean environment (PATH and the
variables under test only, TESTIZER_ENV_FILE=/dev/null so no .env is read).
"""

from __future__ import annotations

import secrets

import pytest

from funnels.tests.manage_subprocess import MANAGE, manage_run

EXIT_CONFIG = 78
EXIT_DATABASE_UNAVAILABLE = 75
API_KEY = "xkeysib-0123456789abcdef-startup-test"
PASSWORD = "s3cr3t-pa55word"


@pytest.fixture
def sqlite_env(tmp_path):
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MODX_DATABASE_URL": f"sqlite:///{tmp_path / 'modx.sqlite3'}",
        "LOG_FILE": str(tmp_path / "app.log"),
    }


def test_a_clean_environment_starts_in_dry_run(sqlite_env):
    done = manage_run("check", env=sqlite_env)
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout
    assert done.stderr == ""


def test_live_mode_fully_configured_starts(sqlite_env):
    done = manage_run("check", env={
        **sqlite_env, "APP_DRY_RUN": "false", "BREVO_API_KEY": API_KEY,
        "BREVO_LANGUAGE_LIST_ID": "3", "BREVO_NON_LANGUAGE_LIST_ID": "4",
    })
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("variables, expected", [
    ({"APP_DRY_RUN": "maybe"}, "APP_DRY_RUN='maybe' is not a boolean"),
    ({"APP_DRY_RUN": ""}, "APP_DRY_RUN='' is not a boolean"),
    ({"APP_DRY_RUN": "false", "BREVO_API_KEY": API_KEY, "BREVO_LANGUAGE_LIST_ID": "3"},
     "APP_DRY_RUN=false (live) needs BREVO_NON_LANGUAGE_LIST_ID to be set"),
    ({"APP_DRY_RUN": "false", "BREVO_API_KEY": API_KEY},
     "needs BREVO_LANGUAGE_LIST_ID, BREVO_NON_LANGUAGE_LIST_ID to be set"),
    ({"BREVO_MAX_RETRIES": "lots"}, "BREVO_MAX_RETRIES='lots' is not a whole number"),
    ({"MODX_TIME_ZONE": "Moscow"}, "MODX_TIME_ZONE='Moscow' is not a known time zone"),
    ({"APP_ENV": "production"}, "SECRET_KEY must be set when APP_ENV=production"),
    ({"DATABASE_URL": f"postgres://app:{PASSWORD}@db/funnels"},
     "DATABASE_URL: only sqlite:// and mysql:// URLs are supported"),
    ({"MODX_TABLE_PREFIX": 'modx_" OR 1=1 --'},
     "MODX_TABLE_PREFIX='modx_\" OR 1=1 --' may contain only letters, digits and underscores"),
    ({"SIMPLETEST_TABLE_PREFIX": "simpletest_`x"},
     "SIMPLETEST_TABLE_PREFIX='simpletest_`x' may contain only letters, digits and"),
    ({"MODX_TABLE_PREFIX": "modx-"}, "MODX_TABLE_PREFIX='modx-' may contain only"),
    ({"APP_ENV": "production", "SECRET_KEY": "short"},
     "SECRET_KEY must be at least 50 characters in production; make one with: python3 -c"),
])
def test_a_bad_setting_is_one_line_and_exit_78(sqlite_env, variables, expected):
    done = manage_run("check", env={**sqlite_env, **variables})

    assert done.returncode == EXIT_CONFIG
    [line] = done.stderr.splitlines()
    assert line.startswith("configuration error: ") and expected in line
    assert API_KEY not in done.stderr and PASSWORD not in done.stderr


def test_an_unreachable_database_is_one_line_without_the_password(sqlite_env):
    done = manage_run("migrate", env={
        **sqlite_env, "DATABASE_URL": f"mysql://root:{PASSWORD}@127.0.0.1:1/funnels",
    })

    assert done.returncode == EXIT_DATABASE_UNAVAILABLE
    [line] = done.stderr.splitlines()
    assert line.startswith("database unavailable: ")
    assert "127.0.0.1" in line  # says where it tried
    assert PASSWORD not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_an_unopenable_sqlite_file_is_the_same_one_line(sqlite_env, tmp_path):
    done = manage_run("migrate", env={
        **sqlite_env, "DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'dir' / 'db.sqlite3'}",
    })

    assert done.returncode == EXIT_DATABASE_UNAVAILABLE
    assert done.stderr.splitlines() == ["database unavailable: unable to open database file"]


def test_a_dotenv_starting_with_a_byte_order_mark_is_read_and_said(sqlite_env, tmp_path):
    # The earlier tool's .env.example starts with a BOM; a .env copied from it too.
    dotenv = tmp_path / ".env"
    dotenv.write_bytes("\ufeffAPP_ENV=test\nFUNNELS_CHUNK_SIZE=123\n".encode())
    done = manage_run(
        "shell", "-c",
        "from django.conf import settings; "
        "print(settings.APP_ENV, settings.FUNNELS_CHUNK_SIZE, settings.DOTENV.bom_stripped)",
        env={**sqlite_env, "TESTIZER_ENV_FILE": str(dotenv)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["test", "123", "True"]  # line 1 counts
    assert "starts with a byte-order mark (BOM); it was stripped" in done.stderr
    assert "Invalid line" not in done.stderr


def test_a_byte_order_mark_inside_a_dotenv_is_refused(sqlite_env, tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_bytes("APP_ENV=test\n\ufeffAPP_DRY_RUN=false\n".encode())
    done = manage_run("check", env={**sqlite_env, "TESTIZER_ENV_FILE": str(dotenv)})
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip() == (
        f"configuration error: {dotenv} line 2 contains a byte-order mark (two files "
        "joined?); remove it"
    )
def test_the_example_secret_key_is_refused_in_production(sqlite_env):
    example = next(
        line.split("=", 1)[1]
        for line in (MANAGE.parent / ".env.example").read_text().splitlines()
        if line.startswith("SECRET_KEY=")
    )
    assert len(example) >= 50  # long enough to pass the length rule: the point of the test

    done = manage_run("check", env={**sqlite_env, "APP_ENV": "production", "SECRET_KEY": example})

    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines() == [
        "configuration error: SECRET_KEY is the example value from this repository (anyone "
        "can read it); make one with: "
        'python3 -c "import secrets; print(secrets.token_urlsafe(50))"'
    ]
    assert example not in done.stderr


def test_a_key_of_ones_own_starts_in_production(sqlite_env):
    done = manage_run("check", env={
        **sqlite_env, "APP_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(50),
    })
    assert done.returncode == 0, done.stderr


def test_the_default_prefixes_and_an_empty_one_are_accepted(sqlite_env):
    done = manage_run("check", env={
        **sqlite_env, "MODX_TABLE_PREFIX": "", "SIMPLETEST_TABLE_PREFIX": "Simple_Test2_",
    })
    assert done.returncode == 0, done.stderr
