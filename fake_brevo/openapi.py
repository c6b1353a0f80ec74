"""Brevo's published OpenAPI description, fixed so a validator accepts it.

The file in ``shared/brevo`` is left untouched; the four mechanical fixes that
``shared/brevo/README.md`` lists are applied in memory when it is loaded:

1. response codes are YAML integers: make them strings;
2. unquoted example dates would load as ``datetime``: load timestamps as text;
3. ``content: {}`` on bodiless responses would demand a body: drop it;
4. ambiguous ``oneOf`` branches (list add/remove by emails/ids/extIds) get
   ``required: [their key]``; every other ``oneOf`` becomes ``anyOf``.

The remaining spec-validator complaints are outside contacts, lists,
processes and events, so openapi-core is built with spec validation off.
Used by tests to check that the client and the fake stay on Brevo's contract.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

import yaml
from jsonschema import Draft4Validator
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

__all__ = [
    "BREVO_HOST_URL",
    "ExchangeValidation",
    "FixReport",
    "default_openapi_path",
    "find_operation",
    "fixed_description",
    "get_openapi",
    "load_fixed_description",
    "request_body_schema",
    "unknown_request_fields",
    "validate_exchange",
    "validate_logged",
]

OPENAPI_FILENAME = "brevo-api-v3.openapi-3.0.1.yml"
# The description declares this single server; requests are re-homed onto it
# so that a capture from the loopback fake matches the description's paths.
BREVO_HOST_URL = "https://api.brevo.com"
BREVO_BASE_PATH = "/v3"

# The list add/remove request bodies: each branch holds one key and, without
# `required`, `{"emails": [...]}` would match every branch of the oneOf.
_AMBIGUOUS_BRANCH_PREFIXES = ("addContactToListBy", "removeContactFromListBy")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"

# Brevo answers 401 and 429 on operations that do not declare them; their
# bodies are still Brevo's {"code", "message"} error shape, which is what we
# can check. The code enum is left open: 429's "too_many_requests" is not in it.
_UNDECLARED_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}


def default_openapi_path() -> Path:
    override = os.environ.get("BREVO_OPENAPI_PATH")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "brevo" / OPENAPI_FILENAME


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TextTimestampLoader(_BaseLoader):  # type: ignore[misc]
    """Safe loader that leaves dates as the strings JSON would carry."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }


@dataclass
class FixReport:
    response_codes_stringified: int = 0
    empty_contents_removed: int = 0
    oneof_branches_required: list[str] = field(default_factory=list)
    oneof_turned_anyof: int = 0


def load_fixed_description(*, path: Path | None = None) -> tuple[dict[str, Any], FixReport]:
    """Load the YAML and apply the four fixes; a fresh dict on every call."""
    source = Path(path) if path is not None else default_openapi_path()
    with source.open("rb") as handle:
        document = yaml.load(handle, Loader=_TextTimestampLoader)  # noqa: S506 - safe loader subclass
    report = FixReport()
    _fix_responses(document, report)
    _fix_one_of(document, report)
    return document, report


@lru_cache(maxsize=4)
def _cached_description(path: str) -> tuple[dict[str, Any], FixReport]:
    return load_fixed_description(path=Path(path))


def fixed_description(*, path: Path | None = None) -> dict[str, Any]:
    """Cached fixed description. Shared: treat it as read-only."""
    return _cached_description(str(path or default_openapi_path()))[0]


def fix_report(*, path: Path | None = None) -> FixReport:
    return _cached_description(str(path or default_openapi_path()))[1]


@lru_cache(maxsize=4)
def _cached_openapi(path: str) -> OpenAPI:
    # A separate copy: openapi-core keeps references into the dict it is given.
    document, _ = load_fixed_description(path=Path(path))
    return OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))


def get_openapi(*, path: Path | None = None) -> OpenAPI:
    """Cached openapi-core ``OpenAPI`` for the fixed description."""
    return _cached_openapi(str(path or default_openapi_path()))


# ---------------------------------------------------------------- the fixes


def _fix_responses(node: Any, report: FixReport) -> None:
    if isinstance(node, dict):
        for key in list(node):
            value = node[key]
            if key == "responses" and isinstance(value, dict):
                for code in list(value):
                    response = value.pop(code)
                    if not isinstance(code, str):
                        report.response_codes_stringified += 1
                    if isinstance(response, dict) and response.get("content") == {}:
                        del response["content"]
                        report.empty_contents_removed += 1
                    value[str(code)] = response
            _fix_responses(value, report)
    elif isinstance(node, list):
        for item in node:
            _fix_responses(item, report)


def _fix_one_of(document: dict[str, Any], report: FixReport) -> None:
    schemas = document.get("components", {}).get("schemas", {})

    def branch_name(branch: Any) -> str | None:
        ref = branch.get("$ref") if isinstance(branch, dict) else None
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            return ref.rsplit("/", 1)[-1]
        return None

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            branches = node.get("oneOf")
            if isinstance(branches, list):
                names = [branch_name(b) for b in branches]
                if all(n and n.startswith(_AMBIGUOUS_BRANCH_PREFIXES) for n in names):
                    for name in names:
                        target = schemas[name]
                        keys = list(target.get("properties", {}))
                        if "required" not in target and len(keys) == 1:
                            target["required"] = keys
                            report.oneof_branches_required.append(str(name))
                else:
                    node["anyOf"] = node.pop("oneOf")
                    report.oneof_turned_anyof += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)


# --------------------------------------------------------------- operations


@lru_cache(maxsize=1)
def _path_patterns(path: str) -> list[tuple[str, re.Pattern[str], int]]:
    document = fixed_description(path=Path(path))
    patterns = []
    for template in document["paths"]:
        params = template.count("{")
        regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        patterns.append((template, re.compile(regex), params))
    # Literal segments win over templates (/contacts/import vs /contacts/{identifier}).
    patterns.sort(key=lambda item: item[2])
    return patterns


def find_operation(
    *, method: str, path: str, description_path: Path | None = None
) -> tuple[str, dict[str, Any]] | None:
    """``(path template, operation)`` for a request path such as ``/v3/contacts``."""
    source = str(description_path or default_openapi_path())
    document = fixed_description(path=Path(source))
    relative = path[len(BREVO_BASE_PATH) :] if path.startswith(BREVO_BASE_PATH + "/") else path
    for template, regex, _ in _path_patterns(source):
        if regex.match(relative):
            operation = document["paths"][template].get(method.lower())
            if isinstance(operation, dict):
                return template, operation
    return None


def _resolve(document: Mapping[str, Any], schema: Any) -> Any:
    while isinstance(schema, Mapping) and "$ref" in schema:
        target: Any = document
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def _operation_by_id(document: Mapping[str, Any], operation_id: str) -> dict[str, Any]:
    for item in document["paths"].values():
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                return operation
    raise KeyError(f"no operation {operation_id!r} in the description")


def request_body_schema(*, operation_id: str, path: Path | None = None) -> dict[str, Any]:
    document = fixed_description(path=path)
    operation = _operation_by_id(document, operation_id)
    body = _resolve(document, operation.get("requestBody", {}))
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    return dict(_resolve(document, schema))


def unknown_request_fields(*, operation_id: str, body: Any, path: Path | None = None) -> list[str]:
    """Field names in ``body`` that the operation's request schema does not declare.

    Brevo's schemas allow extra properties, so a misspelt field passes
    validation and is silently ignored by Brevo: this catches it. Free-form maps
    (``attributes``) are not descended into.
    """
    document = fixed_description(path=path)
    return _unknown(document, request_body_schema(operation_id=operation_id, path=path), body, "")


def _unknown(document: Mapping[str, Any], schema: Any, value: Any, where: str) -> list[str]:
    schema = _resolve(document, schema)
    if not isinstance(schema, Mapping):
        return []
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            candidates = [_unknown(document, b, value, where) for b in schema[combinator]]
            return min(candidates, key=len) if candidates else []
    if isinstance(value, Mapping):
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return []
        problems: list[str] = []
        for name, item in value.items():
            dotted = f"{where}.{name}" if where else str(name)
            if name not in properties:
                problems.append(dotted)
            else:
                problems.extend(_unknown(document, properties[name], item, dotted))
        return problems
    if isinstance(value, list) and "items" in schema:
        problems = []
        for index, item in enumerate(value):
            problems.extend(_unknown(document, schema["items"], item, f"{where}[{index}]"))
        return problems
    return []


# --------------------------------------------------------------- validation


class LoggedExchange(Protocol):
    """What :func:`validate_logged` needs; ``FakeBrevo.requests_log`` entries fit."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> str: ...
    @property
    def body(self) -> Any: ...
    @property
    def api_key_sent(self) -> bool: ...
    @property
    def status(self) -> int | None: ...
    @property
    def response_headers(self) -> Mapping[str, str]: ...
    @property
    def response_body(self) -> bytes: ...


@dataclass(frozen=True)
class ExchangeValidation:
    method: str
    path: str
    status: int | None
    operation_id: str | None
    request_errors: tuple[str, ...]
    response_errors: tuple[str, ...]
    response_checked: bool
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.request_errors and not self.response_errors

    def describe(self) -> str:
        lines = [f"{self.method} {self.path} -> {self.status} ({self.operation_id})"]
        lines += [f"  request: {e}" for e in self.request_errors]
        lines += [f"  response: {e}" for e in self.response_errors]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def _error_text(exc: BaseException) -> str:
    """One line per failure: openapi-core's own messages embed the whole value."""
    parts = [type(exc).__name__]
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    details: list[str] = []
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        schema_errors = getattr(cause, "schema_errors", None)
        if schema_errors:
            details.extend(
                f"{getattr(e, 'json_path', '$')}: {_shorten(e.message)}" for e in schema_errors
            )
        cause = cause.__cause__ or cause.__context__
    parts.extend(details or [_shorten(str(exc))])
    return " | ".join(parts)


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def validate_exchange(
    *,
    method: str,
    path: str,
    query: str = "",
    request_body: Any = None,
    api_key_sent: bool = True,
    status: int | None,
    response_headers: Mapping[str, str] | None = None,
    response_body: bytes = b"",
    openapi: OpenAPI | None = None,
) -> ExchangeValidation:
    """Validate one request and its response against the fixed description.

    ``path`` is the request path including ``/v3``. A dropped connection
    (``status=None``) only has its request checked. 401/429 that the
    operation does not declare are checked against Brevo's error shape; other
    undeclared 5xx (proxy pages, injected faults) are reported as unchecked.
    """
    app = openapi or get_openapi()
    found = find_operation(method=method, path=path)
    operation_id = found[1].get("operationId") if found else None
    data = b"" if request_body is None else json.dumps(request_body).encode()
    headers = {"api-key": "redacted"} if api_key_sent else {}
    if data:
        headers["content-type"] = "application/json"
    request = MockRequest(
        BREVO_HOST_URL,
        method,
        path,
        # Pairs, not a dict: an array parameter (listIds=1&listIds=2, the description's
        # form style) keeps every value.
        args=parse_qsl(query),
        headers=headers,
        data=data,
        content_type="application/json",
    )
    request_errors = tuple(_error_text(e) for e in app.iter_request_errors(request))

    if status is None:
        return ExchangeValidation(
            method, path, None, operation_id, request_errors, (), False, "connection dropped"
        )
    response_headers = {k.lower(): v for k, v in (response_headers or {}).items()}
    content_type = response_headers.get("content-type", "application/json").split(";")[0]
    declared = found is not None and (
        str(status) in found[1].get("responses", {}) or "default" in found[1].get("responses", {})
    )
    if found is not None and declared:
        response = MockResponse(
            response_body, status_code=status, headers=response_headers, content_type=content_type
        )
        response_errors = tuple(_error_text(e) for e in app.iter_response_errors(request, response))
        spec_response = _resolve(fixed_description(), found[1]["responses"].get(str(status)) or {})
        if response_body and not spec_response.get("content"):
            # openapi-core ignores a body where none is declared; Brevo's 204s have none.
            response_errors += (f"status {status} declares no body but one was sent",)
        return ExchangeValidation(
            method, path, status, operation_id, request_errors, response_errors, True
        )
    if status in (401, 429) or 400 <= status < 500:
        try:
            payload = json.loads(response_body or b"null")
        except ValueError:
            payload = None
        errors = tuple(
            f"{'/'.join(map(str, e.path))} {e.message}"
            for e in Draft4Validator(_UNDECLARED_ERROR_SCHEMA).iter_errors(payload)
        )
        return ExchangeValidation(
            method,
            path,
            status,
            operation_id,
            request_errors,
            errors,
            True,
            f"status {status} not declared for {operation_id}: checked Brevo's error shape",
        )
    return ExchangeValidation(
        method,
        path,
        status,
        operation_id,
        request_errors,
        (),
        False,
        f"status {status} not declared for {operation_id} (infrastructure fault): not checked",
    )


def validate_logged(entry: LoggedExchange, *, openapi: OpenAPI | None = None) -> ExchangeValidation:
    """:func:`validate_exchange` for one ``FakeBrevo.requests_log`` entry."""
    return validate_exchange(
        method=entry.method,
        path=entry.path,
        query=entry.query,
        request_body=entry.body,
        api_key_sent=entry.api_key_sent,
        status=entry.status,
        response_headers=entry.response_headers,
        response_body=entry.response_body,
        openapi=openapi,
    )
