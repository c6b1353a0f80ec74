"""The last line of defence: secrets that reach a log record come out redacted."""

from __future__ import annotations

import copy
import io
import logging

import pytest
from django.conf import settings as django_settings

from funnels.logging_filters import RedactSecretsFilter, redact

API_KEY = "xkeysib-7d1f0c2a9b8e4f6a-secret"
DB_PASSWORD = "modx-db-pa55word"
OUR_PASSWORD = "our-db-pa55word"


@pytest.fixture
def secrets(settings, monkeypatch):
    settings.BREVO_API_KEY = API_KEY
    # A copy: the live connections keep their own settings (and their real password).
    databases = copy.deepcopy(django_settings.DATABASES)
    databases["default"]["PASSWORD"] = OUR_PASSWORD
    databases["modx"]["PASSWORD"] = DB_PASSWORD
    monkeypatch.setattr(django_settings, "DATABASES", databases)


@pytest.fixture
def log():
    """A logger whose handler has the filter, as in settings.LOGGING; returns (logger, out)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecretsFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("funnels.tests.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def test_secrets_in_the_message_are_replaced(secrets, log):
    logger, out = log
    logger.warning(f"calling Brevo with api-key {API_KEY} and db {DB_PASSWORD}")
    text = out.getvalue()
    assert API_KEY not in text and DB_PASSWORD not in text
    assert text == "WARNING calling Brevo with api-key [redacted] and db [redacted]\n"


def test_secrets_in_the_arguments_are_replaced(secrets, log):
    logger, out = log
    logger.info("headers=%s password=%s", {"api-key": API_KEY}, OUR_PASSWORD)
    text = out.getvalue()
    assert API_KEY not in text and OUR_PASSWORD not in text
    assert text == "INFO headers={'api-key': '[redacted]'} password=[redacted]\n"


def test_secrets_in_an_exception_and_its_traceback_are_replaced(secrets, log):
    logger, out = log
    try:
        try:
            raise ConnectionError(f"auth failed for key {API_KEY}")
        except ConnectionError as inner:
            raise RuntimeError(f"cannot connect with {DB_PASSWORD}") from inner
    except RuntimeError:
        logger.exception("run failed")
    text = out.getvalue()
    assert API_KEY not in text and DB_PASSWORD not in text
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: cannot connect with [redacted]" in text
    assert "ConnectionError: auth failed for key [redacted]" in text


def test_a_record_without_secrets_keeps_its_arguments(secrets):
    record = logging.LogRecord("funnels", logging.INFO, __file__, 1, "sent %d contacts",
                               (12,), None)
    assert RedactSecretsFilter().filter(record) is True
    assert (record.msg, record.args) == ("sent %d contacts", (12,))


def test_short_values_are_not_treated_as_secrets(settings):
    # A 3-character key would redact ordinary words everywhere; real keys are long.
    settings.BREVO_API_KEY = "abc"
    assert redact("abc is the alphabet") == "abc is the alphabet"


def test_every_configured_handler_carries_the_filter():
    config = django_settings.LOGGING
    redacting = {
        name for name, spec in config["filters"].items()
        if spec.get("()") == "funnels.logging_filters.RedactSecretsFilter"
    }
    assert redacting
    for name, handler in config["handlers"].items():
        assert redacting & set(handler.get("filters", [])), name
    for name in ("funnels", "reports", "django"):
        assert config["loggers"][name]["handlers"]


def test_log_times_are_utc_with_a_z():
    import datetime as dt
    import logging

    from funnels.logging_filters import UtcFormatter

    record = logging.LogRecord("funnels", logging.INFO, __file__, 1, "hello", (), None)
    record.created = dt.datetime(2026, 11, 28, 23, 30, 15, 250000, tzinfo=dt.UTC).timestamp()
    record.msecs = 250
    line = UtcFormatter("%(asctime)s %(message)s").format(record)
    assert line == "2026-11-28T23:30:15.250Z hello"
