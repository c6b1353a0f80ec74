"""The fake Brevo itself, driven with plain ``requests`` so it is tested
independently of BrevoClient."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fake_brevo.server import FakeBrevo

pytestmark: list[Any] = []

KEY = "fake-test-key"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeBrevo]:
    with FakeBrevo(api_key=KEY, requests_per_second=1_000) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["api-key"] = KEY
        yield session


def post(http: requests.Session, fake: FakeBrevo, path: str, body: Any) -> requests.Response:
    return http.post(f"{fake.base_url}{path}", json=body, timeout=5)


# -------------------------------------------------------------------- auth


@pytest.mark.parametrize("headers", [{}, {"api-key": "nope"}])
def test_missing_or_wrong_key_is_401(fake: FakeBrevo, headers: dict[str, str]) -> None:
    response = requests.post(
        f"{fake.base_url}/contacts", json={"email": "a@example.com"}, headers=headers, timeout=5
    )
    assert response.status_code == 401
    assert response.json() == {"code": "unauthorized", "message": "Key not found"}
    assert fake.contacts == {}
    (entry,) = fake.requests_log
    assert entry.status == 401
    assert entry.api_key_sent is bool(headers)
    assert "api-key" not in entry.headers


def test_control_endpoints_need_no_key(fake: FakeBrevo) -> None:
    state = requests.get(f"{fake.root_url}/__fake__/state", timeout=5)
    assert state.status_code == 200
    assert state.json()["request_count"] == 0


# -------------------------------------------------------------- rate limits


def test_rate_limit_headers_and_429() -> None:
    with FakeBrevo(api_key=KEY, requests_per_second=5) as fake, requests.Session() as http:
        http.headers["api-key"] = KEY
        started = time.monotonic()
        responses = [
            http.get(f"{fake.base_url}/contacts/x%40example.com", timeout=5) for _ in range(6)
        ]
        if time.monotonic() - started > 0.9:
            pytest.skip("machine too slow to send 6 requests within one second")

    assert [r.status_code for r in responses] == [404] * 5 + [429]
    assert [r.headers["x-sib-ratelimit-remaining"] for r in responses[:5]] == [
        "4",
        "3",
        "2",
        "1",
        "0",
    ]
    assert all(r.headers["x-sib-ratelimit-limit"] == "5" for r in responses)
    limited = responses[-1]
    assert limited.json()["code"] == "too_many_requests"
    assert limited.headers["x-sib-ratelimit-remaining"] == "0"
    assert 1 <= int(limited.headers["x-sib-ratelimit-reset"]) <= 1
    assert "retry-after" not in {k.lower() for k in limited.headers}


def test_rate_limit_window_slides() -> None:
    with FakeBrevo(api_key=KEY, requests_per_second=2) as fake, requests.Session() as http:
        http.headers["api-key"] = KEY
        url = f"{fake.base_url}/contacts/x%40example.com"
        first = [http.get(url, timeout=5).status_code for _ in range(3)]
        time.sleep(1.05)
        after = http.get(url, timeout=5).status_code
    assert first == [404, 404, 429]
    assert after == 404


def test_processes_have_an_hourly_limit() -> None:
    with FakeBrevo(api_key=KEY, process_requests_per_hour=3) as fake, requests.Session() as http:
        http.headers["api-key"] = KEY
        statuses = [http.get(f"{fake.base_url}/processes/1", timeout=5) for _ in range(4)]
    assert [r.status_code for r in statuses] == [404, 404, 404, 429]
    assert int(statuses[-1].headers["x-sib-ratelimit-reset"]) > 3_000
    assert statuses[0].headers["x-sib-ratelimit-limit"] == "3"


# ---------------------------------------------------------------- contacts


def test_create_update_duplicate_and_invalid(fake: FakeBrevo, http: requests.Session) -> None:
    created = post(http, fake, "/contacts", {"email": "A@Example.com", "attributes": {"X": 1}})
    updated = post(
        http,
        fake,
        "/contacts",
        {"email": "a@example.com", "attributes": {"Y": 2}, "listIds": [3], "updateEnabled": True},
    )
    duplicate = post(http, fake, "/contacts", {"email": "a@example.com"})
    invalid = post(http, fake, "/contacts", {"email": "nope", "updateEnabled": True})
    missing = post(http, fake, "/contacts", {"attributes": {}})

    assert created.status_code == 201 and created.json() == {"id": 1}
    assert updated.status_code == 204 and updated.content == b""
    assert duplicate.status_code == 400
    assert duplicate.json()["code"] == "duplicate_parameter"
    assert duplicate.json()["metadata"] == {"duplicate_identifiers": ["email"]}
    assert invalid.status_code == 400 and invalid.json()["code"] == "invalid_parameter"
    assert missing.status_code == 400 and missing.json()["code"] == "missing_parameter"
    contact = fake.contact("a@example.com")
    assert contact is not None
    assert contact["attributes"] == {"X": 1, "Y": 2}
    assert contact["listIds"] == [3]
    assert len(fake.contacts) == 1


def test_get_put_delete_contact(fake: FakeBrevo, http: requests.Session) -> None:
    contact_id = fake.seed_contact(email="p+q@example.com", attributes={"A": "1"}, list_ids=[1, 2])
    url = f"{fake.base_url}/contacts/p%2Bq%40example.com"

    got = http.get(url, timeout=5)
    by_id = http.get(f"{fake.base_url}/contacts/{contact_id}", timeout=5)
    put = http.put(url, json={"attributes": {"B": 2}, "unlinkListIds": [1]}, timeout=5)
    renamed = http.put(url, json={"attributes": {"EMAIL": "new@example.com"}}, timeout=5)
    gone = http.get(url, timeout=5)
    deleted = http.delete(f"{fake.base_url}/contacts/new%40example.com", timeout=5)

    assert got.status_code == 200
    body = got.json()
    assert body["email"] == "p+q@example.com"
    assert body["listIds"] == [1, 2]
    assert body["statistics"] == {}
    assert body["emailBlacklisted"] is False
    assert by_id.json()["email"] == "p+q@example.com"
    assert put.status_code == 204
    assert renamed.status_code == 204
    assert gone.status_code == 404 and gone.json()["code"] == "document_not_found"
    assert deleted.status_code == 204
    assert fake.contacts == {}


def test_attribute_types_drop_unknown_and_mistyped_silently() -> None:
    with FakeBrevo(api_key=KEY, attribute_types={"FIRSTNAME": "text", "AGE": "number"}) as fake:
        response = requests.post(
            f"{fake.base_url}/contacts",
            json={
                "email": "t@example.com",
                "attributes": {"FIRSTNAME": "T", "AGE": "x", "firstname": "t"},
            },
            headers={"api-key": KEY},
            timeout=5,
        )
        assert response.status_code == 201
        assert fake.contact("t@example.com")["attributes"] == {"FIRSTNAME": "T"}  # type: ignore[index]


# ------------------------------------------------------------------- lists


def test_list_add_rules(fake: FakeBrevo, http: requests.Session) -> None:
    fake.seed_contact(email="a@example.com")
    fake.seed_contact(email="b@example.com", list_ids=[7])
    path = "/contacts/lists/7/contacts/add"

    mixed = post(http, fake, path, {"emails": ["a@example.com", "b@example.com", "c@example.com"]})
    again = post(http, fake, path, {"emails": ["a@example.com"]})
    too_many = post(http, fake, path, {"emails": [f"x{i}@example.com" for i in range(151)]})
    empty = post(http, fake, path, {"emails": []})

    assert mixed.status_code == 201
    assert mixed.json() == {
        "contacts": {"success": ["a@example.com"], "failure": ["b@example.com", "c@example.com"]}
    }
    assert again.status_code == 400 and again.json()["code"] == "invalid_parameter"
    assert too_many.status_code == 400 and too_many.json()["code"] == "invalid_parameter"
    assert empty.status_code == 400
    assert fake.list_members(7) == {"a@example.com", "b@example.com"}


def test_list_add_by_ids_and_unknown_list() -> None:
    with FakeBrevo(api_key=KEY, lists=[7]) as fake:
        contact_id = fake.seed_contact(email="a@example.com")
        headers = {"api-key": KEY}
        by_ids = requests.post(
            f"{fake.base_url}/contacts/lists/7/contacts/add",
            json={"ids": [contact_id, 999]},
            headers=headers,
            timeout=5,
        )
        unknown = requests.post(
            f"{fake.base_url}/contacts/lists/8/contacts/add",
            json={"emails": ["a@example.com"]},
            headers=headers,
            timeout=5,
        )
    assert by_ids.json() == {"contacts": {"success": [contact_id], "failure": [999]}}
    assert unknown.status_code == 404 and unknown.json()["code"] == "document_not_found"


# ----------------------------------------------------------------- imports


def test_import_process_lifecycle() -> None:
    with FakeBrevo(api_key=KEY, import_delay=0.4) as fake, requests.Session() as http:
        http.headers["api-key"] = KEY
        fake.seed_contact(email="old@example.com", attributes={"KEEP": "yes", "NAME": "Old"})
        accepted = http.post(
            f"{fake.base_url}/contacts/import",
            json={
                "jsonBody": [
                    {"email": "new@example.com", "attributes": {"NAME": "New"}},
                    {"email": "old@example.com", "attributes": {"NAME": "Updated", "KEEP": ""}},
                    {"email": "broken", "attributes": {}},
                ],
                "listIds": [4],
                "updateExistingContacts": True,
                "emptyContactsAttributes": False,
            },
            timeout=5,
        )
        process_id = accepted.json()["processId"]
        url = f"{fake.base_url}/processes/{process_id}"
        statuses = [http.get(url, timeout=5).json()["status"]]
        before = fake.contact("new@example.com")
        time.sleep(0.25)
        statuses.append(http.get(url, timeout=5).json()["status"])
        time.sleep(0.2)
        final = http.get(url, timeout=5).json()
        statuses.append(final["status"])

        assert accepted.status_code == 202
        assert statuses == ["queued", "in_process", "completed"]
        assert final == {"id": process_id, "status": "completed", "name": "IMPORTUSER"}
        assert before is None
        assert fake.list_members(4) == {"new@example.com", "old@example.com"}
        # emptyContactsAttributes=false: an empty value must not wipe data.
        assert fake.contact("old@example.com")["attributes"] == {  # type: ignore[index]
            "KEEP": "yes",
            "NAME": "Updated",
        }
        assert fake.contact("broken") is None


def test_import_applies_after_delay_without_polling() -> None:
    with FakeBrevo(api_key=KEY, import_delay=0.1) as fake:
        requests.post(
            f"{fake.base_url}/contacts/import",
            json={"jsonBody": [{"email": "n@example.com"}], "listIds": [1]},
            headers={"api-key": KEY},
            timeout=5,
        )
        time.sleep(0.15)
        assert fake.list_members(1) == {"n@example.com"}


def test_import_failed_fault_and_errors(fake: FakeBrevo, http: requests.Session) -> None:
    fake.faults.add("import_failed")
    accepted = post(
        http, fake, "/contacts/import", {"jsonBody": [{"email": "f@example.com"}], "listIds": [1]}
    )
    process = http.get(f"{fake.base_url}/processes/{accepted.json()['processId']}", timeout=5)
    no_lists = post(http, fake, "/contacts/import", {"jsonBody": [{"email": "f@example.com"}]})
    no_body = post(http, fake, "/contacts/import", {"listIds": [1]})
    unknown = http.get(f"{fake.base_url}/processes/999", timeout=5)

    assert process.json()["status"] == "failed"
    assert fake.contact("f@example.com") is None
    assert no_lists.status_code == 400 and no_lists.json()["code"] == "missing_parameter"
    assert no_body.status_code == 400
    assert unknown.status_code == 404


# ------------------------------------------------------------------ faults


def test_proxy_524_and_5xx_faults(fake: FakeBrevo, http: requests.Session) -> None:
    fake.faults.add("524")
    fake.faults.add("503")
    fake.faults.add("500")
    responses = [post(http, fake, "/contacts", {"email": "a@example.com"}) for _ in range(4)]

    assert [r.status_code for r in responses] == [524, 503, 500, 201]
    assert responses[0].text == "error code: 524"
    assert responses[0].headers["content-type"] == "text/plain"
    assert responses[1].headers["content-type"] == "text/html"
    assert len(fake.contacts) == 1


def test_drop_before_applies_nothing(fake: FakeBrevo, http: requests.Session) -> None:
    fake.faults.add("drop_before")
    with pytest.raises(requests.ConnectionError):
        post(http, fake, "/contacts", {"email": "a@example.com"})
    assert fake.contacts == {}
    # The connection pool must recover on the next request.
    assert post(http, fake, "/contacts", {"email": "a@example.com"}).status_code == 201


def test_drop_after_applies_the_change(fake: FakeBrevo, http: requests.Session) -> None:
    fake.faults.add("drop_after")
    with pytest.raises(requests.ConnectionError):
        post(http, fake, "/contacts", {"email": "a@example.com"})
    assert list(fake.contacts) == ["a@example.com"]
    assert fake.requests_log[0].status is None
    assert fake.requests_log[0].fault == "drop_after"


def test_slow_fault_exceeds_read_timeout(fake: FakeBrevo, http: requests.Session) -> None:
    fake.faults.add("slow", seconds=0.5)
    with pytest.raises(requests.Timeout):
        http.post(f"{fake.base_url}/contacts", json={"email": "a@example.com"}, timeout=(2, 0.1))


def test_fault_targeting_and_counts(fake: FakeBrevo, http: requests.Session) -> None:
    fake.faults.add("400", email="bad@example.com", count=None)
    fake.faults.add("429", reset=7, path_prefix="/contacts/import", count=2)
    fake.faults.add("401", method="PUT")

    bad = [post(http, fake, "/contacts", {"email": "bad@example.com"}) for _ in range(2)]
    good = post(http, fake, "/contacts", {"email": "good@example.com"})
    imports = [
        post(
            http,
            fake,
            "/contacts/import",
            {"jsonBody": [{"email": "i@example.com"}], "listIds": [1]},
        )
        for _ in range(3)
    ]
    put = http.put(
        f"{fake.base_url}/contacts/good%40example.com", json={"attributes": {}}, timeout=5
    )

    assert [r.status_code for r in bad] == [400, 400]
    assert bad[0].json()["code"] == "invalid_parameter"
    assert good.status_code == 201
    assert [r.status_code for r in imports] == [429, 429, 202]
    assert imports[0].headers["x-sib-ratelimit-reset"] == "7"
    assert put.status_code == 401
    assert [f["kind"] for f in fake.faults.pending()] == ["400"]
    with pytest.raises(ValueError):
        fake.faults.add("418")


def test_latency_is_applied(fake: FakeBrevo, http: requests.Session) -> None:
    fake.set_latency(0.2)
    started = time.monotonic()
    http.get(f"{fake.base_url}/contacts/x%40example.com", timeout=5)
    assert time.monotonic() - started >= 0.2


# ------------------------------------------------------------------- control


def test_http_control_endpoint(fake: FakeBrevo) -> None:
    root = f"{fake.root_url}/__fake__"
    armed = requests.post(f"{root}/faults", json={"kind": "503", "count": 2}, timeout=5)
    rejected = requests.post(f"{root}/faults", json={"kind": "nope"}, timeout=5)
    seeded = requests.post(
        f"{root}/contacts", json={"email": "s@example.com", "listIds": [3]}, timeout=5
    )
    statuses = [
        requests.get(
            f"{fake.base_url}/contacts/s%40example.com", headers={"api-key": KEY}, timeout=5
        ).status_code
        for _ in range(3)
    ]
    state = requests.get(f"{root}/state", timeout=5).json()
    listed = requests.get(f"{root}/requests?since=1", timeout=5).json()["requests"]
    reset = requests.post(f"{root}/reset", timeout=5)
    after = requests.get(f"{root}/state", timeout=5).json()

    assert armed.status_code == 201
    assert rejected.status_code == 400
    assert seeded.status_code == 201
    assert statuses == [503, 503, 200]
    assert state["lists"] == {"3": ["s@example.com"]}
    assert state["status_counts"] == {"503": 2, "200": 1}
    assert state["email_blacklisted_requests"] == []
    assert [r["seq"] for r in listed] == [2, 3]
    assert reset.status_code == 200
    assert after["contacts"] == [] and after["request_count"] == 0 and after["faults"] == []


def test_cli_runs_in_foreground() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fake_brevo.server",
            "--port",
            "0",
            "--api-key",
            "cli-key",
            "--rps",
            "50",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"fake Brevo listening on (http://127\.0\.0\.1:\d+/v3)\n", line)
        assert match, line
        base_url = match.group(1)
        created = requests.post(
            f"{base_url}/contacts",
            json={"email": "c@example.com"},
            headers={"api-key": "cli-key"},
            timeout=5,
        )
        state = requests.get(base_url.replace("/v3", "/__fake__/state"), timeout=5).json()
        assert created.status_code == 201
        assert [c["email"] for c in state["contacts"]] == ["c@example.com"]
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


# -------------------------------------------------------------- robustness


def test_keep_alive_and_concurrency(fake: FakeBrevo) -> None:
    errors: list[BaseException] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(worker_id: int) -> None:
        try:
            with requests.Session() as http:
                http.headers["api-key"] = KEY
                for i in range(150):
                    r = http.post(
                        f"{fake.base_url}/contacts",
                        json={"email": f"w{worker_id}-{i % 50}@example.com", "updateEnabled": True},
                        timeout=5,
                    )
                    with lock:
                        statuses.append(r.status_code)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(statuses) == 600
    assert sorted(set(statuses)) == [201, 204]
    assert statuses.count(201) == 200
    assert len(fake.contacts) == 200
    assert time.monotonic() - started < 15


def test_stop_does_not_hang_on_open_keep_alive_connection() -> None:
    fake = FakeBrevo(api_key=KEY).start()
    http = requests.Session()
    http.get(f"{fake.base_url}/contacts/x%40example.com", headers={"api-key": KEY}, timeout=5)
    started = time.monotonic()
    fake.stop()
    http.close()
    assert time.monotonic() - started < 2


def test_requests_log_hides_the_key_and_keeps_bodies(
    fake: FakeBrevo, http: requests.Session
) -> None:
    post(http, fake, "/contacts", {"email": "l@example.com", "attributes": {"A": 1}})
    (entry,) = fake.requests_log
    assert entry.method == "POST" and entry.path == "/v3/contacts"
    assert entry.operation == "createContact"
    assert entry.body == {"email": "l@example.com", "attributes": {"A": 1}}
    assert entry.response_json == {"id": 1}
    assert KEY not in repr(entry)
