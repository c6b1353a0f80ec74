"""Reading the environment: strict values, and the settings module built from them."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from testizer_funnels import settings as settings_module
from testizer_funnels.config import Config, ConfigError


def cfg(**env: str) -> Config:
    return Config(environ_map=env)


# --- Booleans ----------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["1", "true", "True", " YES ", "on"])
def test_true_words(word):
    assert cfg(APP_DRY_RUN=word).bool("APP_DRY_RUN", False) is True


@pytest.mark.parametrize("word", ["0", "false", "FALSE", "no", " off"])
def test_false_words(word):
    assert cfg(APP_DRY_RUN=word).bool("APP_DRY_RUN", True) is False


@pytest.mark.parametrize("word", ["maybe", "", "  ", "ture", "2", "y"])
def test_anything_else_is_refused_rather_than_read_as_false(word):
    with pytest.raises(ConfigError, match="APP_DRY_RUN=.* is not a boolean"):
        cfg(APP_DRY_RUN=word).bool("APP_DRY_RUN", True)


def test_a_missing_boolean_takes_its_default():
    assert cfg().bool("APP_DRY_RUN", True) is True
    assert cfg().bool("APP_DRY_RUN", False) is False


# --- Numbers, choices, lists -------------------------------------------------------------

def test_integers():
    assert cfg(N=" 42 ").int("N", 1) == 42
    assert cfg(N="").int("N", 7) == 7
    assert cfg().int("N", None) is None
    with pytest.raises(ConfigError, match="N='4x' is not a whole number"):
        cfg(N="4x").int("N", 1)
    with pytest.raises(ConfigError, match="N=0 must be at least 1"):
        cfg(N="0").int("N", 1, minimum=1)


def test_floats():
    assert cfg(F="2.5").float("F", 1.0) == 2.5
    assert cfg().float("F", 1.5) == 1.5
    with pytest.raises(ConfigError, match="not a number"):
        cfg(F="fast").float("F", 1.0)
    with pytest.raises(ConfigError, match="must be at least 0.1"):
        cfg(F="0").float("F", 1.0, minimum=0.1)


def test_choices_and_lists():
    assert cfg(APP_ENV="production").choice("APP_ENV", "development", ("development", "production")) == "production"
    with pytest.raises(ConfigError, match="must be one of: development, production"):
        cfg(APP_ENV="prod").choice("APP_ENV", "development", ("development", "production"))
    assert cfg(HOSTS=" a.example , ,b.example").list("HOSTS", []) == ["a.example", "b.example"]
    assert cfg().list("HOSTS", ["localhost"]) == ["localhost"]


# --- Time zones --------------------------------------------------------------------------

def test_time_zones():
    assert cfg(TZ=" Asia/Yekaterinburg ").time_zone("TZ", "UTC") == "Asia/Yekaterinburg"
    assert cfg().time_zone("TZ", "Europe/Moscow") == "Europe/Moscow"
    with pytest.raises(ConfigError, match="TZ='Mars/Olympus' is not a known time zone"):
        cfg(TZ="Mars/Olympus").time_zone("TZ", "UTC")
    with pytest.raises(ConfigError, match="not a known time zone"):
        cfg(TZ="../etc/passwd").time_zone("TZ", "UTC")


# --- Database URLs -----------------------------------------------------------------------

def test_mysql_url():
    db = cfg(DATABASE_URL="mysql://app:s3cret@db.internal:3307/funnels").database(
        "DATABASE_URL", "sqlite:///x"
    )
    assert (db["ENGINE"], db["HOST"], db["PORT"], db["USER"], db["PASSWORD"], db["NAME"]) == (
        "django.db.backends.mysql", "db.internal", 3307, "app", "s3cret", "funnels"
    )


def test_sqlite_url_and_the_default():
    assert cfg(DATABASE_URL="sqlite:////var/lib/tf/db.sqlite3").database(
        "DATABASE_URL", "sqlite:///x"
    )["NAME"] == "/var/lib/tf/db.sqlite3"
    assert cfg().database("DATABASE_URL", "sqlite:////tmp/default.sqlite3")["NAME"] == (
        "/tmp/default.sqlite3"
    )


@pytest.mark.parametrize("url", [
    "postgres://app:s3cret-pw@db/funnels",
    "mysql://app:s3cret-pw@db:notaport/funnels",
])
def test_unsupported_or_broken_urls_are_refused_without_echoing_the_password(url):
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        cfg(DATABASE_URL=url).database("DATABASE_URL", "sqlite:///x")
    assert "s3cret-pw" not in str(caught.value)


def test_a_url_without_scheme_does_not_warn_the_password_to_stderr(recwarn):
    with pytest.raises(ConfigError):
        cfg(DATABASE_URL="//app:s3cret-pw@db/funnels").database("DATABASE_URL", "sqlite:///x")
    assert not [w for w in recwarn if "s3cret-pw" in str(w.message)]


# --- The settings module built from an environment ---------------------------------------

# Every variable settings.py reads, so that the operator's environment cannot leak in.
_SETTINGS_SOURCE = Path(settings_module.__file__).read_text()
SETTINGS_VARIABLES = set(re.findall(r'cfg\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', _SETTINGS_SOURCE))


def settings_load(monkeypatch, tmp_path, **env: str) -> dict:
    """Execute settings.py afresh with exactly `env` (plus a log file in tmp_path)."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOG_FILE", str(tmp_path / "app.log"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(settings_module.__file__, run_name="settings_under_test")


def test_the_settings_variables_were_found():
    assert {"APP_DRY_RUN", "DATABASE_URL", "MODX_DATABASE_URL", "DB_HOST", "DB_PASSWORD",
            "BREVO_API_KEY", "MODX_TIME_ZONE"} <= SETTINGS_VARIABLES


def test_the_earlier_tools_db_names_build_the_modx_database(monkeypatch, tmp_path):
    loaded = settings_load(
        monkeypatch, tmp_path, DB_HOST="modx.internal", DB_PORT="3307", DB_USER="reader",
        DB_PASSWORD="p@ss:word/1", DB_NAME="testizer", MODX_TIME_ZONE="Asia/Novosibirsk",
    )
    modx = loaded["DATABASES"]["modx"]
    assert (modx["ENGINE"], modx["HOST"], modx["PORT"], modx["USER"], modx["PASSWORD"],
            modx["NAME"]) == (
        "django.db.backends.mysql", "modx.internal", 3307, "reader", "p@ss:word/1", "testizer"
    )
    assert modx["OPTIONS"]["charset"] == "utf8mb4"
    assert modx["TIME_ZONE"] == "Asia/Novosibirsk"
    assert modx["TEST"]["MIGRATE"] is False


def test_modx_database_url_wins_over_the_db_names(monkeypatch, tmp_path):
    loaded = settings_load(
        monkeypatch, tmp_path, MODX_DATABASE_URL="mysql://ro:pw@modx-replica:3306/site",
        DB_HOST="modx.internal", DB_NAME="testizer",
    )
    modx = loaded["DATABASES"]["modx"]
    assert (modx["HOST"], modx["NAME"], modx["USER"]) == ("modx-replica", "site", "ro")


def test_db_host_without_db_name_is_refused(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="DB_NAME is empty"):
        settings_load(monkeypatch, tmp_path, DB_HOST="modx.internal")


def test_defaults_are_dry_run_and_local_sqlite(monkeypatch, tmp_path):
    loaded = settings_load(monkeypatch, tmp_path)
    assert loaded["APP_DRY_RUN"] is True
    assert loaded["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert loaded["DATABASES"]["modx"]["NAME"].endswith("demo_modx.sqlite3")
    assert loaded["DATABASES"]["modx"]["TIME_ZONE"] == "Europe/Moscow"


def test_live_mode_needs_the_key_and_both_lists(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="needs BREVO_NON_LANGUAGE_LIST_ID to be set"):
        settings_load(monkeypatch, tmp_path, APP_DRY_RUN="false",
                      BREVO_API_KEY="xkeysib-test-key", BREVO_LANGUAGE_LIST_ID="3")
    loaded = settings_load(monkeypatch, tmp_path, APP_DRY_RUN="false",
                           BREVO_API_KEY="xkeysib-test-key", BREVO_LANGUAGE_LIST_ID="3",
                           BREVO_NON_LANGUAGE_LIST_ID="4")
    assert (loaded["APP_DRY_RUN"], loaded["BREVO_LANGUAGE_LIST_ID"],
            loaded["BREVO_NON_LANGUAGE_LIST_ID"]) == (False, 3, 4)


def test_mysql_databases_get_strict_mode_and_utf8mb4(monkeypatch, tmp_path):
    loaded = settings_load(monkeypatch, tmp_path,
                           DATABASE_URL="mysql://app:pw@db:3306/funnels")
    options = loaded["DATABASES"]["default"]["OPTIONS"]
    assert options["charset"] == "utf8mb4"
    assert "STRICT_TRANS_TABLES" in options["init_command"]
    assert options["isolation_level"] == "read committed"
