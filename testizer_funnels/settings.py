"""Settings for Testizer Funnels, read once from the environment (and .env) via config.py.

Every variable is documented, with its default, in .env.example.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import shlex
import sys
from pathlib import Path

from django.utils.translation import gettext_lazy as _

from testizer_funnels.config import Config, ConfigError, DotenvRead, read_dotenv
from testizer_funnels.secret_key import secret_key_problem

BASE_DIR = Path(__file__).resolve().parent.parent

# Tests must not pick up an operator's .env (it may point at production); pytest sets
# PYTEST_VERSION for the whole session.
DOTENV = DotenvRead(path=Path(os.environ.get("TESTIZER_ENV_FILE", BASE_DIR / ".env")))
if "PYTEST_VERSION" not in os.environ:
    # What was read is kept for switch_over_check (a BOM stripped is one of its checks).
    DOTENV = read_dotenv(DOTENV.path)

cfg = Config()

APP_ENV = cfg.choice("APP_ENV", "development", ("development", "production", "test"))
IS_PRODUCTION = APP_ENV == "production"

DEBUG = cfg.bool("DEBUG", False)
SECRET_KEY = cfg.str("SECRET_KEY", "")
if IS_PRODUCTION:
    _key_problem = secret_key_problem(key=SECRET_KEY, base_dir=BASE_DIR)
    if _key_problem:
        raise ConfigError(_key_problem)
elif not SECRET_KEY:
    # Development and demo only: a fresh key per process is fine, sessions just expire.
    SECRET_KEY = "dev-insecure-" + secrets.token_urlsafe(40)

ALLOWED_HOSTS = cfg.list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = cfg.list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "funnels",
    "funnels.modx",
    "reports",
    # After funnels: our `crontab` command (funnels/management/commands/crontab.py) must
    # win over django-crontab's, whose `crontab run` swallows every exit code.
    "django_crontab",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testizer_funnels.urls"
WSGI_APPLICATION = "testizer_funnels.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# --- Databases -----------------------------------------------------------------------

def _mysql_options(db: dict) -> dict:
    if db["ENGINE"] != "django.db.backends.mysql":
        return db
    options = db.setdefault("OPTIONS", {})
    options.setdefault("charset", "utf8mb4")
    options.setdefault("init_command", "SET sql_mode='STRICT_TRANS_TABLES'")
    options.setdefault("isolation_level", "read committed")
    # A server that does not answer must fail the run (or the dashboard's MODX figure)
    # in seconds, not hang until the operating system gives up.
    options.setdefault("connect_timeout", 5)
    db.setdefault("TEST", {}).update({"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"})
    return db


def _modx_database() -> dict:
    """MODX_DATABASE_URL wins; else the earlier tool's DB_* names; else the demo SQLite."""
    if cfg.str("MODX_DATABASE_URL"):
        return cfg.database("MODX_DATABASE_URL", "")
    if cfg.str("DB_HOST") or cfg.str("DB_NAME"):
        db = {
            "ENGINE": "django.db.backends.mysql",
            "HOST": cfg.str("DB_HOST", "127.0.0.1"),
            "PORT": cfg.int("DB_PORT", 3306, minimum=1),
            "USER": cfg.str("DB_USER", "root"),
            "PASSWORD": cfg.raw("DB_PASSWORD") or "",
            "NAME": cfg.str("DB_NAME"),
            "OPTIONS": {"charset": cfg.str("DB_CHARSET", "utf8mb4")},
        }
        if not db["NAME"]:
            raise ConfigError("DB_HOST is set but DB_NAME is empty")
        return db
    return cfg.database_from_url(
        name="MODX_DATABASE_URL", url=f"sqlite:///{BASE_DIR / 'demo_modx.sqlite3'}"
    )


DATABASES = {
    "default": _mysql_options(
        cfg.database("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
    ),
    "modx": _mysql_options(_modx_database()),
}
for _alias, _db in DATABASES.items():
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        # The run lock and the outbox writes come from one process at a time, but the
        # admin may read meanwhile: wait for a lock rather than fail at once.
        _db.setdefault("OPTIONS", {}).setdefault("timeout", 20)
        # Test databases are files, not memory: tests that run the job in a subprocess
        # (SIGKILL, two runs at once) must see the same data.
        _path = Path(str(_db["NAME"]))
        _db.setdefault("TEST", {}).setdefault(
            "NAME", str(_path.parent / ".test_dbs" / f"test_{_path.name}")
        )
DATABASE_ROUTERS = ["funnels.routers.ModxRouter"]

# --- MODX tables ---------------------------------------------------------------------
# They become part of quoted table names: identifier characters only.
MODX_TABLE_PREFIX = cfg.identifier("MODX_TABLE_PREFIX", "modx_")
SIMPLETEST_TABLE_PREFIX = cfg.identifier("SIMPLETEST_TABLE_PREFIX", "simpletest_")
# MODX stores naive datetimes in its server's zone: Django reads and writes that alias in
# this zone, so every datetime we get from it is aware and comparable to ours (UTC).
MODX_TIME_ZONE = cfg.time_zone("MODX_TIME_ZONE", "Europe/Moscow")
DATABASES["modx"]["TIME_ZONE"] = MODX_TIME_ZONE
# The router refuses every migration there; the test databases get their MODX tables from
# the unmanaged models (conftest.py) instead.
DATABASES["modx"].setdefault("TEST", {})["MIGRATE"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Time and language ---------------------------------------------------------------
USE_TZ = True
TIME_ZONE = cfg.time_zone("TIME_ZONE", "Europe/Moscow")
USE_I18N = True
LANGUAGES = [("ru", _("Russian")), ("en", _("English"))]
LANGUAGE_CODE = cfg.choice("LANGUAGE_CODE", "ru", ("ru", "en"))
LOCALE_PATHS = [BASE_DIR / "locale"]

# --- Static files --------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if IS_PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Security (production) -----------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = cfg.bool("SECURE_SSL_REDIRECT", IS_PRODUCTION)
SESSION_COOKIE_SECURE = cfg.bool("SESSION_COOKIE_SECURE", IS_PRODUCTION)
CSRF_COOKIE_SECURE = cfg.bool("CSRF_COOKIE_SECURE", IS_PRODUCTION)
SECURE_HSTS_SECONDS = cfg.int("SECURE_HSTS_SECONDS", 31536000 if IS_PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = cfg.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", IS_PRODUCTION)
SECURE_HSTS_PRELOAD = cfg.bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- The funnel job ------------------------------------------------------------------
APP_DRY_RUN = cfg.bool("APP_DRY_RUN", True)
BREVO_API_KEY = cfg.raw("BREVO_API_KEY") or ""
BREVO_BASE_URL = cfg.str("BREVO_BASE_URL", "https://api.brevo.com/v3").rstrip("/")
BREVO_LANGUAGE_LIST_ID = cfg.int("BREVO_LANGUAGE_LIST_ID", None, minimum=1)
BREVO_NON_LANGUAGE_LIST_ID = cfg.int("BREVO_NON_LANGUAGE_LIST_ID", None, minimum=1)
BREVO_CONNECT_TIMEOUT = cfg.float("BREVO_CONNECT_TIMEOUT", 5.0, minimum=0.1)
BREVO_READ_TIMEOUT = cfg.float("BREVO_READ_TIMEOUT", 30.0, minimum=0.1)
BREVO_MAX_RETRIES = cfg.int("BREVO_MAX_RETRIES", 4, minimum=0)
BREVO_REQUESTS_PER_SECOND = cfg.float("BREVO_REQUESTS_PER_SECOND", 9.0, minimum=0.1)
# At or above this many contacts due in one run we use POST /contacts/import.
BREVO_IMPORT_THRESHOLD = cfg.int("BREVO_IMPORT_THRESHOLD", 50, minimum=1)
BREVO_IMPORT_BATCH_SIZE = cfg.int("BREVO_IMPORT_BATCH_SIZE", 5000, minimum=1)

if not APP_DRY_RUN:
    # Live mode named in the environment: refuse to start half-configured.
    _missing = [
        name
        for name, value in (
            ("BREVO_API_KEY", BREVO_API_KEY),
            ("BREVO_LANGUAGE_LIST_ID", BREVO_LANGUAGE_LIST_ID),
            ("BREVO_NON_LANGUAGE_LIST_ID", BREVO_NON_LANGUAGE_LIST_ID),
        )
        if not value
    ]
    if _missing:
        raise ConfigError(
            "APP_DRY_RUN=false (live) needs " + ", ".join(_missing) + " to be set"
        )

FUNNELS_SCHEDULE_MINUTES = cfg.int("FUNNELS_SCHEDULE_MINUTES", 15, minimum=1)
# 30: the earlier tool re-selected the last 30 days on every run, so on the day we replace
# it, it still owed contacts that old (docs/purchases.md, "Rows that change").
FUNNELS_INITIAL_LOOKBACK_DAYS = cfg.int("FUNNELS_INITIAL_LOOKBACK_DAYS", 30, minimum=0)
FUNNELS_MAX_AGE_DAYS = cfg.int(
    "FUNNELS_MAX_AGE_DAYS", max(1, FUNNELS_INITIAL_LOOKBACK_DAYS), minimum=1
)
FUNNELS_RECHECK_DAYS = cfg.int("FUNNELS_RECHECK_DAYS", 30, minimum=0)
FUNNELS_RECHECK_MAX_ROWS = cfg.int("FUNNELS_RECHECK_MAX_ROWS", 20000, minimum=0)
FUNNELS_CLOCK_SKEW_MINUTES = cfg.int("FUNNELS_CLOCK_SKEW_MINUTES", 10, minimum=0)
FUNNELS_MAX_NEW_CONTACTS_PER_RUN = cfg.int(
    "FUNNELS_MAX_NEW_CONTACTS_PER_RUN", 1000, minimum=0
)
FUNNELS_CHUNK_SIZE = cfg.int("FUNNELS_CHUNK_SIZE", 2000, minimum=1)
FUNNELS_LOCK_NAME = cfg.str("FUNNELS_LOCK_NAME", "testizer_funnels.run_funnels")
FUNNELS_PURCHASE_RECHECK_DAYS = cfg.int("FUNNELS_PURCHASE_RECHECK_DAYS", 30, minimum=0)
FUNNELS_WATERMARK_GAP_GRACE_MINUTES = cfg.int(
    "FUNNELS_WATERMARK_GAP_GRACE_MINUTES", 60, minimum=0
)
# The Brevo audit (audit_brevo): a whole read of every list at least this often, and the
# hour (TIME_ZONE) of its daily cron line, placed between two run slots.
BREVO_AUDIT_FULL_EVERY_DAYS = cfg.int("BREVO_AUDIT_FULL_EVERY_DAYS", 7, minimum=1)
BREVO_AUDIT_HOUR = cfg.int("BREVO_AUDIT_HOUR", 3, minimum=0)
if BREVO_AUDIT_HOUR > 23:
    raise ConfigError(f"BREVO_AUDIT_HOUR={BREVO_AUDIT_HOUR} must be an hour, 0 to 23")
FUNNELS_PING_URL = cfg.str("FUNNELS_PING_URL", "")
# The key of the control-group hash (funnels/services/control_groups.py). Unset: derived
# from SECRET_KEY, so changing SECRET_KEY reshuffles who is in control from then on.
FUNNELS_CONTROL_SECRET = cfg.str("FUNNELS_CONTROL_SECRET", "") or hmac.new(
    SECRET_KEY.encode(), b"testizer-funnels control groups", hashlib.sha256
).hexdigest()
FUNNELS_PAUSE_WARN_MINUTES = cfg.int("FUNNELS_PAUSE_WARN_MINUTES", 120, minimum=1)
SENTRY_DSN = cfg.str("SENTRY_DSN", "")

# --- Alerts: who hears about a failed, partial or held run (funnels/services/alerts.py) -
# One email per incident to ADMINS (Django's mail_admins) and one when it is over; the
# incident is remembered in this file, which needs no database (the database may be
# what is down).
ADMINS = [("", address) for address in cfg.list("ADMINS", [])]
SERVER_EMAIL = cfg.str("SERVER_EMAIL", "funnels@localhost")
_subject_prefix = cfg.str("EMAIL_SUBJECT_PREFIX", "[Testizer Funnels]")
EMAIL_SUBJECT_PREFIX = f"{_subject_prefix} " if _subject_prefix else ""
EMAIL_HOST = cfg.str("EMAIL_HOST", "localhost")
EMAIL_PORT = cfg.int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = cfg.str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = cfg.raw("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = cfg.bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = cfg.bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ConfigError("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be true")
# Seconds: an SMTP server that does not answer must not hold the cron job.
EMAIL_TIMEOUT = cfg.int("EMAIL_TIMEOUT", 10, minimum=1)
FUNNELS_ALERT_STATE_FILE = BASE_DIR / cfg.str("FUNNELS_ALERT_STATE_FILE", "logs/alert-state.json")

# What cron's mail or `>>` sees: one line per run (the summary, or the error).
CRON_LOG_FILE = BASE_DIR / cfg.str("CRON_LOG_FILE", "logs/cron.log")  # relative: to the project
CRONJOBS = [
    (
        f"*/{FUNNELS_SCHEDULE_MINUTES} * * * *",
        "django.core.management.call_command",
        ["run_funnels"],
        {"trigger": "cron"},
        f">> {shlex.quote(str(CRON_LOG_FILE))} 2>&1",
    ),
    # Daily, half-way between two run slots: it shares the run lock, so it never runs at
    # the same time as a run (one still going makes it exit 3, and the next day reads on).
    (
        f"{max(1, FUNNELS_SCHEDULE_MINUTES // 2) % 60} {BREVO_AUDIT_HOUR} * * *",
        "django.core.management.call_command",
        ["audit_brevo"],
        {"trigger": "cron"},
        f">> {shlex.quote(str(CRON_LOG_FILE))} 2>&1",
    ),
]
# cron starts with an empty environment in the user's home: go to the project, and keep an
# explicitly chosen .env (TESTIZER_ENV_FILE at `crontab add` time) on the installed line.
CRONTAB_COMMAND_PREFIX = f"cd {shlex.quote(str(BASE_DIR))} &&" + (
    f" TESTIZER_ENV_FILE={shlex.quote(os.environ['TESTIZER_ENV_FILE'])}"
    if os.environ.get("TESTIZER_ENV_FILE")
    else ""
)
# The run lock (funnels/locks.py) keeps runs apart on every host and says who holds it;
# django-crontab's own per-host file lock would only add a silent exit 0.
CRONTAB_LOCK_JOBS = False
# The crontab program `manage.py crontab add|show|remove` edits (tests use a fake one).
CRONTAB_EXECUTABLE = cfg.str("CRONTAB_EXECUTABLE", "/usr/bin/crontab")

# --- Logging -------------------------------------------------------------------------
APP_LOG_LEVEL = cfg.choice(
    "APP_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
)
LOG_FILE = Path(cfg.str("LOG_FILE", str(BASE_DIR / "logs" / "app.log")))
LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
# Log records on stderr too: "auto" does so only when stderr is a terminal (someone is
# watching a command by hand); under cron stderr is cron.log, which gets the command's
# one line and nothing else, and under gunicorn everything is in LOG_FILE already.
LOG_CONSOLE = cfg.choice("LOG_CONSOLE", "auto", ("auto", "true", "false"))
_log_console = LOG_CONSOLE == "true" or (LOG_CONSOLE == "auto" and sys.stderr.isatty())
_log_handlers = ["console", "file"] if _log_console else ["file"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "funnels.logging_filters.RedactSecretsFilter"}},
    "formatters": {
        # Log times in UTC with an explicit Z, like every stored time: Django sets the
        # process's local zone to TIME_ZONE, which would make them look local.
        "plain": {
            "()": "funnels.logging_filters.UtcFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(process)d %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact"],
        },
        # The cron job and every web worker append to one file. Rotation is logrotate's
        # (docs/logrotate.conf: rename, then the next record reopens): a handler that
        # rotated by itself would race the other processes and lose their lines.
        "file": {
            "class": "logging.handlers.WatchedFileHandler",
            "filename": str(LOG_FILE),
            "encoding": "utf-8",
            "formatter": "plain",
            "filters": ["redact"],
        },
    },
    "loggers": {
        "funnels": {"handlers": _log_handlers, "level": APP_LOG_LEVEL, "propagate": False},
        "reports": {"handlers": _log_handlers, "level": APP_LOG_LEVEL, "propagate": False},
        "django": {"handlers": _log_handlers, "level": "WARNING", "propagate": False},
    },
}

if SENTRY_DSN:
    try:
        import sentry_sdk
    except ImportError:
        raise ConfigError("SENTRY_DSN is set but sentry-sdk is not installed") from None
    from sentry_sdk.integrations.logging import LoggingIntegration

    # Run outcomes reach Sentry once each, from funnels/services/alerts.py; error log
    # records become breadcrumbs only, or a failed run would be reported twice.
    sentry_sdk.init(
        dsn=SENTRY_DSN, send_default_pii=False, environment=APP_ENV,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
    )
