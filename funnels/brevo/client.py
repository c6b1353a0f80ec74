"""HTTP client for the parts of Brevo API v3 that the funnels use.

Framework-free on purpose: Django code builds it from settings, the fake's
tests build it against loopback. One client owns one ``requests.Session`` and
is meant to be used from one thread at a time.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from datetime import UTC, datetime
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter

from funnels.brevo.errors import (
    BrevoAuthError,
    BrevoError,
    BrevoPermanentError,
    BrevoTransientError,
)
from funnels.brevo.masking import mask_email, mask_emails_in_text

__all__ = [
    "BrevoClient", "ListContactsPage", "ListsPage", "RateLimitInfo", "LIST_CONTACTS_MAX",
    "CONTACTS_MAX", "LISTS_MAX", "IMPORT_MAX_BODY_BYTES",
]

logger = logging.getLogger("funnels.brevo")

# GET /contacts/lists/{id}/contacts returns at most this many a page.
LIST_CONTACTS_MAX = 500
# The description's maximum limits of GET /contacts and GET /contacts/lists.
CONTACTS_MAX = 1000
LISTS_MAX = 50
# Brevo refuses JSON import bodies above 10 MB; keep a margin for its own parsing.
IMPORT_MAX_BODY_BYTES = int(9.5 * 1024 * 1024)
DEFAULT_USER_AGENT = "testizer-funnels/1.0 (+brevo-client)"

# Sending any of these would overwrite the subscription state Brevo keeps for
# a person; emailBlacklisted=false re-subscribes people who unsubscribed.
_FORBIDDEN_FIELDS = frozenset({"emailBlacklisted", "emailBlacklist"})

_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)

_PROCESS_DONE = "completed"
_PROCESS_FAILED = frozenset({"failed", "cancelled"})
_POLL_GROWTH = 1.5
_POLL_MAX_INTERVAL = 30.0


@dataclass(frozen=True)
class RateLimitInfo:
    """Rate-limit headroom as last reported by Brevo's ``x-sib-ratelimit-*``."""

    limit: int | None
    remaining: int | None
    reset: float | None
    observed_at: float


@dataclass(frozen=True)
class ListContactsPage:
    """A page of a list's contacts as Brevo sent them, and how many match in all."""

    contacts: list[dict[str, Any]]
    count: int


@dataclass(frozen=True)
class ListsPage:
    """A page of the account's lists (id, name, totalSubscribers, ...) and how many
    lists the account has in all."""

    lists: list[dict[str, Any]]
    count: int


@dataclass(frozen=True)
class _Reply:
    status: int
    data: Any


class BrevoClient:
    """Minimal, retrying, throttled client for Brevo contacts and processes."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 30,
        max_ratelimit_wait: float = 60,
        requests_per_second: float = 9,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_ratelimit_wait = max_ratelimit_wait
        self.requests_per_second = requests_per_second
        self.user_agent = user_agent
        self._sleep = sleep
        self._monotonic = monotonic
        self._owns_session = session is None
        self._session = session if session is not None else self._new_session()
        self.request_count = 0
        self.last_ratelimit: RateLimitInfo | None = None

        # Even spacing rather than bursts: Brevo counts arrivals in a rolling
        # second, so a burst of 9 followed by the next burst exactly one second
        # later leaves a margin of one round trip; spacing leaves 1/rps.
        self._min_interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._next_send_at: float | None = None
        self._throttle_lock = threading.Lock()

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        # Retries are ours: urllib3 retrying underneath would hide the count and
        # replay non-idempotent POSTs without our backoff.
        adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=4)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def __repr__(self) -> str:
        return f"BrevoClient(base_url={self.base_url!r}, api_key='***')"

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> BrevoClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ API

    def upsert_contact(
        self, *, email: str, attributes: dict[str, Any], list_ids: list[int]
    ) -> int | None:
        """Create or update one contact; the id on creation, None on update."""
        _reject_forbidden(attributes)
        body: dict[str, Any] = {
            "email": email,
            "attributes": dict(attributes),
            "updateEnabled": True,
        }
        if list_ids:
            body["listIds"] = [int(list_id) for list_id in list_ids]
        reply = self._request(
            "POST", "/contacts", json_body=body, log_path="/contacts", subject=email
        )
        if reply.status == 204:
            return None
        if isinstance(reply.data, Mapping) and isinstance(reply.data.get("id"), int):
            return int(reply.data["id"])
        # A 201 without an id would mean Brevo changed its contract: surface it.
        raise BrevoPermanentError(
            f"POST /contacts answered {reply.status} without an id", status=reply.status
        )

    def import_contacts(
        self, *, contacts: list[dict[str, Any]], list_ids: list[int], erase_empty: bool = False
    ) -> int:
        """Start an asynchronous import; returns Brevo's ``processId``. With `erase_empty`,
        an attribute sent as "" is emptied in Brevo (``emptyContactsAttributes``, the one
        documented way to clear a value); without it, an empty value changes nothing."""
        if not list_ids:
            raise ValueError("list_ids must not be empty")
        items: list[dict[str, Any]] = []
        for contact in contacts:
            email = contact.get("email")
            if not isinstance(email, str) or not email:
                raise ValueError("every contact needs an 'email'")
            attributes = dict(contact.get("attributes") or {})
            _reject_forbidden(contact)
            _reject_forbidden(attributes)
            items.append({"email": email, "attributes": attributes})
        body = {
            "jsonBody": items,
            "listIds": [int(list_id) for list_id in list_ids],
            "updateExistingContacts": True,
            "emptyContactsAttributes": bool(erase_empty),
        }
        encoded = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) > IMPORT_MAX_BODY_BYTES:
            raise ValueError(
                f"import body is {len(encoded)} bytes, above the "
                f"{IMPORT_MAX_BODY_BYTES} byte limit: send smaller chunks"
            )
        reply = self._request(
            "POST",
            "/contacts/import",
            raw_body=encoded,
            log_path="/contacts/import",
            subject=f"{len(items)} contacts",
        )
        if isinstance(reply.data, Mapping) and isinstance(reply.data.get("processId"), int):
            return int(reply.data["processId"])
        raise BrevoPermanentError(
            f"POST /contacts/import answered {reply.status} without a processId",
            status=reply.status,
        )

    def get_process(self, *, process_id: int) -> dict[str, Any]:
        path = f"/processes/{int(process_id)}"
        reply = self._request("GET", path, log_path=path, subject=None)
        if not isinstance(reply.data, dict):
            raise BrevoPermanentError(f"GET {path} answered without a JSON object")
        return reply.data

    def wait_for_process(
        self, *, process_id: int, poll_interval: float = 2.0, timeout: float = 300
    ) -> dict[str, Any]:
        """Poll until the process completes.

        The interval grows because /processes is limited to about 100 calls per
        hour on Brevo's side; a tight loop would burn that budget.
        """
        deadline = self._monotonic() + timeout
        interval = max(poll_interval, 0.0)
        while True:
            process = self.get_process(process_id=process_id)
            status = str(process.get("status", ""))
            if status == _PROCESS_DONE:
                return process
            if status in _PROCESS_FAILED:
                raise BrevoPermanentError(
                    f"process {process_id} ended with status {status!r}",
                    code=f"process_{status}",
                )
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise BrevoTransientError(
                    f"process {process_id} still {status!r} after {timeout}s",
                    code="process_timeout",
                )
            self._sleep(min(interval, remaining))
            interval = min(max(interval * _POLL_GROWTH, 0.1), _POLL_MAX_INTERVAL)

    def get_list(self, *, list_id: int) -> dict[str, Any] | None:
        """The list (id, name, ...), or None when the account has no such list. A wrong
        key raises BrevoAuthError like every call: one read checks key and list."""
        path = f"/contacts/lists/{int(list_id)}"
        reply = self._request("GET", path, log_path="/contacts/lists/{id}",
                              subject=f"list {int(list_id)}", none_on_404=True)
        if reply.status == 404:
            return None
        if not isinstance(reply.data, dict):
            raise BrevoPermanentError("GET /contacts/lists/{id} answered without a JSON object")
        return reply.data

    def list_contacts_page(
        self,
        *,
        list_id: int,
        offset: int = 0,
        limit: int = LIST_CONTACTS_MAX,
        modified_since: datetime | None = None,
    ) -> ListContactsPage:
        """One page of a list's contacts, oldest first (``sort=asc``: a contact created
        while the pages are read lands after them instead of shifting them), with the
        number of contacts that match; ``modified_since`` (aware) keeps those modified
        after it. None-free: an unknown list raises BrevoPermanentError (404)."""
        _paging_check(limit=limit, offset=offset, maximum=LIST_CONTACTS_MAX)
        params: dict[str, Any] = {"limit": limit, "offset": offset, "sort": "asc"}
        if modified_since is not None:
            params["modifiedSince"] = _brevo_time(modified_since)
        path = f"/contacts/lists/{int(list_id)}/contacts?{urlencode(params)}"
        reply = self._request(
            "GET", path, log_path="/contacts/lists/{id}/contacts",
            subject=f"list {int(list_id)}",
        )
        contacts, count = _page_items(reply, key="contacts",
                                      endpoint="GET /contacts/lists/{id}/contacts")
        return ListContactsPage(contacts=contacts, count=count)

    def contacts_page(
        self,
        *,
        list_ids: list[int],
        offset: int = 0,
        limit: int = CONTACTS_MAX,
        modified_since: datetime | None = None,
    ) -> ListContactsPage:
        """One page of the contacts in any of `list_ids` (GET /contacts), oldest first
        like list_contacts_page, with the number that match; each carries its listIds and
        listUnsubscribed, so one read serves several lists."""
        if not list_ids:
            # Without listIds Brevo would answer the whole account.
            raise ValueError("list_ids must not be empty")
        _paging_check(limit=limit, offset=offset, maximum=CONTACTS_MAX)
        ids = sorted({int(list_id) for list_id in list_ids})
        # An array query parameter in the description's default style (form, exploded):
        # listIds=1&listIds=2, not listIds=1,2.
        params: list[tuple[str, Any]] = [("listIds", list_id) for list_id in ids]
        params += [("limit", limit), ("offset", offset), ("sort", "asc")]
        if modified_since is not None:
            params.append(("modifiedSince", _brevo_time(modified_since)))
        reply = self._request(
            "GET", f"/contacts?{urlencode(params)}", log_path="/contacts",
            subject=f"lists {','.join(map(str, ids))}",
        )
        contacts, count = _page_items(reply, key="contacts", endpoint="GET /contacts")
        return ListContactsPage(contacts=contacts, count=count)

    def lists_page(self, *, offset: int = 0, limit: int = LISTS_MAX) -> ListsPage:
        """One page of the account's lists in creation order (GET /contacts/lists,
        ``sort=asc``: a list created meanwhile lands after the pages), with their sizes;
        `count` is the number of lists in the account."""
        _paging_check(limit=limit, offset=offset, maximum=LISTS_MAX)
        params = {"limit": limit, "offset": offset, "sort": "asc"}
        reply = self._request(
            "GET", f"/contacts/lists?{urlencode(params)}", log_path="/contacts/lists",
            subject=None,
        )
        lists, count = _page_items(reply, key="lists", endpoint="GET /contacts/lists")
        return ListsPage(lists=lists, count=count)

    # ------------------------------------------------------------ internals

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw_body: bytes | None = None,
        log_path: str,
        subject: str | None,
        none_on_404: bool = False,
    ) -> _Reply:
        url = f"{self.base_url}{path}"
        headers = {
            "api-key": self._api_key,
            "accept": "application/json",
            "user-agent": self.user_agent,
        }
        data: bytes | None = raw_body
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
        if data is not None:
            headers["content-type"] = "application/json"
        who = _describe(subject)

        attempt = 0
        while True:
            self._throttle()
            self.request_count += 1
            try:
                response = self._session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    timeout=(self.connect_timeout, self.read_timeout),
                    allow_redirects=False,
                )
            except _TRANSPORT_ERRORS as exc:
                failure = BrevoTransientError(
                    f"{method} {log_path} failed: {type(exc).__name__}",
                    secrets=(self._api_key,),
                )
                attempt = self._retry_or_raise(failure, attempt, method, log_path, who)
                continue

            self._record_ratelimit(response)
            status = response.status_code
            if 200 <= status < 300:
                parsed = _parse_json(response)
                if parsed is _INVALID_JSON:
                    failure = BrevoTransientError(
                        f"{method} {log_path} answered {status} with a body that is not JSON",
                        status=status,
                        secrets=(self._api_key,),
                    )
                    attempt = self._retry_or_raise(failure, attempt, method, log_path, who)
                    continue
                logger.debug("brevo %s %s -> %s (%s)", method, log_path, status, who)
                return _Reply(status=status, data=parsed)

            code, message = _error_details(response)
            text = f"{method} {log_path} -> {status} {code or '-'}: {message}"
            if status == 404 and none_on_404:
                logger.debug("brevo %s %s -> 404 (%s)", method, log_path, who)
                return _Reply(status=404, data=None)
            if status == 401:
                logger.error("brevo %s %s -> 401: API key rejected", method, log_path)
                raise BrevoAuthError(text, status=status, code=code, secrets=(self._api_key,))
            if status == 429:
                self._wait_for_ratelimit(response, text, code, attempt, method, log_path)
                attempt += 1
                continue
            if status >= 500:
                failure = BrevoTransientError(
                    text, status=status, code=code, secrets=(self._api_key,)
                )
                attempt = self._retry_or_raise(failure, attempt, method, log_path, who)
                continue
            logger.info("brevo %s %s -> %s %s (%s)", method, log_path, status, code, who)
            raise BrevoPermanentError(text, status=status, code=code, secrets=(self._api_key,))

    def _retry_or_raise(
        self, failure: BrevoError, attempt: int, method: str, log_path: str, who: str
    ) -> int:
        if attempt >= self.max_retries:
            logger.warning(
                "brevo %s %s gave up after %d attempts (%s): %s",
                method,
                log_path,
                attempt + 1,
                who,
                failure.message,
            )
            raise failure
        delay = self._backoff(attempt)
        logger.info(
            "brevo %s %s transient failure, retry %d/%d in %.2fs (%s): %s",
            method,
            log_path,
            attempt + 1,
            self.max_retries,
            delay,
            who,
            failure.message,
        )
        self._sleep(delay)
        return attempt + 1

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * (2**attempt))
        # Equal jitter: never less than half the step, so a streak of failures
        # still slows us down, but clients that failed together spread out.
        return random.uniform(ceiling / 2, ceiling)

    def _wait_for_ratelimit(
        self,
        response: requests.Response,
        text: str,
        code: str | None,
        attempt: int,
        method: str,
        log_path: str,
    ) -> None:
        reset = _header_number(response.headers.get("x-sib-ratelimit-reset"))
        if attempt >= self.max_retries:
            raise BrevoTransientError(
                f"{text} (rate limited, retry budget exhausted)",
                status=429,
                code=code,
                secrets=(self._api_key,),
            )
        if reset is None:
            # No reset header: fall back to our own backoff rather than hammering.
            wait = self._backoff(attempt)
        elif reset > self.max_ratelimit_wait:
            raise BrevoTransientError(
                f"{text} (rate limit resets in {reset:g}s, above the "
                f"{self.max_ratelimit_wait:g}s we are willing to wait)",
                status=429,
                code=code,
                secrets=(self._api_key,),
            )
        else:
            wait = max(reset, 0.0)
        logger.warning("brevo %s %s rate limited, waiting %.2fs", method, log_path, wait)
        self._sleep(wait)

    def _throttle(self) -> None:
        if self._min_interval <= 0:
            return
        with self._throttle_lock:
            now = self._monotonic()
            if self._next_send_at is not None and now < self._next_send_at:
                self._sleep(self._next_send_at - now)
                now = self._monotonic()
            self._next_send_at = now + self._min_interval

    def _record_ratelimit(self, response: requests.Response) -> None:
        headers = response.headers
        limit = _header_number(headers.get("x-sib-ratelimit-limit"))
        remaining = _header_number(headers.get("x-sib-ratelimit-remaining"))
        reset = _header_number(headers.get("x-sib-ratelimit-reset"))
        if limit is None and remaining is None and reset is None:
            return
        self.last_ratelimit = RateLimitInfo(
            limit=None if limit is None else int(limit),
            remaining=None if remaining is None else int(remaining),
            reset=reset,
            observed_at=self._monotonic(),
        )


_INVALID_JSON = object()


def _parse_json(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return _INVALID_JSON


def _error_details(response: requests.Response) -> tuple[str | None, str]:
    """Brevo's ``code`` and message; proxies answer with plain text instead."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        code = payload.get("code")
        message = payload.get("message")
        return (
            code if isinstance(code, str) else None,
            str(message) if message is not None else "",
        )
    text = response.text.strip()
    return None, " ".join(text.split())[:200]


def _header_number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _brevo_time(moment: datetime) -> str:
    """An aware time as Brevo's filters take it: UTC, YYYY-MM-DDTHH:mm:ss.SSSZ."""
    if moment.tzinfo is None:
        raise ValueError("modified_since must be aware")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _describe(subject: str | None) -> str:
    if subject is None:
        return "-"
    if "@" in subject:
        return mask_email(subject)
    return mask_emails_in_text(subject)


def _reject_forbidden(fields: Mapping[str, Any]) -> None:
    present = _FORBIDDEN_FIELDS.intersection(fields)
    if present:
        raise ValueError(
            f"refusing to send {sorted(present)}: it would change the person's subscription state"
        )


def _page_items(reply: _Reply, *, key: str, endpoint: str) -> tuple[list, int]:
    """A page's items and its count. The description does not mark every such pair
    required, but a page without them is no answer: permanent, not retried."""
    data = reply.data
    if (
        not isinstance(data, Mapping)
        or not isinstance(data.get(key), list)
        or not isinstance(data.get("count"), int)
    ):
        raise BrevoPermanentError(
            f"{endpoint} answered without {key} and count", status=reply.status
        )
    return list(data[key]), int(data["count"])


def _paging_check(*, limit: int, offset: int, maximum: int) -> None:
    """A listing's limit and offset as Brevo accepts them: a caller's mistake, not Brevo's."""
    if not 1 <= limit <= maximum:
        raise ValueError(f"limit must be 1..{maximum}")
    if offset < 0:
        raise ValueError("offset must be >= 0")
