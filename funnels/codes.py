"""Stored codes, each defined once: the MODX sources the job reads (a watermark's
SyncState.key and a recheck list's RecheckRow.source) and why a row was skipped
(SyncRunItem.reason). Their words are in funnels/labels.py."""

from __future__ import annotations

from funnels.emails import Reason as EmailReason


class Source:
    """A MODX source read by id: the key of its watermark and of its recheck list."""

    RESULTS = "test_results"
    PAYMENTS = "payments"


class SkipReason:
    """Why a MODX row did not become an entry (a test result) or a purchase (a payment)."""

    # Test results.
    EMPTY_EMAIL = EmailReason.EMPTY
    INVALID_EMAIL = EmailReason.INVALID
    EMAIL_TOO_LONG = EmailReason.TOO_LONG
    NO_TEST_ID = "no_test_id"
    NO_MATCHING_FUNNEL = "no_matching_funnel"
    FUNNEL_INACTIVE = "funnel_inactive"
    NO_LIST_ID = "no_list_id"
    ALREADY_IN_FUNNEL = "already_in_funnel"
    DUPLICATE_IN_BATCH = "duplicate_in_batch"
    TOO_OLD = "completed_too_long_ago"

    # Payments.
    RESULT_MISSING = "payment_result_missing"
    USER_MISSING = "payment_user_missing"
    CERT_TEST_MISSING = "payment_cert_test_missing"
    UNKNOWN_TYPE = "unknown_certificate_type"
    NOT_PAID = "not_paid"
    TIME_MISSING = "payment_time_missing"
    NO_ENTRY = "no_entry"
    BEFORE_ENTRY = "purchase_before_entry"
    # A dry run that would withdraw a purchase; SyncRunItem.Action has no "would revoke".
    WOULD_REVOKE = "would_revoke_purchase"

    OF_RESULTS = frozenset({
        EMPTY_EMAIL, INVALID_EMAIL, EMAIL_TOO_LONG, NO_TEST_ID, NO_MATCHING_FUNNEL,
        FUNNEL_INACTIVE, NO_LIST_ID, ALREADY_IN_FUNNEL, DUPLICATE_IN_BATCH, TOO_OLD,
    })
    # Only the purchase sync gives these (a payment's bad email counts as an email reason).
    OF_PAYMENTS = frozenset({
        RESULT_MISSING, USER_MISSING, CERT_TEST_MISSING, UNKNOWN_TYPE, NOT_PAID,
        TIME_MISSING, NO_ENTRY, BEFORE_ENTRY, WOULD_REVOKE,
    })


class WaitReason:
    """Why a result cannot be decided yet (RecheckRow.reason, SyncRunItem.reason of
    `waiting` items), besides a bad email, which waits with its SkipReason (email_check's
    own code). A payment waits with the SkipReason of its problem."""

    NO_TEST_ID = SkipReason.NO_TEST_ID
    NO_COMPLETION_TIME = "no_completion_time"
    COMPLETED_IN_FUTURE = "completed_in_future"
