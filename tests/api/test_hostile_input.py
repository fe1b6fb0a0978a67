"""Hostile input on every endpoint: a 4xx problem naming the field, never a 500 or a 503.

Lone surrogates and NUL in any string, dates that cannot be represented in UTC, JSON nested
deeper than any parser goes, and numbers with thousands of digits.
"""

from __future__ import annotations

import json

import pytest

from tests.api.test_bad_input import (
    SUBJECT,
    _edit,
    _valid_bodies,
    assert_names_only,
    assert_problem,
    send,
)
from tests.conftest import Caller

SURROGATE = "\ud800"
NUL = "a\x00b"
# the UTF-8 bytes of a lone surrogate and of NUL, as they arrive in a URL
URL_SURROGATE = "%ED%A0%80"
URL_NUL = "a%00b"
EARLIEST = "0001-01-01T00:00:00+14:00"
LATEST = "9999-12-31T23:59:59-14:00"
DIGITS = "9" * 5000

STRING_FIELDS = [
    ("personalize", "subject_id"),
    ("personalize", "purpose"),
    ("personalize", "candidates.0.id"),
    ("personalize", "candidates.1.category"),
    ("personalize", "candidates.0.features.b"),
    ("personalize", "context.page"),
    ("consent", "source"),
    ("consent", "notice_version"),
    ("events", "database"),
    ("events", "events.0.type"),
    ("events", "events.0.item_id"),
    ("events", "events.0.category"),
    ("attributes", "database"),
    ("attributes", "attributes.favorite_brand"),
]


def _names_text_rule(errors: dict[str, list[str]], field: str, what: str) -> None:
    assert_names_only(errors, field)
    assert any(what in message for messages in errors.values() for message in messages), errors


@pytest.mark.parametrize(("endpoint", "path"), STRING_FIELDS)
@pytest.mark.parametrize(("value", "what"), [(SURROGATE, "surrogate"), (NUL, "NUL")])
def test_a_bad_character_in_a_body_string_is_named(
    admin: Caller, endpoint: str, path: str, value: str, what: str
) -> None:
    body = _edit(_valid_bodies()[endpoint][2], path, value)
    errors = assert_problem(send(admin, endpoint, body), 422)
    _names_text_rule(errors, path, what)


@pytest.mark.parametrize(
    ("endpoint", "path", "field"),
    [
        ("personalize", "candidates.0.features", "candidates.0.features"),
        ("personalize", "context", "context"),
        ("attributes", "attributes", "attributes"),
    ],
)
@pytest.mark.parametrize(("key", "what"), [(SURROGATE, "surrogate"), (NUL, "NUL")])
def test_a_bad_character_in_a_key_is_named(
    admin: Caller, endpoint: str, path: str, field: str, key: str, what: str
) -> None:
    body = _edit(_valid_bodies()[endpoint][2], path, {key: "x"})
    errors = assert_problem(send(admin, endpoint, body), 422)
    _names_text_rule(errors, field, what)


SUBJECT_PATHS = [
    ("PUT", "/v1/subjects/{}/consents/recommendations", "consent"),
    ("GET", "/v1/subjects/{}/consents", None),
    ("GET", "/v1/subjects/{}/consents/recommendations", None),
    ("POST", "/v1/subjects/{}/events", "events"),
    ("PATCH", "/v1/subjects/{}/attributes", "attributes"),
    ("GET", "/v1/subjects/{}/export", None),
    ("DELETE", "/v1/subjects/{}", None),
]


@pytest.mark.parametrize(("method", "template", "endpoint"), SUBJECT_PATHS)
@pytest.mark.parametrize("subject", [URL_SURROGATE, URL_NUL, "%FF"])
def test_a_bad_subject_id_in_the_path_is_named(
    admin: Caller, method: str, template: str, endpoint: str | None, subject: str
) -> None:
    """Invalid UTF-8 reaches the app as U+FFFD: two such ids would share one pseudonym."""
    body = _valid_bodies()[endpoint][2] if endpoint else None
    response = admin.request(method, template.format(subject), json=body)
    assert_names_only(assert_problem(response, 422), "subject_id")


@pytest.mark.parametrize("field", ["subject_id", "purpose", "outcome", "client", "cursor"])
def test_nul_in_a_query_parameter_is_named(auditor: Caller, field: str) -> None:
    response = auditor.get(f"/v1/audit/entries?{field}={URL_NUL}")
    _names_text_rule(assert_problem(response, 422), field, "NUL")


@pytest.mark.parametrize("field", ["subject_id", "purpose", "outcome", "client"])
def test_undecodable_bytes_in_a_query_parameter_stay_escaped_text(
    auditor: Caller, field: str
) -> None:
    """Werkzeug keeps `%ED%A0%80` as those nine characters: valid text that matches nothing."""
    response = auditor.get(f"/v1/audit/entries?{field}={URL_SURROGATE}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["entries"] == []


def test_a_body_subject_id_with_a_replacement_character_is_named(admin: Caller) -> None:
    body = _edit(_valid_bodies()["personalize"][2], "subject_id", "a\ufffdb")
    assert_names_only(assert_problem(send(admin, "personalize", body), 422), "subject_id")


def test_text_outside_the_basic_plane_is_accepted(admin: Caller) -> None:
    """A surrogate pair in JSON is one valid character, not a lone surrogate."""
    body = _edit(_valid_bodies()["consent"][2], "source", "\U0001f600 banner")
    assert send(admin, "consent", body).status_code == 200


WINDOW_PATHS = ["/v1/audit/entries", "/v1/audit/export", "/v1/audit/summary"]


@pytest.mark.parametrize("path", WINDOW_PATHS)
@pytest.mark.parametrize(("field", "value"), [("since", EARLIEST), ("until", LATEST)])
def test_a_window_edge_beyond_utc_is_named(
    auditor: Caller, path: str, field: str, value: str
) -> None:
    response = auditor.get(path, query_string={field: value})
    errors = assert_problem(response, 422)
    _names_text_rule(errors, field, "UTC")


@pytest.mark.parametrize("path", WINDOW_PATHS)
def test_the_edges_of_the_calendar_in_utc_are_accepted(auditor: Caller, path: str) -> None:
    window = {"since": "0001-01-01T00:00:00+00:00", "until": "9999-12-31T23:59:59+00:00"}
    response = auditor.get(path, query_string=window)
    assert response.status_code == 200, response.get_data(as_text=True)
    response.close()


@pytest.mark.parametrize(
    ("endpoint", "path", "value"),
    [
        ("consent", "expires_at", LATEST),
        ("events", "events.0.at", EARLIEST),
        ("events", "events.0.at", LATEST),
    ],
)
def test_a_body_date_beyond_utc_is_named(
    admin: Caller, endpoint: str, path: str, value: str
) -> None:
    body = _edit(_valid_bodies()[endpoint][2], path, value)
    errors = assert_problem(send(admin, endpoint, body), 422)
    _names_text_rule(errors, path, "UTC")


def test_a_consent_until_the_end_of_the_calendar_is_recorded_and_read(admin: Caller) -> None:
    body = _edit(_valid_bodies()["consent"][2], "expires_at", "9999-12-31T23:59:59+00:00")
    assert send(admin, "consent", body).status_code == 200
    response = admin.get(f"/v1/subjects/{SUBJECT}/consents/recommendations")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["state"] == "granted"


@pytest.mark.parametrize(
    "at", ["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"], ids=["first", "last"]
)
def test_events_at_the_edges_of_the_calendar_are_refused_one_by_one(admin: Caller, at: str) -> None:
    body = _edit(_valid_bodies()["events"][2], "events.0.at", at)
    response = send(admin, "events", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["accepted"] == []


BODY_ENDPOINTS = [
    *(_valid_bodies()[name][:2] for name in _valid_bodies()),
    ("POST", "/v1/purges"),
]


def _deep(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    "raw",
    [
        _deep(50_000),
        '{"subject_id": ' + _deep(50_000) + "}",
        '{"a": ' * 30_000 + "1" + "}" * 30_000,
    ],
    ids=["array", "in-a-field", "objects"],
)
def test_json_nested_too_deep_is_400_naming_the_body(
    admin: Caller, method: str, path: str, raw: str
) -> None:
    response = admin.request(method, path, data=raw, headers={"Content-Type": "application/json"})
    errors = assert_problem(response, 400)
    _names_text_rule(errors, "body", "nested")


def test_json_nested_just_within_the_parser_is_a_named_field(admin: Caller) -> None:
    body = _valid_bodies()["personalize"][2]
    raw = json.dumps(body).replace('"home"', _deep(800))
    response = admin.request(
        "POST", "/v1/personalize", data=raw, headers={"Content-Type": "application/json"}
    )
    assert_names_only(assert_problem(response, 422), "context.page")


def _raw_edit(endpoint: str, path: str, literal: str) -> str:
    """The endpoint's valid body as JSON text with the dotted `path` set to a raw literal."""
    marker = "__raw_literal__"
    return json.dumps(_edit(_valid_bodies()[endpoint][2], path, marker)).replace(
        json.dumps(marker), literal
    )


NUMBER_CASES = [
    ("personalize", "limit", DIGITS),
    ("personalize", "limit", "-" + DIGITS),
    ("personalize", "limit", "1" + "0" * 25),
    ("personalize", "limit", "1e400"),
    ("personalize", "candidates.0.popularity", DIGITS),
    ("personalize", "candidates.0.popularity", "1" + "0" * 400),
    ("personalize", "candidates.0.popularity", "1e400"),
    ("personalize", "candidates.0.popularity", "NaN"),
    ("personalize", "candidates.0.features.b", DIGITS),
    ("personalize", "candidates.0.features.b", "1e400"),
    ("personalize", "candidates.0.features.b", "-Infinity"),
    ("personalize", "context.page", "9007199254740993"),
    ("consent", "granted", DIGITS),
    ("consent", "expires_at", DIGITS),
    ("events", "events.0.at", DIGITS),
    ("attributes", "attributes.favorite_brand", DIGITS),
    ("attributes", "attributes.favorite_brand", "1e400"),
    ("attributes", "attributes.favorite_brand", "Infinity"),
    ("attributes", "attributes.favorite_brand", "-" + "1" + "0" * 30),
]


@pytest.mark.parametrize(
    ("endpoint", "path", "literal"),
    NUMBER_CASES,
    ids=[f"{e}-{p}-{lit[:12]}" for e, p, lit in NUMBER_CASES],
)
def test_a_number_beyond_what_a_field_holds_is_named(
    admin: Caller, endpoint: str, path: str, literal: str
) -> None:
    method, url, _ = _valid_bodies()[endpoint]
    raw = _raw_edit(endpoint, path, literal)
    response = admin.request(method, url, data=raw, headers={"Content-Type": "application/json"})
    assert_names_only(assert_problem(response, 422), path)


@pytest.mark.parametrize("literal", [DIGITS, "1e400"])
def test_a_huge_number_in_the_purge_body_is_named(admin: Caller, literal: str) -> None:
    response = admin.request(
        "POST",
        "/v1/purges",
        data='{"dry_run": ' + literal + "}",
        headers={"Content-Type": "application/json"},
    )
    assert_names_only(assert_problem(response, 422), "dry_run")


def test_a_body_that_is_one_huge_number_is_named(admin: Caller) -> None:
    response = admin.request(
        "POST", "/v1/personalize", data=DIGITS, headers={"Content-Type": "application/json"}
    )
    assert_names_only(assert_problem(response, 422), "body")


@pytest.mark.parametrize("path", ["/v1/purges", "/v1/audit/entries"])
@pytest.mark.parametrize("limit", [DIGITS, "-" + DIGITS, "1" + "0" * 25, "1e400", "inf"])
def test_a_huge_limit_in_the_query_is_named(auditor: Caller, path: str, limit: str) -> None:
    response = auditor.get(f"{path}?limit={limit}")
    assert_names_only(assert_problem(response, 422), "limit")
