"""Property: whatever JSON or text a client sends, every endpoint answers without a 5xx, and every
4xx is a problem+json document.

Strings include lone surrogates, NUL and U+FFFD; numbers include thousands of digits, 1e400 and
NaN; values include JSON nested deeper than any parser goes. One app serves all the examples of
a test (hence the suppressed function-scoped-fixture check); no example database is written.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.test_bad_input import _edit, _valid_bodies, assert_problem
from tests.conftest import Caller

FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Raw(str):
    """JSON text placed as it is: what `json.dumps` cannot write (huge integers, deep nesting)."""


def encode(value: Any, escaped: bool) -> bytes:
    """JSON for `value`, each Raw placed verbatim; unescaped, a lone surrogate is raw bytes."""
    return _text(value, escaped).encode("utf-8", "surrogatepass")


def _text(value: Any, escaped: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        pairs = (f"{_text(k, escaped)}:{_text(v, escaped)}" for k, v in value.items())
        return "{" + ",".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v, escaped) for v in value) + "]"
    return json.dumps(value, ensure_ascii=escaped)


def holds_bad_text(value: Any, escaped: bool = False) -> bool:
    """Whether a string anywhere in `value` (keys too) holds NUL or a lone surrogate, as the
    server reads it: escaped, a high surrogate followed by a low one is a JSON escape pair
    (`\\ud800\\udc00`), which is one valid character."""
    if isinstance(value, str) and not isinstance(value, Raw):
        if escaped:
            value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(
            holds_bad_text(k, escaped) or holds_bad_text(v, escaped) for k, v in value.items()
        )
    return isinstance(value, list) and any(holds_bad_text(v, escaped) for v in value)


# st.text() would merge these alphabets and drop the surrogates: join a list of characters
CHARACTERS = (
    st.characters()
    | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    | st.sampled_from(["\x00", "\ufffd", "/", " ", "."])
)
TEXT = st.text(max_size=24) | st.lists(CHARACTERS, max_size=24).map("".join)
EDGE_DATES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59+00:00",
    "2026-01-01T00:00:00",
]


def _with_offset(moment: datetime, minutes: int) -> str:
    return moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat()


DATES = st.sampled_from(EDGE_DATES) | st.builds(
    _with_offset, st.datetimes(), st.integers(-14 * 60, 14 * 60)
)
# sizes at the limits are drawn as often as any other, so every run meets them
HUGE = st.builds(
    lambda sign, n: Raw(sign + "9" * n),
    st.sampled_from(["", "-"]),
    st.sampled_from([19, 20, 400, 4301, 6000]) | st.integers(19, 6000),
)
SPECIAL = st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "-0", "1E-400"])
DEEP = st.builds(
    lambda n, brackets: Raw(brackets[0] * n + "1" + brackets[1] * n),
    st.sampled_from([900, 1100, 50_000]) | st.integers(2, 3000),
    st.sampled_from([("[", "]"), ('{"a":', "}")]),
)
NUMBERS = st.integers() | st.floats() | HUGE | SPECIAL.map(Raw)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT | DATES | DEEP
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every dotted path inside a JSON value (the object itself is the empty path)."""
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    found = [prefix]
    for key, inner in items:
        found += _paths(inner, f"{prefix}.{key}" if prefix else str(key))
    return found


def _at(value: Any, path: str) -> Any:
    """The value at a dotted path ("" is `value` itself)."""
    for part in filter(None, path.split(".")):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _with_key(body: dict[str, Any], path: str, key: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with `key` set to `value` in the object at `path`."""
    edited = copy.deepcopy(body)
    _at(edited, path)[key] = value
    return edited


@st.composite
def bodies(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """A valid body with one value replaced or one key added, or any JSON value at all."""
    kind = draw(st.sampled_from(["replace", "add", "whole"]))
    if kind == "whole":
        return draw(VALUES)
    paths = _paths(valid)
    if kind == "replace":
        return _edit(valid, draw(st.sampled_from([p for p in paths if p])), draw(VALUES))
    objects = [p for p in paths if isinstance(_at(valid, p), dict)]
    return _with_key(valid, draw(st.sampled_from(objects)), draw(TEXT), draw(VALUES))


def url_text(text: str) -> str:
    """`text` percent-encoded as UTF-8 bytes; a lone surrogate becomes the bytes UTF-8 forbids."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def assert_answered(response: Any) -> None:
    """No 5xx; a 4xx is a problem+json naming its fields (assert_problem checks the shape)."""
    status = response.status_code
    assert status < 500, response.get_data(as_text=True)
    if status >= 400:
        assert_problem(response, status)
    response.close()


BODY_ENDPOINTS = {
    **_valid_bodies(),
    "purge": ("POST", "/v1/purges", {"dry_run": True}),
}


@pytest.mark.parametrize("endpoint", list(BODY_ENDPOINTS))
@FUZZ
@given(data=st.data())
def test_any_body_is_answered(admin: Caller, endpoint: str, data: st.DataObject) -> None:
    """And text with NUL or a lone surrogate, escaped or as raw bytes, is never accepted."""
    method, path, valid = BODY_ENDPOINTS[endpoint]
    body = data.draw(bodies(valid))
    escaped = data.draw(st.booleans())
    raw = encode(body, escaped=escaped)
    headers = {"Content-Type": "application/json"}
    response = admin.request(method, path, data=raw, headers=headers)
    status = response.status_code
    assert_answered(response)
    if holds_bad_text(body, escaped):
        assert 400 <= status < 500


SUBJECT_ROUTES = [
    ("PUT", "/v1/subjects/{}/consents/{}", "consent"),
    ("GET", "/v1/subjects/{}/consents", None),
    ("PUT", "/v1/subjects/{}/consents", "tcf"),
    ("GET", "/v1/subjects/{}/consents/{}", None),
    ("POST", "/v1/subjects/{}/events", "events"),
    ("PATCH", "/v1/subjects/{}/attributes", "attributes"),
    ("GET", "/v1/subjects/{}/export", None),
    ("DELETE", "/v1/subjects/{}", None),
]


@FUZZ
@given(
    route=st.sampled_from(SUBJECT_ROUTES),
    subject=TEXT,
    purpose=st.sampled_from(["recommendations"]) | TEXT,
)
def test_any_subject_and_purpose_in_the_path_are_answered(
    admin: Caller, route: tuple[str, str, str | None], subject: str, purpose: str
) -> None:
    """And a subject id with NUL or bytes that are not UTF-8 (read as U+FFFD) is refused."""
    method, template, endpoint = route
    body = _valid_bodies()[endpoint][2] if endpoint else None
    path = template.format(url_text(subject), url_text(purpose))
    response = admin.request(method, path, json=body)
    status = response.status_code
    assert_answered(response)
    if holds_bad_text(subject) or "\ufffd" in subject:
        # refused, or redirected where a '/' in the id made an empty path segment
        assert status in (308, 404, 405, 422), status


@FUZZ
@given(database=TEXT)
def test_any_database_id_in_the_registry_path_is_answered(auditor: Caller, database: str) -> None:
    assert_answered(auditor.get(f"/v1/registry/databases/{url_text(database)}"))


QUERY_NAMES = [
    "subject_id",
    "purpose",
    "action",
    "outcome",
    "client",
    "since",
    "until",
    "limit",
    "cursor",
    "format",
    "explain",
    "recipient",
    "status",
]
QUERY_VALUES = TEXT | DATES | HUGE | SPECIAL | st.integers().map(str)
# one or two arguments, so a bad value is seldom hidden behind another one
QUERIES = st.dictionaries(st.sampled_from(QUERY_NAMES), QUERY_VALUES, min_size=1, max_size=2) | (
    st.dictionaries(TEXT, TEXT, max_size=2)
)
ARGUMENT_PATHS = [
    "/v1/audit/entries",
    "/v1/audit/export",
    "/v1/audit/summary",
    "/v1/purges",
    "/v1/registry/records-of-processing",
    "/v1/deliveries",
]
PLAIN_PATHS = [
    "/v1/audit/verify",
    "/v1/policies",
    "/v1/registry/databases",
    "/v1/registry/recipients",
]


def _query(args: dict[str, str]) -> str:
    return "&".join(f"{url_text(name)}={url_text(value)}" for name, value in args.items())


@settings(FUZZ, max_examples=200)
@given(path=st.sampled_from(ARGUMENT_PATHS), args=QUERIES)
def test_any_query_on_a_read_is_answered(auditor: Caller, path: str, args: dict[str, str]) -> None:
    """And a NUL in any argument is refused (bytes that are not UTF-8 stay escaped text)."""
    response = auditor.get(f"{path}?{_query(args)}")
    status = response.status_code
    assert_answered(response)
    if any("\x00" in name + value for name, value in args.items()):
        assert 400 <= status < 500


@FUZZ
@given(path=st.sampled_from(PLAIN_PATHS), args=QUERIES)
def test_any_query_on_a_read_without_arguments_is_answered(
    auditor: Caller, path: str, args: dict[str, str]
) -> None:
    assert_answered(auditor.get(f"{path}?{_query(args)}"))


@FUZZ
@given(args=QUERIES)
def test_any_query_on_personalize_is_answered(admin: Caller, args: dict[str, str]) -> None:
    _, path, body = _valid_bodies()["personalize"]
    assert_answered(admin.post(f"{path}?{_query(args)}", json=body))


def test_an_escaped_surrogate_pair_is_one_valid_character(admin: Caller) -> None:
    """`\\ud800\\udc00` in JSON is U+10000, not two lone surrogates: it is accepted, while the
    same surrogates as raw bytes (not UTF-8) are refused."""
    method, path, valid = BODY_ENDPOINTS["personalize"]
    body = {**valid, "subject_id": "\ud800\udc00"}
    headers = {"Content-Type": "application/json"}
    for escaped, expected in [(True, 200), (False, 400)]:
        response = admin.request(method, path, data=encode(body, escaped), headers=headers)
        assert response.status_code == expected, response.get_json()
