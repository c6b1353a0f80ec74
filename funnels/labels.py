"""Words for stored codes: the one registry of what a reason code or an error means.

The job stores codes (SyncRunItem.reason, SyncRun.skipped_by_reason, Brevo error kinds)
and English error lines (SyncRun.error, for logs and scripts); pages render them through
this module, in the page's language. A new reason code is one line in REASONS (and its
Russian translation in locale/ru). A code missing here shows as itself, and the browser
tests fail on a Russian page that shows one.
"""

from __future__ import annotations

import re

from django.utils.functional import Promise
from django.utils.translation import gettext, gettext_lazy as _

PAYMENT_PREFIX = "payment:"

REASONS: dict[str, Promise] = {
    # Test results that did not become an entry (funnels.codes.SkipReason).
    "empty_email": _("no email address"),
    "invalid_email": _("not a valid email address"),
    "email_too_long": _("email address too long"),
    "no_test_id": _("the result has no test id"),
    "no_matching_funnel": _("no funnel takes this test"),
    "funnel_inactive": _("the funnel is switched off"),
    "no_list_id": _("the funnel has no Brevo list id"),
    "already_in_funnel": _("already in this funnel"),
    "duplicate_in_batch": _("the same person again in this run (duplicate)"),
    "completed_too_long_ago": _("completed longer ago than the funnel's maximum age"),
    # Results that wait on the recheck list (funnels.codes.WaitReason; the
    # email reasons above wait too).
    "no_completion_time": _("the test has no completion time yet"),
    "completed_in_future": _("the completion time is in the future"),
    # Rows dropped from a recheck list (funnels.services.modx_reader).
    "recheck_expired": _("still undecidable at the end of the recheck period: dropped"),
    "recheck_list_full": _("dropped from a full recheck list (waited longest)"),
    # Payments that did not become a purchase (funnels.codes.SkipReason).
    "payment_result_missing": _("the payment's test result is not in MODX"),
    "payment_user_missing": _("the payment's test taker is not in MODX"),
    "payment_cert_test_missing": _("the payment's certificate test is not in MODX"),
    "unknown_certificate_type": _("no funnel sells this certificate type"),
    "not_paid": _("not paid"),
    "payment_time_missing": _("paid, but the payment time is missing"),
    "no_entry": _("the buyer is in no funnel"),
    "purchase_before_entry": _("bought before entering the funnel"),
    "would_revoke_purchase": _("the purchase would be withdrawn"),
    # Brevo failures of a contact (funnels.services.outbox: Brevo's code or the error kind).
    "brevotransienterror": _("Brevo did not answer in time (will retry)"),
    "brevopermanenterror": _("Brevo refused the contact"),
    "brevoautherror": _("Brevo rejected the API key"),
    "brevoerror": _("Brevo error"),
    "invalid_parameter": _("Brevo: a value is not valid"),
    "duplicate_parameter": _("Brevo: the contact exists with another value"),
    "missing_parameter": _("Brevo: a value is missing"),
    "document_not_found": _("Brevo: the list does not exist"),
    "process_timeout": _("Brevo did not finish the import in time"),
    "process_failed": _("Brevo could not finish the import"),
    # Entries the outbox does not send because the person opted out in Brevo.
    "brevo_opted_out": _("not sent: unsubscribed or blacklisted in Brevo"),
    # Contacts a run did not get through and left for the next one (SyncRunItem deferred).
    "brevo_stopped": _("not tried: sending stopped after repeated Brevo failures"),
    "brevo_not_confirmed": _("not confirmed by Brevo"),
}

_HTTP = re.compile(r"^http_(?P<status>\d{3})$")


def reason_label(code: str | None) -> str:
    """The words for a stored reason code, in the active language; unknown codes as is."""
    if not code:
        return ""
    if code.startswith(PAYMENT_PREFIX):
        return gettext("payment: %(reason)s") % {
            "reason": reason_label(code[len(PAYMENT_PREFIX):])
        }
    label = REASONS.get(code)
    if label is not None:
        return str(label)
    match = _HTTP.match(code)
    if match:
        return gettext("Brevo answered HTTP %(status)s") % match.groupdict()
    return code


def reason_is_payment(code: str) -> bool:
    return code.startswith(PAYMENT_PREFIX)


# English lines the job stores in SyncRun.error (and entries' last sync error), as
# patterns with their words. Several lines are joined with "; " by the run.
ERRORS: list[tuple[re.Pattern, Promise]] = [
    (re.compile(r"^stopped after (?P<n>\d+) consecutive Brevo failures$"),
     _("Sending stopped after %(n)s Brevo failures in a row; the contacts not sent wait "
       "for the next run.")),
    (re.compile(r"^live mode needs: (?P<problems>.*)$"),
     _("Live mode is not ready: %(problems)s.")),
    (re.compile(r"^BREVO_API_KEY is not set$"),
     _("the Brevo API key (BREVO_API_KEY) is not set")),
    (re.compile(r"^funnel '(?P<slug>[^']*)' has no Brevo list id$"),
     _("funnel “%(slug)s” has no Brevo list id")),
    (re.compile(r"^Brevo rejected the API key \(401\).*$"),
     _("Brevo rejected the API key (401): the run stopped; entries not confirmed by Brevo "
       "wait for the next run.")),
    (re.compile(r"^found dead at the next start \((?P<now>[^)]*)\): no heartbeat since "
                r"(?P<since>\S+) \(host (?P<host>[^,]*), pid (?P<pid>[^)]*)\)$"),
     _("The process stopped without finishing (no sign of life since %(since)s, host "
       "%(host)s, pid %(pid)s); noticed by the next run at %(now)s.")),
    (re.compile(r"^Brevo error: (?P<error>.*)$"), _("Brevo error: %(error)s")),
    (re.compile(r"^database error: (?P<kind>\w+): (?P<error>.*)$", re.S),
     _("Database error (%(kind)s): %(error)s")),
    (re.compile(r"^unexpected error: (?P<error>.*)$", re.S),
     _("Unexpected error: %(error)s")),
    (re.compile(r"^(?P<error>the run lock .*): run stopped before writing more$"),
     _("The run lost its lock and stopped before writing more (%(error)s).")),
    (re.compile(r"^no Brevo list id for funnel '(?P<slug>[^']*)'$"),
     _("funnel “%(slug)s” has no Brevo list id")),
    (re.compile(r"^no completion time in MODX: entered at the run's time$"),
     _("no completion time in MODX: entered at the run's time")),
    (re.compile(r"^completion time (?P<when>\S+) is in the future: entered at the run's time$"),
     _("completion time %(when)s is in the future: entered at the run's time")),
    (re.compile(r"^test kind: (?P<kind>.*)$"), _("test kind: %(kind)s")),
    (re.compile(r"^paid at (?P<when>\S+)$"), _("paid at %(when)s")),
    (re.compile(r"^permanent: (?P<error>.*)$", re.S), _("refused for good: %(error)s")),
    (re.compile(r"^will retry: (?P<error>.*)$", re.S), _("will be retried: %(error)s")),
]


def _one_error(text: str) -> str:
    for pattern, words in ERRORS:
        match = pattern.match(text)
        if match:
            params = {
                key: (_problems_label(value) if key == "problems" else value)
                for key, value in match.groupdict().items()
            }
            return str(words) % params
    return text


def _problems_label(text: str) -> str:
    return "; ".join(_one_error(part) for part in text.split("; "))


def error_label(text: str | None) -> str:
    """A stored English error line in the page's language; unknown parts as stored."""
    if not text:
        return ""
    if text.startswith("live mode needs: "):
        return _one_error(text)
    return " ".join(_one_error(part.strip()) for part in text.split("; ") if part.strip())


# The names migration 0002 gave the two default funnels: shown in the page's language.
# A name an operator typed is theirs and shown as typed.
DEFAULT_FUNNEL_NAMES: dict[str, Promise] = {
    "Language tests": _("Language tests"),
    "Non-language tests": _("Non-language tests"),
}


def funnel_name_display(name: str) -> str:
    label = DEFAULT_FUNNEL_NAMES.get(name)
    return str(label) if label is not None else name


_MODES = {"LIVE": _("LIVE"), "DRY RUN": _("DRY RUN")}
AUDIT: list[tuple[re.Pattern, Promise]] = [
    (re.compile(r"^schedule: paused$"), _("schedule paused")),
    (re.compile(r"^schedule: resumed$"), _("schedule resumed")),
]


def audit_label(text: str) -> str:
    """An admin-log line written by funnels.services (runtime, schedule) in words."""
    match = re.match(r"^mode: (?P<old>LIVE|DRY RUN) -> (?P<new>LIVE|DRY RUN)$", text or "")
    if match:
        return gettext("mode: %(old)s → %(new)s") % {
            "old": _MODES[match["old"]], "new": _MODES[match["new"]],
        }
    for pattern, words in AUDIT:
        if pattern.match(text or ""):
            return str(words)
    return text
