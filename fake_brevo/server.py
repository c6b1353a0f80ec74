"""A fake Brevo API v3 server on loopback for tests, demos and benchmarks.

Brevo cannot be reached from the machines this project runs on, so the fake
reproduces the parts of the real contract the funnels depend on, including
the behaviour the OpenAPI description does not state (401 bodies, 429 with
``x-sib-ratelimit-*`` headers, 204 on upsert-update, 400 ``invalid_parameter``
when a list add changes nothing, asynchronous imports) and switchable faults
(proxy 524s, timeouts, connections dropped before or after the change).

Framework-free and stdlib-only so a subprocess can run it with
``python -m fake_brevo.server``.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeGuard
from urllib.parse import parse_qs, unquote, urlsplit

from fake_brevo.addresses import address_valid

__all__ = ["FAULT_KINDS", "Fault", "FaultPlan", "FakeBrevo", "LoggedRequest", "main"]

logger = logging.getLogger("fake_brevo.server")

FAULT_KINDS = frozenset(
    {"429", "500", "503", "524", "slow", "drop_before", "drop_after", "400", "401", "import_failed"}
)
API_PREFIX = "/v3"
CONTROL_PREFIX = "/__fake__"
LIST_ADD_MAX = 150
LIST_CONTACTS_MAX = 500
# GET /contacts and GET /contacts/lists: the description's maximum limits.
CONTACTS_MAX = 1000
LISTS_MAX = 50
MAX_BODY_BYTES = 10 * 1024 * 1024
# Bodies above this are refused without being read, so a runaway client cannot
# make the fake buffer arbitrary amounts of memory.
_HARD_BODY_LIMIT = 12 * 1024 * 1024
_DEFAULT_SLOW_SECONDS = 5.0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _parse_moment(value: str) -> datetime | None:
    """An ISO date-time as Brevo takes it in ``modifiedSince`` (``Z`` or an offset);
    None when it is not one, or has no zone (Brevo asks for one)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _after(stamp: str, since: datetime | None) -> bool:
    """A contact's stored time is after `since` (no bound: always)."""
    return since is None or (_parse_moment(stamp) or since) > since


def _paging(query: str, *, default_limit: int, max_limit: int) -> tuple[int, int, str] | _Outcome:
    """limit, offset and sort of a listing as Brevo takes them (sort: order of record
    creation, descending unless asked), or the 400 Brevo answers."""
    params = {key: values[-1] for key, values in parse_qs(query).items()}
    try:
        limit = int(params.get("limit", str(default_limit)))
        offset = int(params.get("offset", "0"))
    except ValueError:
        return _Outcome(400, _error("invalid_parameter", "limit and offset must be integers"))
    if not 0 <= limit <= max_limit or offset < 0:
        return _Outcome(
            400, _error("out_of_range", f"limit must be 0..{max_limit}, offset >= 0")
        )
    sort = params.get("sort", "desc")
    if sort not in ("asc", "desc"):
        return _Outcome(400, _error("invalid_parameter", "sort must be asc or desc"))
    return limit, offset, sort


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_email(value: Any) -> TypeGuard[str]:
    # As strict as Brevo and as the funnels' own check: fake_brevo/addresses.py.
    return address_valid(value)


def _is_empty(value: Any) -> bool:
    """An "empty field" of an import row (see emptyContactsAttributes)."""
    return value is None or value == ""


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


def _contains_key(value: Any, key: str) -> bool:
    if isinstance(value, Mapping):
        return key in value or any(_contains_key(item, key) for item in value.values())
    if isinstance(value, list):
        return any(_contains_key(item, key) for item in value)
    return False


# --------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One switchable fault; ``remaining=None`` means until cleared."""

    kind: str
    remaining: int | None = 1
    path_prefix: str | None = None
    method: str | None = None
    email: str | None = None
    reset: float = 1.0
    seconds: float = _DEFAULT_SLOW_SECONDS
    message: str | None = None
    # The description's operationId (getContacts): a prefix cannot single out
    # GET /contacts among the /contacts/... paths.
    operation: str | None = None

    def matches(
        self, method: str, path: str, emails: set[str], operation: str | None = None
    ) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.kind == "import_failed":
            if method != "POST" or path != f"{API_PREFIX}/contacts/import":
                return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.email is not None and self.email.lower() not in emails:
            return False
        if self.operation is not None and self.operation != operation:
            return False
        return True


class FaultPlan:
    """Queue of faults consumed in insertion order by matching API requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        kind: str,
        *,
        count: int | None = 1,
        path_prefix: str | None = None,
        method: str | None = None,
        email: str | None = None,
        reset: float = 1.0,
        seconds: float = _DEFAULT_SLOW_SECONDS,
        message: str | None = None,
        operation: str | None = None,
    ) -> Fault:
        """Arm ``kind`` for the next ``count`` matching requests (None: forever).

        ``path_prefix`` is relative to ``/v3`` (``/contacts/import``) or
        absolute; ``email`` restricts the fault to requests about that contact;
        ``operation`` to one operationId of the description (``getContacts``).
        """
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        if path_prefix is not None and not path_prefix.startswith(API_PREFIX + "/"):
            path_prefix = API_PREFIX + "/" + path_prefix.lstrip("/")
        fault = Fault(
            kind=kind,
            remaining=count,
            path_prefix=path_prefix,
            method=method.upper() if method else None,
            email=email.lower() if email else None,
            reset=float(reset),
            seconds=float(seconds),
            message=message,
            operation=operation,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(fault) for fault in self._faults]

    def take(
        self, method: str, path: str, emails: set[str], operation: str | None = None
    ) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, emails, operation):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return copy.copy(fault)
        return None


# ---------------------------------------------------------------- request log


@dataclass(frozen=True)
class LoggedRequest:
    """One API exchange as the fake saw it; ``status`` is None when dropped."""

    seq: int
    method: str
    path: str
    query: str
    operation: str | None
    headers: dict[str, str]
    api_key_sent: bool
    body: Any
    status: int | None
    response_headers: dict[str, str]
    response_body: bytes
    fault: str | None
    at: float

    @property
    def response_json(self) -> Any:
        if not self.response_body:
            return None
        try:
            return json.loads(self.response_body)
        except ValueError:
            return None

    def summary(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "operation": self.operation,
            "status": self.status,
            "fault": self.fault,
            "body": self.body,
        }


@dataclass
class _Outcome:
    status: int = 200
    payload: Any = None
    text: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    fault: str | None = None
    operation: str | None = None

    def encode(self) -> bytes:
        if self.text is not None:
            return self.text.encode()
        if self.payload is None:
            return b""
        return json.dumps(self.payload, separators=(",", ":")).encode()


class _Window:
    """Sliding-window limiter: at most ``limit`` hits per ``seconds``."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.hits: deque[float] = deque()

    def prune(self, now: float) -> None:
        cutoff = now - self.seconds
        while self.hits and self.hits[0] <= cutoff:
            self.hits.popleft()

    def reset_in(self, now: float) -> int:
        if not self.hits:
            return 0
        return max(1, math.ceil(self.hits[0] + self.seconds - now))


# ---------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeBrevo) -> None:
        self.fake = fake
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeBrevo/1.0"
    # Idle keep-alive connections give their thread back after this long.
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without this, Nagle on our side plus delayed ACKs on the client's
        # stall every keep-alive response by ~40 ms.
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._track(self.connection, add=False)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError):
            # The client went away (timed out, dropped): nothing to answer.
            self.close_connection = True

    def _dispatch(self) -> None:
        self.server.fake._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake brevo: " + format, *args)


class FakeBrevo:
    """In-memory Brevo on ``127.0.0.1``; see the module docstring."""

    def __init__(
        self,
        api_key: str = "test-key",
        requests_per_second: float | None = 10,
        latency: float = 0.0,
        import_delay: float = 0.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        requests_per_hour: int | None = 36_000,
        process_requests_per_hour: int | None = 100,
        lists: Iterable[int] | None = None,
        attribute_types: Mapping[str, str] | None = None,
        log_limit: int = 20_000,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            raise ValueError("the fake only listens on loopback addresses")
        self.api_key = api_key
        self.requests_per_second = requests_per_second
        self.requests_per_hour = requests_per_hour
        self.process_requests_per_hour = process_requests_per_hour
        self.import_delay = import_delay
        self._initial_latency = latency
        self._latency = latency
        self._host = host
        self._requested_port = port
        self._strict_lists = lists is not None
        self._initial_lists = sorted(set(lists or ()))
        self._attribute_types = dict(attribute_types) if attribute_types is not None else None
        self.faults = FaultPlan()
        # modifiedAt and modifiedSince are compared on this clock, so a test that pins
        # time can pin the fake's too (set_clock).
        self._clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._log: deque[LoggedRequest] = deque(maxlen=log_limit)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._reset_state()

    # ---------------------------------------------------------- lifecycle

    def start(self) -> FakeBrevo:
        if self._server is not None:
            return self
        self._server = _Server((self._host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-brevo",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        # Keep-alive connections would otherwise keep their threads reading.
        with self._conn_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeBrevo:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("fake Brevo is not running")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}{API_PREFIX}"

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ------------------------------------------------------ test helpers

    def reset(self) -> None:
        """Forget contacts, lists, processes, the log, faults and rate windows."""
        self.faults.clear()
        self._reset_state()

    def _reset_state(self) -> None:
        with self._lock:
            self._contacts: dict[str, dict[str, Any]] = {}
            self._email_by_id: dict[int, str] = {}
            self._lists: dict[int, dict[str, Any]] = {
                list_id: {"id": list_id, "name": f"List {list_id}"}
                for list_id in self._initial_lists
            }
            self._processes: dict[int, dict[str, Any]] = {}
            self._sizes_exclude_blacklisted = False
            self._next_contact_id = 1
            self._next_list_id = max(self._lists, default=0) + 1
            self._next_process_id = 1
            self._seq = 0
            self._log.clear()
            self._latency = self._initial_latency
            self._windows: dict[str, list[_Window]] = {"contacts": [], "processes": []}
            if self.requests_per_second:
                # Brevo's per-second limit is a count per rolling second; a
                # fractional rate would allow no request at all, so floor at 1.
                self._windows["contacts"].append(
                    _Window(max(1, int(self.requests_per_second)), 1.0)
                )
            if self.requests_per_hour:
                self._windows["contacts"].append(_Window(self.requests_per_hour, 3600.0))
            if self.process_requests_per_hour:
                self._windows["processes"].append(_Window(self.process_requests_per_hour, 3600.0))

    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = max(0.0, float(seconds))

    def set_list_sizes(self, *, exclude_blacklisted: bool) -> None:
        """Whether a list's totalSubscribers leaves its blacklisted contacts out (the
        description's examples) or counts every contact in it (the default)."""
        with self._lock:
            self._sizes_exclude_blacklisted = bool(exclude_blacklisted)

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        """Use ``clock`` (aware datetimes) for modifiedAt and modifiedSince from now on."""
        with self._lock:
            self._clock = clock

    def _stamp(self) -> str:
        return _iso(self._clock())

    # What people and marketers do in Brevo's own interface, which the audit must see.
    # Each touches modifiedAt as Brevo does, so an incremental read finds the change.

    def unsubscribe_from_list(self, *, email: str, list_id: int) -> None:
        """The person used the list's unsubscribe link: still a contact, still in the
        list's listIds, with the list in listUnsubscribed."""
        with self._lock:
            record = self._require(email)
            record["listUnsubscribed"].add(int(list_id))
            record["modifiedAt"] = self._stamp()

    def blacklist(self, *, email: str) -> None:
        """Unsubscribed from everything (or a hard bounce): emailBlacklisted."""
        with self._lock:
            record = self._require(email)
            record["emailBlacklisted"] = True
            record["modifiedAt"] = self._stamp()

    def delete_contact(self, *, email: str) -> None:
        with self._lock:
            record = self._require(email)
            del self._contacts[record["email"]]
            del self._email_by_id[record["id"]]

    def empty_list(self, *, list_id: int) -> int:
        """A marketer removed every contact from the list by hand; returns how many."""
        with self._lock:
            removed = 0
            stamp = self._stamp()
            for record in self._contacts.values():
                if list_id in record["listIds"]:
                    record["listIds"].discard(list_id)
                    record["modifiedAt"] = stamp
                    removed += 1
            return removed

    def remove_from_list(self, *, email: str, list_id: int) -> None:
        with self._lock:
            record = self._require(email)
            record["listIds"].discard(int(list_id))
            record["modifiedAt"] = self._stamp()

    def _require(self, email: str) -> dict[str, Any]:
        self._advance_imports()
        record = self._contacts.get(email.lower())
        if record is None:
            raise KeyError(f"no contact {email!r}")
        return record

    @property
    def contacts(self) -> dict[str, dict[str, Any]]:
        """Snapshot of every contact, keyed by lower-cased email."""
        with self._lock:
            self._advance_imports()
            return {key: self._public_contact(c) for key, c in self._contacts.items()}

    def contact(self, email: str) -> dict[str, Any] | None:
        with self._lock:
            self._advance_imports()
            record = self._contacts.get(email.lower())
            return self._public_contact(record) if record else None

    def list_members(self, list_id: int) -> set[str]:
        with self._lock:
            self._advance_imports()
            return {c["email"] for c in self._contacts.values() if list_id in c["listIds"]}

    @property
    def lists(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._lists)

    @property
    def processes(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            self._advance_imports()
            return {pid: self._public_process(p) for pid, p in self._processes.items()}

    def add_list(self, *, name: str | None = None, list_id: int | None = None) -> int:
        with self._lock:
            if list_id is None:
                list_id = self._next_list_id
            self._next_list_id = max(self._next_list_id, list_id + 1)
            self._lists[list_id] = {"id": list_id, "name": name or f"List {list_id}"}
            return list_id

    def seed_contact(
        self,
        *,
        email: str,
        attributes: Mapping[str, Any] | None = None,
        list_ids: Iterable[int] = (),
        email_blacklisted: bool = False,
    ) -> int:
        """Create a contact directly, without a request or rate-limit cost."""
        with self._lock:
            record = self._create_contact(email, dict(attributes or {}), list(list_ids))
            record["emailBlacklisted"] = email_blacklisted
            return int(record["id"])

    @property
    def requests_log(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._seq

    def requests_with_field(self, name: str) -> list[LoggedRequest]:
        """Logged requests whose JSON body carries ``name`` at any depth."""
        return [entry for entry in self.requests_log if _contains_key(entry.body, name)]

    def assert_never_sent(self, name: str = "emailBlacklisted") -> None:
        offenders = self.requests_with_field(name)
        if offenders:
            where = ", ".join(f"#{e.seq} {e.method} {e.path}" for e in offenders[:5])
            raise AssertionError(f"{len(offenders)} request(s) carried {name!r}: {where}")

    def state(self) -> dict[str, Any]:
        with self._lock:
            self._advance_imports()
            statuses = Counter(str(entry.status) for entry in self._log)
            return {
                "contacts": [self._public_contact(c) for c in self._contacts.values()],
                "lists": {
                    str(list_id): sorted(
                        c["email"] for c in self._contacts.values() if list_id in c["listIds"]
                    )
                    for list_id in sorted(self._lists)
                },
                "processes": [self._public_process(p) for p in self._processes.values()],
                "faults": self.faults.pending(),
                "request_count": self._seq,
                "status_counts": dict(statuses),
                "email_blacklisted_requests": [
                    e.seq for e in self._log if _contains_key(e.body, "emailBlacklisted")
                ],
                "latency": self._latency,
            }

    # -------------------------------------------------------- HTTP plumbing

    def _handle(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        path, query = split.path, split.query
        method = h.command.upper()
        try:
            raw = self._read_body(h)
        except _BodyTooLarge:
            self._write(
                h,
                _Outcome(413, text="Request Entity Too Large", content_type="text/plain"),
                close=True,
            )
            return
        except (OSError, ValueError):
            h.close_connection = True
            return
        if path.startswith(CONTROL_PREFIX + "/") or path == CONTROL_PREFIX:
            try:
                outcome = self._control(method, path, query, raw)
            except Exception as exc:  # noqa: BLE001 - the fake must answer, not die
                logger.exception("fake brevo control endpoint failed")
                outcome = _Outcome(500, {"error": f"{type(exc).__name__}: {exc}"})
            self._write(h, outcome)
            return

        headers = {k.lower(): v for k, v in h.headers.items()}
        key = headers.pop("api-key", None)
        body = self._parse_body(raw)
        try:
            outcome = self._api(method, path, query, key, body)
        except Exception:  # noqa: BLE001 - a bug in the fake should look like a 500
            logger.exception("fake brevo handler failed")
            outcome = _Outcome(500, _error("internal_error", "fake Brevo crashed"))
        encoded = b"" if outcome.drop else outcome.encode()
        with self._lock:
            self._seq += 1
            self._log.append(
                LoggedRequest(
                    seq=self._seq,
                    method=method,
                    path=path,
                    query=query,
                    operation=outcome.operation,
                    headers=headers,
                    api_key_sent=key is not None,
                    body=body if body is not _INVALID else None,
                    status=None if outcome.drop else outcome.status,
                    response_headers={} if outcome.drop else self._response_headers(outcome),
                    response_body=encoded,
                    fault=outcome.fault,
                    at=time.time(),
                )
            )
        if outcome.drop:
            # Closing without a status line is what a crashed proxy or a reset
            # connection looks like to the client.
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._write(h, outcome)

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = h.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > _HARD_BODY_LIMIT:
                    raise _BodyTooLarge
                chunks.append(h.rfile.read(size))
                h.rfile.readline(1024)
        length = int(h.headers.get("Content-Length") or 0)
        if length > _HARD_BODY_LIMIT:
            raise _BodyTooLarge
        return h.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _parse_body(raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return _INVALID

    @staticmethod
    def _response_headers(outcome: _Outcome) -> dict[str, str]:
        headers = dict(outcome.headers)
        if outcome.status != 204:
            headers["content-type"] = outcome.content_type
        return headers

    def _write(self, h: _Handler, outcome: _Outcome, *, close: bool = False) -> None:
        body = outcome.encode()
        try:
            h.send_response(outcome.status)
            for name, value in self._response_headers(outcome).items():
                h.send_header(name, value)
            # HTTP forbids a body, and so a length, on 204.
            if outcome.status != 204:
                h.send_header("Content-Length", str(len(body)))
            if close:
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            if outcome.status != 204 and h.command != "HEAD":
                h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    # ------------------------------------------------------------ control

    def _control(self, method: str, path: str, query: str, raw: bytes) -> _Outcome:
        name = path[len(CONTROL_PREFIX) :].strip("/")
        body = self._parse_body(raw)
        if body is _INVALID:
            return _Outcome(400, {"error": "body must be JSON"})
        body = body or {}
        if name == "state" and method == "GET":
            return _Outcome(200, self.state())
        if name == "reset" and method == "POST":
            self.reset()
            return _Outcome(200, {"ok": True})
        if name == "faults" and method == "GET":
            return _Outcome(200, {"faults": self.faults.pending()})
        if name == "faults" and method == "DELETE":
            self.faults.clear()
            return _Outcome(200, {"ok": True})
        if name == "faults" and method == "POST":
            options = {
                k: body[k]
                for k in ("count", "path_prefix", "method", "email", "reset", "seconds", "message",
                          "operation")
                if k in body
            }
            try:
                fault = self.faults.add(str(body.get("kind")), **options)
            except (TypeError, ValueError) as exc:
                return _Outcome(400, {"error": str(exc)})
            return _Outcome(201, {"fault": asdict(fault)})
        if name == "latency" and method == "POST":
            self.set_latency(float(body.get("seconds", 0.0)))
            return _Outcome(200, {"latency": self._latency})
        if name == "contacts" and method == "POST":
            email = body.get("email")
            if not _valid_email(email):
                return _Outcome(400, {"error": "valid email required"})
            contact_id = self.seed_contact(
                email=email,
                attributes=body.get("attributes") or {},
                list_ids=body.get("listIds") or [],
            )
            return _Outcome(201, {"id": contact_id})
        people = re.match(r"^contacts/(?P<email>[^/]+)(?:/(?P<what>unsubscribe|blacklist))?$", name)
        if people and method in ("POST", "DELETE"):
            email = unquote(people["email"])
            try:
                if method == "DELETE" and people["what"] is None:
                    self.delete_contact(email=email)
                elif method == "POST" and people["what"] == "unsubscribe":
                    self.unsubscribe_from_list(email=email, list_id=int(body["listId"]))
                elif method == "POST" and people["what"] == "blacklist":
                    self.blacklist(email=email)
                else:
                    return _Outcome(404, {"error": f"no control endpoint {method} {path}"})
            except KeyError as exc:
                return _Outcome(404, {"error": str(exc)})
            return _Outcome(200, {"ok": True})
        emptied = re.match(r"^lists/(?P<list_id>\d+)/empty$", name)
        if emptied and method == "POST":
            return _Outcome(200, {"removed": self.empty_list(list_id=int(emptied["list_id"]))})
        if name == "requests" and method == "GET":
            since = int((parse_qs(query).get("since") or ["0"])[0])
            return _Outcome(
                200,
                {"requests": [e.summary() for e in self.requests_log if e.seq > since]},
            )
        return _Outcome(404, {"error": f"no control endpoint {method} {path}"})

    # ---------------------------------------------------------------- API

    def _api(self, method: str, path: str, query: str, key: str | None, body: Any) -> _Outcome:
        with self._lock:
            latency = self._latency
        if latency > 0:
            time.sleep(latency)

        route = _route(method, path)
        operation = route[0] if route else None
        if key != self.api_key:
            return _Outcome(401, _error("unauthorized", "Key not found"), operation=operation)

        category = (
            "processes"
            if path.startswith(f"{API_PREFIX}/processes")
            else ("contacts" if path.startswith(f"{API_PREFIX}/contacts") else None)
        )
        limited, rl_headers = self._rate_check(category)
        if limited:
            return _Outcome(
                429,
                _error("too_many_requests", "The expected rate limit is exceeded."),
                headers=rl_headers,
                operation=operation,
            )

        fault = self.faults.take(method, path, _emails_in(path, body), operation)
        fail_import = False
        drop_after = False
        if fault is not None:
            early = self._fault_outcome(fault, rl_headers)
            if early is not None:
                early.operation = operation
                return early
            if fault.kind == "slow":
                time.sleep(fault.seconds)
            fail_import = fault.kind == "import_failed"
            drop_after = fault.kind == "drop_after"

        if route is None:
            outcome = _Outcome(404, _error("document_not_found", f"Invalid path {path}"))
        elif body is _INVALID:
            outcome = _Outcome(400, _error("bad_request", "Input must be a valid JSON object"))
        else:
            name, params = route
            with self._lock:
                self._advance_imports()
                outcome = self._operation(name, params, query, body, fail_import)
            outcome.operation = name
        outcome.headers.update(rl_headers)
        if fault is not None:
            outcome.fault = fault.kind
        if drop_after:
            outcome.drop = True
        return outcome

    def _fault_outcome(self, fault: Fault, rl_headers: dict[str, str]) -> _Outcome | None:
        kind = fault.kind
        if kind == "429":
            headers = dict(rl_headers)
            headers.update(
                {
                    "x-sib-ratelimit-limit": headers.get("x-sib-ratelimit-limit", "10"),
                    "x-sib-ratelimit-remaining": "0",
                    "x-sib-ratelimit-reset": f"{fault.reset:g}",
                }
            )
            return _Outcome(
                429,
                _error(
                    "too_many_requests", fault.message or "The expected rate limit is exceeded."
                ),
                headers=headers,
                fault=kind,
            )
        if kind == "500":
            return _Outcome(
                500, _error("internal_error", fault.message or "Internal server error"), fault=kind
            )
        if kind == "503":
            return _Outcome(
                503,
                text=fault.message or "<html><body><h1>503 Service Unavailable</h1></body></html>",
                content_type="text/html",
                fault=kind,
            )
        if kind == "524":
            return _Outcome(524, text="error code: 524", content_type="text/plain", fault=kind)
        if kind == "401":
            return _Outcome(
                401, _error("unauthorized", fault.message or "Key not found"), fault=kind
            )
        if kind == "400":
            return _Outcome(
                400,
                _error("invalid_parameter", fault.message or "Invalid parameter for this contact"),
                fault=kind,
            )
        if kind == "drop_before":
            return _Outcome(drop=True, fault=kind)
        return None

    def _rate_check(self, category: str | None) -> tuple[bool, dict[str, str]]:
        if category is None:
            return False, {}
        now = time.monotonic()
        with self._lock:
            windows = self._windows.get(category, [])
            if not windows:
                return False, {}
            for window in windows:
                window.prune(now)
            for window in windows:
                if len(window.hits) >= window.limit:
                    return True, {
                        "x-sib-ratelimit-limit": str(window.limit),
                        "x-sib-ratelimit-remaining": "0",
                        "x-sib-ratelimit-reset": str(window.reset_in(now)),
                    }
            for window in windows:
                window.hits.append(now)
            tightest = windows[0]
            return False, {
                "x-sib-ratelimit-limit": str(tightest.limit),
                "x-sib-ratelimit-remaining": str(tightest.limit - len(tightest.hits)),
                "x-sib-ratelimit-reset": str(tightest.reset_in(now)),
            }

    def _operation(
        self, name: str, params: dict[str, str], query: str, body: Any, fail_import: bool
    ) -> _Outcome:
        if name == "createContact":
            return self._create_contact_op(body)
        if name == "getContactInfo":
            return self._get_contact_op(params["identifier"], query)
        if name == "updateContact":
            return self._update_contact_op(params["identifier"], query, body)
        if name == "deleteContact":
            return self._delete_contact_op(params["identifier"], query)
        if name == "addContactToList":
            return self._list_add_op(int(params["listId"]), body)
        if name == "importContacts":
            return self._import_op(body, fail_import)
        if name == "getProcess":
            return self._get_process_op(int(params["processId"]))
        if name == "getList":
            return self._get_list_op(int(params["listId"]))
        if name == "getContactsFromList":
            return self._list_contacts_op(int(params["listId"]), query)
        if name == "getContacts":
            return self._contacts_op(query)
        if name == "getLists":
            return self._lists_op(query)
        return _Outcome(405, _error("method_not_allowed", "Method not allowed"))

    # ------------------------------------------------------ state changes
    # Everything below runs with self._lock held.

    def _public_contact(self, record: dict[str, Any]) -> dict[str, Any]:
        public = copy.deepcopy(record)
        public["listIds"] = sorted(record["listIds"])
        public["listUnsubscribed"] = sorted(record["listUnsubscribed"])
        return public

    def _clean_attributes(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """Drop unknown attributes and values of the wrong type, as Brevo does silently."""
        if self._attribute_types is None:
            return dict(attributes)
        kept: dict[str, Any] = {}
        for name, value in attributes.items():
            kind = self._attribute_types.get(name)
            if kind is None:
                continue
            if kind == "text" and isinstance(value, str):
                kept[name] = value
            elif (
                kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool)
            ):
                kept[name] = value
            elif kind == "boolean" and isinstance(value, bool):
                kept[name] = value
            elif (
                kind == "date"
                and isinstance(value, str)
                and re.match(r"^\d{4}-\d{2}-\d{2}$", value)
            ):
                kept[name] = value
            elif kind == "category" and (isinstance(value, str) or _is_int(value)):
                kept[name] = value
        return kept

    def _known_lists(self, list_ids: Iterable[int]) -> bool:
        if not self._strict_lists:
            for list_id in list_ids:
                self._lists.setdefault(list_id, {"id": list_id, "name": f"List {list_id}"})
                self._next_list_id = max(self._next_list_id, list_id + 1)
            return True
        return all(list_id in self._lists for list_id in list_ids)

    def _create_contact(
        self, email: str, attributes: dict[str, Any], list_ids: list[int]
    ) -> dict[str, Any]:
        self._known_lists(list_ids)
        now = self._stamp()
        key = email.lower()
        contact_id = self._next_contact_id
        record: dict[str, Any] = {
            "id": contact_id,
            "email": key,
            "emailBlacklisted": False,
            "smsBlacklisted": False,
            "createdAt": now,
            "modifiedAt": now,
            "attributes": self._clean_attributes(attributes),
            "listIds": set(list_ids),
            "listUnsubscribed": set(),
        }
        self._next_contact_id += 1
        self._contacts[key] = record
        self._email_by_id[contact_id] = key
        return record

    def _lookup(self, identifier: str, query: str) -> dict[str, Any] | None:
        value = unquote(identifier)
        kinds = parse_qs(query).get("identifierType")
        kind = kinds[0] if kinds else None
        if kind == "contact_id" or (kind is None and value.isdigit()):
            email = self._email_by_id.get(int(value)) if value.isdigit() else None
            return self._contacts.get(email) if email else None
        return self._contacts.get(value.lower())

    @staticmethod
    def _list_ids(body: Mapping[str, Any], key: str) -> list[int] | None:
        value = body.get(key, [])
        if not isinstance(value, list) or not all(_is_int(v) and v > 0 for v in value):
            return None
        return list(value)

    def _create_contact_op(self, body: Any) -> _Outcome:
        if not isinstance(body, dict):
            return _Outcome(400, _error("bad_request", "Input must be a valid JSON object"))
        email = body.get("email")
        if email is None:
            return _Outcome(400, _error("missing_parameter", "email is missing"))
        if not _valid_email(email):
            return _Outcome(400, _error("invalid_parameter", "Invalid email address"))
        list_ids = self._list_ids(body, "listIds")
        if list_ids is None:
            return _Outcome(400, _error("invalid_parameter", "listIds should be an array of ids"))
        attributes = body.get("attributes", {})
        if not isinstance(attributes, dict):
            return _Outcome(400, _error("invalid_parameter", "attributes should be an object"))
        if not self._known_lists(list_ids):
            return _Outcome(400, _error("invalid_parameter", "listIds contain an unknown list"))
        existing = self._contacts.get(email.lower())
        if existing is None:
            record = self._create_contact(email, attributes, list_ids)
            self._apply_blacklist_flags(record, body)
            return _Outcome(201, {"id": record["id"]})
        if body.get("updateEnabled") is not True:
            return _Outcome(
                400,
                _error(
                    "duplicate_parameter",
                    "Unable to create contact, email is already associated with another Contact",
                    metadata={"duplicate_identifiers": ["email"]},
                ),
            )
        existing["attributes"].update(self._clean_attributes(attributes))
        existing["listIds"].update(list_ids)
        self._resubscribe(existing, list_ids)
        self._apply_blacklist_flags(existing, body)
        existing["modifiedAt"] = self._stamp()
        return _Outcome(204)

    @staticmethod
    def _resubscribe(record: dict[str, Any], list_ids: Iterable[int]) -> None:
        # Assumed, and the harm the funnels must never cause: naming a list again for a
        # contact who unsubscribed from it subscribes them to it again.
        record["listUnsubscribed"].difference_update(list_ids)

    @staticmethod
    def _apply_blacklist_flags(record: dict[str, Any], body: Mapping[str, Any]) -> None:
        # Reproduced faithfully so that a client sending emailBlacklisted=false
        # visibly re-subscribes someone in tests.
        for flag in ("emailBlacklisted", "smsBlacklisted"):
            if isinstance(body.get(flag), bool):
                record[flag] = body[flag]

    def _get_contact_op(self, identifier: str, query: str) -> _Outcome:
        record = self._lookup(identifier, query)
        if record is None:
            return _Outcome(404, _error("document_not_found", "Contact does not exist"))
        public = self._public_contact(record)
        public["statistics"] = {}
        return _Outcome(200, public)

    def _update_contact_op(self, identifier: str, query: str, body: Any) -> _Outcome:
        if not isinstance(body, dict):
            return _Outcome(400, _error("bad_request", "Input must be a valid JSON object"))
        record = self._lookup(identifier, query)
        if record is None:
            return _Outcome(404, _error("document_not_found", "Contact does not exist"))
        attributes = body.get("attributes", {})
        if not isinstance(attributes, dict):
            return _Outcome(400, _error("invalid_parameter", "attributes should be an object"))
        list_ids = self._list_ids(body, "listIds")
        unlink_ids = self._list_ids(body, "unlinkListIds")
        if list_ids is None or unlink_ids is None:
            return _Outcome(400, _error("invalid_parameter", "list ids should be arrays of ids"))
        if not self._known_lists(list_ids):
            return _Outcome(400, _error("invalid_parameter", "listIds contain an unknown list"))
        attributes = dict(attributes)
        new_email = attributes.pop("EMAIL", None)
        if new_email is not None:
            if not _valid_email(new_email):
                return _Outcome(400, _error("invalid_parameter", "Invalid email address"))
            new_key = new_email.lower()
            if new_key != record["email"] and new_key in self._contacts:
                return _Outcome(
                    400,
                    _error(
                        "duplicate_parameter",
                        "email is already associated with another Contact",
                        metadata={"duplicate_identifiers": ["email"]},
                    ),
                )
            del self._contacts[record["email"]]
            record["email"] = new_key
            self._contacts[new_key] = record
            self._email_by_id[record["id"]] = new_key
        record["attributes"].update(self._clean_attributes(attributes))
        record["listIds"].update(list_ids)
        self._resubscribe(record, list_ids)
        record["listIds"].difference_update(unlink_ids)
        self._apply_blacklist_flags(record, body)
        record["modifiedAt"] = self._stamp()
        return _Outcome(204)

    def _delete_contact_op(self, identifier: str, query: str) -> _Outcome:
        record = self._lookup(identifier, query)
        if record is None:
            return _Outcome(404, _error("document_not_found", "Contact does not exist"))
        del self._contacts[record["email"]]
        del self._email_by_id[record["id"]]
        return _Outcome(204)

    def _list_add_op(self, list_id: int, body: Any) -> _Outcome:
        if self._strict_lists and list_id not in self._lists:
            return _Outcome(404, _error("document_not_found", "List ID does not exist"))
        if not isinstance(body, dict):
            return _Outcome(400, _error("bad_request", "Input must be a valid JSON object"))
        keys = [k for k in ("emails", "ids", "extIds") if k in body]
        if len(keys) != 1:
            return _Outcome(
                400, _error("missing_parameter", "Pass exactly one of emails, ids or extIds")
            )
        items = body[keys[0]]
        if not isinstance(items, list) or not items:
            return _Outcome(
                400, _error("missing_parameter", f"{keys[0]} must be a non-empty array")
            )
        if len(items) > LIST_ADD_MAX:
            return _Outcome(
                400,
                _error(
                    "invalid_parameter",
                    f"You can add a maximum of {LIST_ADD_MAX} contacts per request",
                ),
            )
        self._known_lists([list_id])
        success: list[Any] = []
        failure: list[Any] = []
        for item in items:
            record: dict[str, Any] | None = None
            if keys[0] == "emails" and isinstance(item, str):
                record = self._contacts.get(item.lower())
            elif keys[0] == "ids" and _is_int(item):
                email = self._email_by_id.get(item)
                record = self._contacts.get(email) if email else None
            if record is None or list_id in record["listIds"]:
                failure.append(item)
                continue
            record["listIds"].add(list_id)
            record["modifiedAt"] = self._stamp()
            success.append(item)
        if not success:
            return _Outcome(
                400,
                _error("invalid_parameter", "Contact already in list and/or does not exist"),
            )
        return _Outcome(201, {"contacts": {"success": success, "failure": failure}})

    def _import_op(self, body: Any, fail: bool) -> _Outcome:
        if not isinstance(body, dict):
            return _Outcome(400, _error("bad_request", "Input must be a valid JSON object"))
        if "fileUrl" in body or "fileBody" in body:
            return _Outcome(
                400, _error("invalid_parameter", "the fake Brevo only supports jsonBody imports")
            )
        items = body.get("jsonBody")
        if not isinstance(items, list) or not items:
            return _Outcome(400, _error("missing_parameter", "jsonBody is missing or empty"))
        if len(json.dumps(items, separators=(",", ":"))) > MAX_BODY_BYTES:
            return _Outcome(
                400, _error("invalid_parameter", "Maximum allowed json body size is 10MB")
            )
        list_ids = self._list_ids(body, "listIds")
        if list_ids is None:
            return _Outcome(400, _error("invalid_parameter", "listIds should be an array of ids"))
        new_list = body.get("newList")
        if not list_ids and not isinstance(new_list, dict):
            return _Outcome(400, _error("missing_parameter", "listIds or newList is required"))
        if not self._known_lists(list_ids):
            return _Outcome(400, _error("invalid_parameter", "listIds contain an unknown list"))
        if isinstance(new_list, dict):
            list_ids.append(self.add_list(name=str(new_list.get("listName") or "Import")))
        process_id = self._next_process_id
        self._next_process_id += 1
        self._processes[process_id] = {
            "id": process_id,
            "name": "IMPORTUSER",
            "status": "queued",
            "started": time.monotonic(),
            "items": items,
            "list_ids": list_ids,
            "update_existing": body.get("updateExistingContacts", True) is not False,
            "empty_attributes": body.get("emptyContactsAttributes", False) is True,
            "email_blacklist": body.get("emailBlacklist") is True,
            "fail": fail,
            "done": False,
            "imported": 0,
            "invalid": 0,
        }
        self._advance_imports()
        return _Outcome(202, {"processId": process_id})

    def _advance_imports(self) -> None:
        now = time.monotonic()
        for process in self._processes.values():
            if process["done"]:
                continue
            elapsed = now - process["started"]
            if elapsed < self.import_delay:
                process["status"] = "queued" if elapsed < self.import_delay / 2 else "in_process"
                continue
            process["done"] = True
            if process["fail"]:
                process["status"] = "failed"
                continue
            self._apply_import(process)
            process["status"] = "completed"

    def _apply_import(self, process: dict[str, Any]) -> None:
        for item in process.pop("items"):
            email = item.get("email") if isinstance(item, dict) else None
            if not _valid_email(email):
                process["invalid"] += 1
                continue
            attributes = item.get("attributes") or {}
            if not isinstance(attributes, dict):
                attributes = {}
            record = self._contacts.get(email.lower())
            if record is None:
                record = self._create_contact(
                    email,
                    {k: v for k, v in attributes.items() if not _is_empty(v)},
                    process["list_ids"],
                )
            else:
                if process["update_existing"]:
                    self._import_attributes(
                        record, attributes, erase_empty=process["empty_attributes"]
                    )
                record["listIds"].update(process["list_ids"])
                self._resubscribe(record, process["list_ids"])
                record["modifiedAt"] = self._stamp()
            if process["email_blacklist"]:
                record["emailBlacklisted"] = True
            process["imported"] += 1

    def _import_attributes(
        self, record: dict[str, Any], attributes: Mapping[str, Any], *, erase_empty: bool
    ) -> None:
        """An import row's attributes on an existing contact. The description's one way to
        clear a value: `emptyContactsAttributes: true` and the attribute sent empty (`""`;
        JSON `null` too). Without the flag an empty value leaves the data alone. An empty
        value is not "of the wrong type": it is checked before the type, so that clearing a
        date or a number works; an attribute the account does not have is still ignored."""
        values: dict[str, Any] = {}
        for name, value in attributes.items():
            if _is_empty(value):
                if erase_empty and self._attribute_known(name):
                    record["attributes"].pop(name, None)
                continue
            values[name] = value
        record["attributes"].update(self._clean_attributes(values))

    def _attribute_known(self, name: str) -> bool:
        return self._attribute_types is None or name in self._attribute_types

    def _public_process(self, process: dict[str, Any]) -> dict[str, Any]:
        return {"id": process["id"], "status": process["status"], "name": process["name"]}

    def _list_summary(self, list_id: int) -> dict[str, Any]:
        stored = self._lists[list_id]
        members = [c for c in self._contacts.values() if list_id in c["listIds"]]
        blacklisted = sum(1 for c in members if c["emailBlacklisted"])
        # The description calls totalSubscribers "contacts in the list"; its examples have
        # uniqueSubscribers = totalSubscribers + totalBlacklisted, as if the blacklisted
        # were left out of it. The fake answers the first way unless a test asks for the
        # second (set_list_sizes), so the audit is tested under both readings.
        subscribers = len(members) - (blacklisted if self._sizes_exclude_blacklisted else 0)
        return {
            "id": list_id, "name": stored.get("name", f"List {list_id}"), "folderId": 1,
            "totalBlacklisted": blacklisted, "totalSubscribers": subscribers,
            "uniqueSubscribers": len(members),
        }

    def _get_list_op(self, list_id: int) -> _Outcome:
        # Without a fixed set of lists (strict_lists off) every list exists, as for writes.
        if not self._known_lists([list_id]):
            return _Outcome(404, _error("document_not_found", "List ID does not exist"))
        return _Outcome(200, {**self._list_summary(list_id), "createdAt": self._stamp()})

    def _lists_op(self, query: str) -> _Outcome:
        """GET /contacts/lists: every list the fake knows (those created by use too, when
        the lists are not fixed), in creation order (the id grows with creation), with
        the same sizes as GET /contacts/lists/{id}; count is all lists, not the page."""
        paging = _paging(query, default_limit=10, max_limit=LISTS_MAX)
        if isinstance(paging, _Outcome):
            return paging
        limit, offset, sort = paging
        ids = sorted(self._lists, reverse=sort == "desc")
        page = ids[offset : offset + limit]
        return _Outcome(
            200, {"lists": [self._list_summary(i) for i in page], "count": len(ids)}
        )

    def _contacts_op(self, query: str) -> _Outcome:
        """GET /contacts: the account's contacts, filtered by listIds (a contact in any
        of them: the parameter is an array, sent listIds=1&listIds=2 per the description's
        form style), modifiedSince and createdSince; count is the number that match.
        segmentId and filter are not implemented and refused, so that no test can pass on
        a filter the fake ignored; a list the account does not have is refused too (400,
        the error this operation declares)."""
        paging = _paging(query, default_limit=50, max_limit=CONTACTS_MAX)
        if isinstance(paging, _Outcome):
            return paging
        limit, offset, sort = paging
        values = parse_qs(query)
        for unsupported in ("segmentId", "filter"):
            if unsupported in values:
                return _Outcome(400, _error(
                    "invalid_parameter", f"{unsupported} is not implemented by the fake"
                ))
        try:
            list_ids = {int(v) for v in values.get("listIds", [])}
        except ValueError:
            return _Outcome(400, _error("invalid_parameter", "listIds must be integers"))
        if self._strict_lists and not all(i in self._lists for i in list_ids):
            return _Outcome(400, _error("invalid_parameter", "List ID does not exist"))
        bounds: dict[str, datetime] = {}
        for name in ("modifiedSince", "createdSince"):
            if name in values:
                moment = _parse_moment(values[name][-1])
                if moment is None:
                    return _Outcome(400, _error("invalid_parameter", f"{name} is not a date-time"))
                bounds[name] = moment
        found = [
            c for c in self._contacts.values()
            if (not list_ids or list_ids & c["listIds"])
            and _after(c["modifiedAt"], bounds.get("modifiedSince"))
            and _after(c["createdAt"], bounds.get("createdSince"))
        ]
        return self._contacts_page(found, limit=limit, offset=offset, sort=sort)

    def _contacts_page(
        self, found: list[dict[str, Any]], *, limit: int, offset: int, sort: str
    ) -> _Outcome:
        """One page of `found` in the order of record creation (the id grows with it),
        and the number found."""
        found = sorted(found, key=lambda c: c["id"], reverse=sort == "desc")
        page = found[offset : offset + limit]
        return _Outcome(
            200, {"contacts": [self._public_contact(c) for c in page], "count": len(found)}
        )

    def _list_contacts_op(self, list_id: int, query: str) -> _Outcome:
        if not self._known_lists([list_id]):
            return _Outcome(404, _error("document_not_found", "List ID does not exist"))
        paging = _paging(query, default_limit=50, max_limit=LIST_CONTACTS_MAX)
        if isinstance(paging, _Outcome):
            return paging
        limit, offset, sort = paging
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        since = None
        if "modifiedSince" in params:
            since = _parse_moment(params["modifiedSince"])
            if since is None:
                return _Outcome(400, _error("invalid_parameter", "modifiedSince is not a date-time"))
        members = [
            c for c in self._contacts.values()
            if list_id in c["listIds"] and _after(c["modifiedAt"], since)
        ]
        return self._contacts_page(members, limit=limit, offset=offset, sort=sort)

    def _get_process_op(self, process_id: int) -> _Outcome:
        process = self._processes.get(process_id)
        if process is None:
            return _Outcome(404, _error("invalid_parameter", "processId is invalid"))
        return _Outcome(200, self._public_process(process))


class _BodyTooLarge(Exception):
    pass


_INVALID = object()

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/v3/contacts$"), "createContact"),
    ("POST", re.compile(r"^/v3/contacts/import$"), "importContacts"),
    ("POST", re.compile(r"^/v3/contacts/lists/(?P<listId>\d+)/contacts/add$"), "addContactToList"),
    ("GET", re.compile(r"^/v3/contacts$"), "getContacts"),
    # Before getContactInfo, whose {identifier} would otherwise take "lists".
    ("GET", re.compile(r"^/v3/contacts/lists$"), "getLists"),
    ("GET", re.compile(r"^/v3/contacts/lists/(?P<listId>\d+)$"), "getList"),
    ("GET", re.compile(r"^/v3/contacts/lists/(?P<listId>\d+)/contacts$"), "getContactsFromList"),
    ("GET", re.compile(r"^/v3/contacts/(?P<identifier>[^/]+)$"), "getContactInfo"),
    ("PUT", re.compile(r"^/v3/contacts/(?P<identifier>[^/]+)$"), "updateContact"),
    ("DELETE", re.compile(r"^/v3/contacts/(?P<identifier>[^/]+)$"), "deleteContact"),
    ("GET", re.compile(r"^/v3/processes/(?P<processId>\d+)$"), "getProcess"),
]


def _route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for route_method, pattern, name in _ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return name, match.groupdict()
    return None


def _emails_in(path: str, body: Any) -> set[str]:
    """Every address a request is about, so faults can target one contact."""
    found: set[str] = set()
    tail = unquote(path.rsplit("/", 1)[-1])
    if "@" in tail:
        found.add(tail.lower())
    if isinstance(body, dict):
        if isinstance(body.get("email"), str):
            found.add(body["email"].lower())
        for email in body.get("emails") or []:
            if isinstance(email, str):
                found.add(email.lower())
        for item in body.get("jsonBody") or []:
            if isinstance(item, dict) and isinstance(item.get("email"), str):
                found.add(item["email"].lower())
    return found


# ------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fake_brevo.server", description="Run the fake Brevo API v3 server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each call")
    parser.add_argument("--rps", type=float, default=10, help="contacts requests per second")
    parser.add_argument("--rph", type=int, default=36_000, help="contacts requests per hour")
    parser.add_argument(
        "--process-rph", type=int, default=100, help="GET /processes calls per hour (0: no limit)"
    )
    parser.add_argument("--import-delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    fake = FakeBrevo(
        api_key=args.api_key,
        requests_per_second=args.rps or None,
        latency=args.latency,
        import_delay=args.import_delay,
        host=args.host,
        port=args.port,
        requests_per_hour=args.rph or None,
        process_requests_per_hour=args.process_rph or None,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    fake.start()
    print(f"fake Brevo listening on {fake.base_url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
