"""BrevoClient against the fake Brevo over real loopback HTTP.

Backoff and rate-limit waits go through an injected virtual clock so the
suite stays fast; only the throttle check and the socket timeouts use real time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from funnels.brevo.client import IMPORT_MAX_BODY_BYTES, BrevoClient, RateLimitInfo
from funnels.brevo.errors import (
    BrevoAuthError,
    BrevoError,
    BrevoPermanentError,
    BrevoTransientError,
)
from fake_brevo.server import FakeBrevo
from funnels.brevo.masking import mask_email, mask_emails_in_text

pytestmark: list[Any] = []

KEY = "test-key-5f1c"


class VirtualClock:
    """monotonic/sleep pair where sleeping only advances a counter."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)


@pytest.fixture
def fake() -> Iterator[FakeBrevo]:
    # Generous limit: these tests run many calls on a virtual clock, so the
    # real-time window must not interfere; rate limiting has its own tests.
    with FakeBrevo(api_key=KEY, requests_per_second=1_000) as server:
        yield server


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def make_client(
    fake: FakeBrevo, clock: VirtualClock | None = None, **overrides: Any
) -> BrevoClient:
    options: dict[str, Any] = {
        "base_url": fake.base_url,
        "api_key": KEY,
        "connect_timeout": 2,
        "read_timeout": 5,
    }
    if clock is not None:
        options.update(sleep=clock.sleep, monotonic=clock.monotonic)
    options.update(overrides)
    return BrevoClient(**options)


@pytest.fixture
def client(fake: FakeBrevo, clock: VirtualClock) -> Iterator[BrevoClient]:
    with make_client(fake, clock) as brevo:
        yield brevo


# ------------------------------------------------------------------ basics


def test_upsert_creates_then_updates(fake: FakeBrevo, client: BrevoClient) -> None:
    created = client.upsert_contact(
        email="Ann@Example.com", attributes={"FIRSTNAME": "Ann"}, list_ids=[3]
    )
    updated = client.upsert_contact(
        email="ann@example.com", attributes={"LASTNAME": "Lee"}, list_ids=[4]
    )

    assert isinstance(created, int)
    assert updated is None
    contact = fake.contact("ann@example.com")
    assert contact is not None
    assert contact["id"] == created
    assert contact["attributes"] == {"FIRSTNAME": "Ann", "LASTNAME": "Lee"}
    assert contact["listIds"] == [3, 4]
    assert [e.status for e in fake.requests_log] == [201, 204]


def test_upsert_request_shape(fake: FakeBrevo, client: BrevoClient) -> None:
    client.upsert_contact(email="a@example.com", attributes={"X": 1}, list_ids=[7])

    (entry,) = fake.requests_log
    assert entry.body == {
        "email": "a@example.com",
        "attributes": {"X": 1},
        "updateEnabled": True,
        "listIds": [7],
    }
    assert entry.headers["accept"] == "application/json"
    assert entry.headers["content-type"] == "application/json"
    assert entry.api_key_sent
    assert "api-key" not in entry.headers


# ----------------------------------------------------------------- imports


def test_import_then_wait_for_process() -> None:
    with FakeBrevo(api_key=KEY, import_delay=0.3) as fake:
        client = make_client(fake)
        contacts = [{"email": f"imp{i}@example.com", "attributes": {"N": i}} for i in range(5)]
        process_id = client.import_contacts(contacts=contacts, list_ids=[9])
        assert fake.contact("imp0@example.com") is None

        process = client.wait_for_process(process_id=process_id, poll_interval=0.05, timeout=5)

        assert process["status"] == "completed"
        assert fake.list_members(9) == {f"imp{i}@example.com" for i in range(5)}
        assert fake.contact("imp3@example.com")["attributes"] == {"N": 3}  # type: ignore[index]
        polls = [e for e in fake.requests_log if e.operation == "getProcess"]
        seen = [e.response_json["status"] for e in polls]
        assert seen[-1] == "completed"
        assert {"queued", "in_process"} & set(seen[:-1])
        # The interval grows, so 0.3 s of work must not take a dozen polls.
        assert len(polls) <= 8
        body = fake.requests_log[0].body
        assert body["updateExistingContacts"] is True
        assert body["emptyContactsAttributes"] is False
        assert body["listIds"] == [9]
        assert body["jsonBody"][1] == {"email": "imp1@example.com", "attributes": {"N": 1}}


def test_an_import_can_empty_attributes_sent_empty(fake: FakeBrevo, client: BrevoClient) -> None:
    fake.seed_contact(email="held@example.com", attributes={"AT": "2026-11-02", "N": 1})
    kept = client.import_contacts(
        contacts=[{"email": "held@example.com", "attributes": {"AT": ""}}], list_ids=[1]
    )
    client.wait_for_process(process_id=kept, poll_interval=0.05, timeout=5)
    assert fake.contact("held@example.com")["attributes"] == {"AT": "2026-11-02", "N": 1}  # type: ignore[index]

    emptied = client.import_contacts(
        contacts=[{"email": "held@example.com", "attributes": {"AT": ""}}], list_ids=[1],
        erase_empty=True,
    )
    client.wait_for_process(process_id=emptied, poll_interval=0.05, timeout=5)
    assert fake.contact("held@example.com")["attributes"] == {"N": 1}  # type: ignore[index]
    bodies = [e.body for e in fake.requests_log if e.operation == "importContacts"]
    assert [b["emptyContactsAttributes"] for b in bodies] == [False, True]


def test_wait_for_failed_import_is_permanent(fake: FakeBrevo, client: BrevoClient) -> None:
    fake.faults.add("import_failed")
    process_id = client.import_contacts(
        contacts=[{"email": "f@example.com", "attributes": {}}], list_ids=[1]
    )

    with pytest.raises(BrevoPermanentError) as info:
        client.wait_for_process(process_id=process_id, poll_interval=0.01)

    assert info.value.code == "process_failed"
    assert fake.contact("f@example.com") is None


def test_wait_for_process_times_out_as_transient(clock: VirtualClock) -> None:
    with FakeBrevo(api_key=KEY, import_delay=3_600) as fake:
        client = make_client(fake, clock)
        process_id = client.import_contacts(
            contacts=[{"email": "slow@example.com", "attributes": {}}], list_ids=[1]
        )
        with pytest.raises(BrevoTransientError):
            client.wait_for_process(process_id=process_id, poll_interval=2, timeout=20)

        polls = [e for e in fake.requests_log if e.operation == "getProcess"]
        assert 2 <= len(polls) <= 7
        assert sum(clock.sleeps) == pytest.approx(20)


def test_import_refuses_oversized_body(fake: FakeBrevo, client: BrevoClient) -> None:
    filler = "x" * 100_000
    contacts = [
        {"email": f"big{i}@example.com", "attributes": {"NOTE": filler}}
        for i in range(IMPORT_MAX_BODY_BYTES // 100_000 + 1)
    ]
    with pytest.raises(ValueError, match="limit"):
        client.import_contacts(contacts=contacts, list_ids=[1])
    assert fake.requests_log == []


# -------------------------------------------------------------- rate limits


def test_429_waits_for_reset_header(
    fake: FakeBrevo, client: BrevoClient, clock: VirtualClock
) -> None:
    fake.faults.add("429", reset=3)

    contact_id = client.upsert_contact(email="r@example.com", attributes={}, list_ids=[])

    assert isinstance(contact_id, int)
    assert clock.sleeps == [3.0]
    assert client.request_count == 2
    assert [e.status for e in fake.requests_log] == [429, 201]


def test_429_reset_above_cap_raises_instead_of_sleeping(
    fake: FakeBrevo, clock: VirtualClock
) -> None:
    client = make_client(fake, clock, max_ratelimit_wait=60)
    fake.faults.add("429", reset=120)

    with pytest.raises(BrevoTransientError) as info:
        client.upsert_contact(email="r@example.com", attributes={}, list_ids=[])

    assert info.value.status == 429
    assert info.value.permanent is False
    assert clock.sleeps == []
    assert client.request_count == 1


def test_429_streak_exhausts_retry_budget(fake: FakeBrevo, clock: VirtualClock) -> None:
    client = make_client(fake, clock, max_retries=2)
    fake.faults.add("429", count=10, reset=1)

    with pytest.raises(BrevoTransientError):
        client.upsert_contact(email="r@example.com", attributes={}, list_ids=[])

    assert client.request_count == 3
    assert clock.sleeps == [1.0, 1.0]


@pytest.mark.parametrize("read", [
    lambda client: client.lists_page(),
    lambda client: client.contacts_page(list_ids=[3, 4]),
], ids=["getLists", "getContacts"])
def test_the_audit_reads_share_the_retries_and_the_key_stays_out(
    fake: FakeBrevo, clock: VirtualClock, caplog: pytest.LogCaptureFixture, read
) -> None:
    """The audit's two reads of all lists go through the one request path: a 429 waits
    for Brevo's reset, a 5xx is retried, a 5xx streak ends transient, the key in nothing."""
    client = make_client(fake, clock, max_retries=2)
    caplog.set_level(logging.DEBUG, logger="funnels.brevo")
    fake.faults.add("429", reset=3)
    fake.faults.add("500", message=f"upstream said {KEY}")

    assert read(client).count >= 0
    assert clock.sleeps[0] == 3.0 and len(clock.sleeps) == 2
    assert [e.status for e in fake.requests_log] == [429, 500, 200]

    fake.faults.add("503", count=None)
    with pytest.raises(BrevoTransientError) as info:
        read(client)
    assert client.request_count == 6
    for text in [str(info.value), repr(info.value)] + [r.getMessage() for r in caplog.records]:
        assert KEY not in text


def test_last_ratelimit_records_headroom(fake: FakeBrevo, client: BrevoClient) -> None:
    assert client.last_ratelimit is None
    client.upsert_contact(email="h@example.com", attributes={}, list_ids=[])
    client.upsert_contact(email="h@example.com", attributes={}, list_ids=[])

    info = client.last_ratelimit
    assert isinstance(info, RateLimitInfo)
    assert info.limit == 1_000
    assert info.remaining == 998
    assert info.reset is not None and info.reset >= 0


def test_client_throttle_stays_under_brevo_limit_real_clock() -> None:
    with FakeBrevo(api_key=KEY, requests_per_second=10) as fake:
        client = make_client(fake, requests_per_second=9, max_retries=0)
        started = time.monotonic()
        for i in range(30):
            client.upsert_contact(email=f"t{i}@example.com", attributes={}, list_ids=[])
        elapsed = time.monotonic() - started

        statuses = [e.status for e in fake.requests_log]
        assert 429 not in statuses
        assert len(statuses) == 30
        # 30 calls spaced 1/9 s apart cannot finish in under 29/9 s.
        assert elapsed >= 29 / 9 - 0.05


def test_client_throttle_window_virtual_clock(fake: FakeBrevo, clock: VirtualClock) -> None:
    sent_at: list[float] = []

    class RecordingSession(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            sent_at.append(clock.now)
            return super().request(*args, **kwargs)

    client = make_client(fake, clock, requests_per_second=9, session=RecordingSession())
    for i in range(40):
        client.upsert_contact(email=f"v{i}@example.com", attributes={}, list_ids=[])

    assert len(sent_at) == 40
    gaps = [later - earlier for earlier, later in zip(sent_at, sent_at[1:], strict=False)]
    assert min(gaps) >= 1 / 9 - 1e-9
    # Ten arrivals, which Brevo would refuse within one second, span more than that.
    assert all(sent_at[i + 9] - sent_at[i] >= 1.0 - 1e-9 for i in range(len(sent_at) - 9))
    assert sent_at[-1] - sent_at[0] == pytest.approx(39 / 9)


# --------------------------------------------------------- transient faults


def test_5xx_streak_longer_than_budget(fake: FakeBrevo, clock: VirtualClock) -> None:
    client = make_client(fake, clock, max_retries=4, backoff_base=0.5, backoff_cap=30)
    fake.faults.add("500", count=10)

    with pytest.raises(BrevoTransientError) as info:
        client.upsert_contact(email="s@example.com", attributes={}, list_ids=[])

    assert info.value.status == 500
    assert client.request_count == 5
    assert len(fake.requests_log) == 5
    assert len(clock.sleeps) == 4
    for attempt, delay in enumerate(clock.sleeps):
        step = 0.5 * 2**attempt
        assert step / 2 <= delay <= step
    assert fake.contacts == {}


def test_backoff_is_capped(fake: FakeBrevo, clock: VirtualClock) -> None:
    client = make_client(fake, clock, max_retries=4, backoff_base=10, backoff_cap=15)
    fake.faults.add("503", count=4)

    client.upsert_contact(email="c@example.com", attributes={}, list_ids=[])

    assert len(clock.sleeps) == 4
    assert max(clock.sleeps) <= 15
    assert clock.sleeps[-1] >= 7.5


def test_503_html_then_success(fake: FakeBrevo, client: BrevoClient) -> None:
    fake.faults.add("503")
    assert isinstance(client.upsert_contact(email="h@example.com", attributes={}, list_ids=[]), int)
    assert [e.status for e in fake.requests_log] == [503, 201]


def test_524_text_body_is_transient(fake: FakeBrevo, clock: VirtualClock) -> None:
    client = make_client(fake, clock, max_retries=1)
    fake.faults.add("524")
    assert isinstance(client.upsert_contact(email="p@example.com", attributes={}, list_ids=[]), int)

    fake.faults.add("524", count=5)
    with pytest.raises(BrevoTransientError) as info:
        client.upsert_contact(email="q@example.com", attributes={}, list_ids=[])
    assert info.value.status == 524
    assert info.value.code is None
    assert "error code: 524" in str(info.value)


def test_read_timeout_is_transient_then_succeeds(fake: FakeBrevo, clock: VirtualClock) -> None:
    client = make_client(fake, clock, read_timeout=0.2)
    fake.faults.add("slow", seconds=0.6)

    client.upsert_contact(email="slow@example.com", attributes={"A": "1"}, list_ids=[])

    assert client.request_count == 2
    assert len(clock.sleeps) == 1
    time.sleep(0.6)  # let the abandoned slow request land too
    assert list(fake.contacts) == ["slow@example.com"]


def test_timeout_streak_raises_transient(fake: FakeBrevo, clock: VirtualClock) -> None:
    client = make_client(fake, clock, read_timeout=0.15, max_retries=1)
    fake.faults.add("slow", count=2, seconds=0.4)

    with pytest.raises(BrevoTransientError) as info:
        client.upsert_contact(email="slow@example.com", attributes={}, list_ids=[])

    assert "Timeout" in str(info.value)
    assert client.request_count == 2


def test_drop_before_then_success(fake: FakeBrevo, client: BrevoClient) -> None:
    fake.faults.add("drop_before")

    contact_id = client.upsert_contact(email="d@example.com", attributes={"A": "1"}, list_ids=[2])

    assert isinstance(contact_id, int)
    assert [e.status for e in fake.requests_log] == [None, 201]
    assert list(fake.contacts) == ["d@example.com"]


def test_drop_after_retry_is_harmless(fake: FakeBrevo, client: BrevoClient) -> None:
    fake.faults.add("drop_after")

    result = client.upsert_contact(email="d@example.com", attributes={"A": "1"}, list_ids=[2])

    # The first attempt created the contact but its 201 was lost; the retry
    # updates it, so the caller sees an update.
    assert result is None
    assert [e.status for e in fake.requests_log] == [None, 204]
    assert list(fake.contacts) == ["d@example.com"]
    assert fake.contact("d@example.com")["attributes"] == {"A": "1"}  # type: ignore[index]


# --------------------------------------------------------- permanent faults


def test_400_for_one_contact_is_permanent(fake: FakeBrevo, client: BrevoClient) -> None:
    fake.faults.add("400", email="bad@example.com", count=None)

    with pytest.raises(BrevoPermanentError) as info:
        client.upsert_contact(email="bad@example.com", attributes={}, list_ids=[])
    good = client.upsert_contact(email="good@example.com", attributes={}, list_ids=[])

    assert info.value.status == 400
    assert info.value.code == "invalid_parameter"
    assert info.value.permanent is True
    assert isinstance(good, int)
    assert client.request_count == 2  # no retry of the permanent failure
    assert list(fake.contacts) == ["good@example.com"]


def test_invalid_email_is_permanent(client: BrevoClient) -> None:
    with pytest.raises(BrevoPermanentError) as info:
        client.upsert_contact(email="not-an-email", attributes={}, list_ids=[])
    assert info.value.code == "invalid_parameter"


def test_401_is_auth_error_without_retry(fake: FakeBrevo, clock: VirtualClock) -> None:
    client = make_client(fake, clock, api_key="wrong-key")

    with pytest.raises(BrevoAuthError) as info:
        client.upsert_contact(email="a@example.com", attributes={}, list_ids=[])

    assert info.value.status == 401
    assert info.value.code == "unauthorized"
    assert info.value.permanent is True
    assert client.request_count == 1
    assert fake.request_count == 1
    assert clock.sleeps == []


def test_revoked_key_mid_run_is_auth_error(fake: FakeBrevo, client: BrevoClient) -> None:
    client.upsert_contact(email="a@example.com", attributes={}, list_ids=[])
    fake.faults.add("401")
    with pytest.raises(BrevoAuthError):
        client.upsert_contact(email="b@example.com", attributes={}, list_ids=[])
    assert client.request_count == 2


# ----------------------------------------------------------- data hygiene


def test_api_key_never_leaks(
    fake: FakeBrevo, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(fake, clock, max_retries=1)
    caplog.set_level(logging.DEBUG, logger="funnels.brevo")
    errors: list[BrevoError] = []

    # Responses that echo the key: the client must still not repeat it.
    fake.faults.add("400", message=f"bad key {KEY} for private.person@example.com")
    fake.faults.add("500", count=2, message=f"upstream said {KEY}")
    for email in ("private.person@example.com", "other@example.com"):
        with pytest.raises(BrevoError) as info:
            client.upsert_contact(email=email, attributes={}, list_ids=[])
        errors.append(info.value)
    with pytest.raises(BrevoAuthError) as auth:
        make_client(fake, clock, api_key=KEY + "-wrong").get_list(list_id=1)
    errors.append(auth.value)
    client.upsert_contact(email="private.person@example.com", attributes={}, list_ids=[])

    assert len(caplog.records) > 0
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(client)]
    texts += [repr(e.args) for e in errors]
    texts += [record.getMessage() for record in caplog.records]
    for text in texts:
        assert KEY not in text
    assert "[redacted]" in str(errors[0])
    for record in caplog.records:
        assert "private.person@example.com" not in record.getMessage()


def test_email_blacklisted_is_never_sent(fake: FakeBrevo, client: BrevoClient) -> None:
    fake.seed_contact(email="unsub@example.com", email_blacklisted=True)
    client.upsert_contact(email="unsub@example.com", attributes={"A": "1"}, list_ids=[3])
    client.wait_for_process(
        process_id=client.import_contacts(
            contacts=[{"email": "unsub@example.com", "attributes": {}}], list_ids=[5]
        ),
        poll_interval=0.01,
    )

    fake.assert_never_sent("emailBlacklisted")
    fake.assert_never_sent("emailBlacklist")
    assert fake.contact("unsub@example.com")["emailBlacklisted"] is True  # type: ignore[index]
    with pytest.raises(ValueError):
        client.upsert_contact(
            email="unsub@example.com", attributes={"emailBlacklisted": False}, list_ids=[]
        )
    with pytest.raises(ValueError):
        client.import_contacts(
            contacts=[{"email": "unsub@example.com", "emailBlacklisted": False}], list_ids=[1]
        )


def test_never_sent_check_can_fail(fake: FakeBrevo) -> None:
    requests.post(
        f"{fake.base_url}/contacts",
        json={"email": "x@example.com", "emailBlacklisted": False},
        headers={"api-key": KEY},
        timeout=5,
    )
    with pytest.raises(AssertionError):
        fake.assert_never_sent("emailBlacklisted")


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("john@example.com", "j***@example.com"),
        ("J@x.io", "J***@x.io"),
        ("@example.com", "***@example.com"),
        ("no-at-sign", "***"),
        ("a@b@c.com", "a***@c.com"),
    ],
)
def test_mask_email(email: str, masked: str) -> None:
    assert mask_email(email) == masked


def test_mask_emails_in_text() -> None:
    text = "Contact mary.smith@example.org already exists"
    assert mask_emails_in_text(text) == "Contact m***@example.org already exists"


def test_get_list_checks_the_key_and_the_list_in_one_read() -> None:
    with FakeBrevo(api_key=KEY, requests_per_second=1_000, lists=[7]) as server:
        with make_client(server) as client:
            found = client.get_list(list_id=7)
            missing = client.get_list(list_id=8)
        with make_client(server, api_key="xkeysib-wrong-0000000000000000") as wrong:
            with pytest.raises(BrevoAuthError):
                wrong.get_list(list_id=7)
    assert found is not None and found["id"] == 7 and "totalSubscribers" in found
    assert missing is None
    assert [r.path for r in server.requests_log[:2]] == [
        "/v3/contacts/lists/7", "/v3/contacts/lists/8"
    ]
