"""Bad input on every write endpoint: a 4xx problem+json naming the field, never a 500."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from gateway.store.clients import Role, create_client
from gateway.store.db import database
from gateway.store.models import Attribute, AuditEntry, ConsentRecord, Event
from tests.conftest import Caller
from tests.tcf_strings import tc_string

PROBLEM = "application/problem+json"
SUBJECT = "subject-1"
LONG_ID = "s" * 257


def _soon(days: float) -> str:
    return _at(days).isoformat()


def _at(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def _valid_bodies() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """(method, path, body) per endpoint; each body alone is accepted with 200."""
    return {
        "personalize": (
            "POST",
            "/v1/personalize",
            {
                "subject_id": SUBJECT,
                "purpose": "recommendations",
                "candidates": [
                    {"id": "sku-1", "category": "shoes", "popularity": 3, "features": {"b": "x"}},
                    {"id": "sku-2", "category": "books"},
                ],
                "context": {"page": "home"},
                "limit": 2,
            },
        ),
        "consent": (
            "PUT",
            f"/v1/subjects/{SUBJECT}/consents/recommendations",
            {
                "granted": True,
                "source": "web_banner",
                "notice_version": "2026-01",
                "expires_at": _soon(30),
            },
        ),
        "tcf": (
            "PUT",
            f"/v1/subjects/{SUBJECT}/consents",
            {
                "tcf": tc_string(
                    purpose_consents=[5, 6], vendor_consents=[755], last_updated=_at(-1)
                ),
                "source": "web_cmp",
            },
        ),
        "events": (
            "POST",
            f"/v1/subjects/{SUBJECT}/events",
            {
                "database": "shop_events",
                "events": [
                    {"type": "view", "item_id": "sku-1", "category": "shoes", "at": _soon(-1)}
                ],
            },
        ),
        "attributes": (
            "PATCH",
            f"/v1/subjects/{SUBJECT}/attributes",
            {"database": "crm", "attributes": {"favorite_brand": "acme"}},
        ),
    }


ENDPOINTS = list(_valid_bodies())
MISSING = object()


def _edit(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with the dotted `path` set to `value`, or removed when MISSING."""
    edited = copy.deepcopy(body)
    *parents, last = path.split(".")
    target: Any = edited
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is MISSING:
        del target[key]
    else:
        target[key] = value
    return edited


def assert_problem(response: Any, status: int) -> dict[str, list[str]]:
    """The response is an RFC 9457 problem with `status`, and no trace of a traceback."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == PROBLEM
    assert "Traceback" not in text and 'File "' not in text
    problem = json.loads(text)
    assert problem["status"] == status
    assert isinstance(problem["errors"], dict)
    errors: dict[str, list[str]] = problem["errors"]
    return errors


def assert_names_only(errors: dict[str, list[str]], field: str) -> None:
    """`errors` names `field` (or a dotted path below it), and nothing else."""
    assert errors, "the problem names no field"
    for key, messages in errors.items():
        assert key == field or key.startswith(field + "."), errors
        assert messages and all(isinstance(m, str) and m for m in messages)


def send(caller: Caller, endpoint: str, body: Any, path: str | None = None, **kwargs: Any) -> Any:
    method, default_path, _ = _valid_bodies()[endpoint]
    return caller.request(method, path or default_path, json=body, **kwargs)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_valid_body_is_accepted(admin: Caller, endpoint: str) -> None:
    """The baseline every bad case below departs from by one field."""
    response = send(admin, endpoint, _valid_bodies()[endpoint][2])
    assert response.status_code == 200, response.get_data(as_text=True)


FIELD_CASES = [
    # missing required fields
    ("personalize", "subject_id", MISSING, "subject_id"),
    ("personalize", "purpose", MISSING, "purpose"),
    ("personalize", "candidates", MISSING, "candidates"),
    ("personalize", "candidates.0.id", MISSING, "candidates.0.id"),
    ("personalize", "candidates.1.category", MISSING, "candidates.1.category"),
    ("consent", "granted", MISSING, "granted"),
    ("consent", "source", MISSING, "source"),
    ("consent", "notice_version", MISSING, "notice_version"),
    ("events", "database", MISSING, "database"),
    ("events", "events", MISSING, "events"),
    ("events", "events.0.type", MISSING, "events.0.type"),
    ("events", "events.0.item_id", MISSING, "events.0.item_id"),
    ("events", "events.0.category", MISSING, "events.0.category"),
    ("events", "events.0.at", MISSING, "events.0.at"),
    ("attributes", "database", MISSING, "database"),
    ("attributes", "attributes", MISSING, "attributes"),
    # unknown fields, top level and nested
    ("personalize", "debug", True, "debug"),
    ("personalize", "candidates.0.price", 10, "candidates.0.price"),
    ("consent", "subject_id", SUBJECT, "subject_id"),
    ("events", "events.0.user_agent", "curl", "events.0.user_agent"),
    ("events", "subject_id", SUBJECT, "subject_id"),
    ("attributes", "purpose", "recommendations", "purpose"),
    # a string where a number belongs
    ("personalize", "limit", "2", "limit"),
    ("personalize", "candidates.0.popularity", "3", "candidates.0.popularity"),
    # a number where a string belongs
    ("personalize", "subject_id", 42, "subject_id"),
    ("personalize", "purpose", 7, "purpose"),
    ("personalize", "candidates.0.id", 1, "candidates.0.id"),
    ("personalize", "candidates.0.category", 2.5, "candidates.0.category"),
    ("consent", "source", 1, "source"),
    ("consent", "notice_version", 2026, "notice_version"),
    ("events", "database", 1, "database"),
    ("events", "events.0.type", 3, "events.0.type"),
    ("events", "events.0.item_id", 5, "events.0.item_id"),
    ("attributes", "database", 9, "database"),
    # a string or a number where a boolean belongs
    ("consent", "granted", "true", "granted"),
    ("consent", "granted", 1, "granted"),
    # a list where an object belongs, and an object where a list belongs
    ("personalize", "context", ["page", "home"], "context"),
    ("personalize", "candidates.0", ["sku-1", "shoes"], "candidates.0"),
    ("personalize", "candidates.0.features", ["b", "x"], "candidates.0.features"),
    ("personalize", "candidates", {"id": "sku-1", "category": "shoes"}, "candidates"),
    ("events", "events.0", ["view", "sku-1"], "events.0"),
    ("events", "events", {"type": "view"}, "events"),
    ("attributes", "attributes", [["favorite_brand", "acme"]], "attributes"),
    # null
    ("personalize", "subject_id", None, "subject_id"),
    ("personalize", "candidates", None, "candidates"),
    ("personalize", "candidates.0", None, "candidates.0"),
    ("personalize", "limit", None, "limit"),
    ("personalize", "context", None, "context"),
    ("consent", "granted", None, "granted"),
    ("consent", "source", None, "source"),
    ("events", "database", None, "database"),
    ("events", "events.0.at", None, "events.0.at"),
    ("attributes", "attributes", None, "attributes"),
    ("attributes", "attributes.favorite_brand", None, "attributes.favorite_brand"),
    # dates: naive (no offset), garbage, a number, and a consent expiry in the past
    ("consent", "expires_at", "2030-01-01T00:00:00", "expires_at"),
    ("consent", "expires_at", "next tuesday", "expires_at"),
    ("consent", "expires_at", 1893456000, "expires_at"),
    ("consent", "expires_at", "2020-01-01T00:00:00+00:00", "expires_at"),
    ("events", "events.0.at", "2026-01-01T10:00:00", "events.0.at"),
    ("events", "events.0.at", "yesterday", "events.0.at"),
    ("events", "events.0.at", 1767225600, "events.0.at"),
    # counts and limits
    ("personalize", "candidates", [], "candidates"),
    (
        "personalize",
        "candidates",
        [{"id": "sku-1", "category": "shoes"}, {"id": "sku-1", "category": "books"}],
        "candidates",
    ),
    ("personalize", "limit", 0, "limit"),
    ("personalize", "limit", -3, "limit"),
    ("personalize", "limit", 1.5, "limit"),
    ("personalize", "limit", True, "limit"),
    ("events", "events", [], "events"),
    ("attributes", "attributes", {}, "attributes"),
    # values that are not scalars, and oversized identifiers
    ("personalize", "candidates.0.features", {"b": {"nested": 1}}, "candidates.0.features.b"),
    ("personalize", "candidates.0.features", {"b": [1, 2]}, "candidates.0.features.b"),
    ("attributes", "attributes", {"favorite_brand": {"a": 1}}, "attributes.favorite_brand"),
    ("personalize", "subject_id", LONG_ID, "subject_id"),
    ("personalize", "subject_id", "", "subject_id"),
    ("personalize", "subject_id", "with space", "subject_id"),
]


@pytest.mark.parametrize(
    ("endpoint", "path", "value", "field"),
    FIELD_CASES,
    ids=[f"{e}-{p}-{'missing' if v is MISSING else repr(v)[:24]}" for e, p, v, _ in FIELD_CASES],
)
def test_a_bad_field_is_named(
    admin: Caller, endpoint: str, path: str, value: Any, field: str
) -> None:
    body = _edit(_valid_bodies()[endpoint][2], path, value)
    errors = assert_problem(send(admin, endpoint, body), 422)
    assert_names_only(errors, field)


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("personalize", "purpose", "telepathy"),
        ("events", "database", "shoebox"),
        ("attributes", "database", "shoebox"),
    ],
)
def test_an_unknown_reference_in_the_body_is_named(
    admin: Caller, endpoint: str, field: str, value: str
) -> None:
    body = _edit(_valid_bodies()[endpoint][2], field, value)
    errors = assert_problem(send(admin, endpoint, body), 422)
    assert_names_only(errors, field)
    assert any(value in message for message in errors[field])


def test_an_unknown_purpose_in_the_path_is_404_naming_purpose(admin: Caller) -> None:
    body = _valid_bodies()["consent"][2]
    path = f"/v1/subjects/{SUBJECT}/consents/telepathy"
    errors = assert_problem(send(admin, "consent", body, path=path), 404)
    assert_names_only(errors, "purpose")


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        ("consent", f"/v1/subjects/{LONG_ID}/consents/recommendations"),
        ("events", f"/v1/subjects/{LONG_ID}/events"),
        ("attributes", f"/v1/subjects/{LONG_ID}/attributes"),
    ],
)
def test_a_subject_id_too_long_in_the_path_is_named(
    admin: Caller, endpoint: str, path: str
) -> None:
    errors = assert_problem(send(admin, endpoint, _valid_bodies()[endpoint][2], path=path), 422)
    assert_names_only(errors, "subject_id")


def test_a_subject_id_of_256_characters_is_accepted(admin: Caller) -> None:
    """The boundary of the two cases above: the limit is 256, not less."""
    longest = "s" * 256
    body = _edit(_valid_bodies()["personalize"][2], "subject_id", longest)
    assert send(admin, "personalize", body).status_code == 200
    path = f"/v1/subjects/{longest}/attributes"
    assert send(admin, "attributes", _valid_bodies()["attributes"][2], path=path).status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [("explain=maybe", "explain"), ("explain=", "explain"), ("verbose=1", "verbose")],
)
def test_bad_query_parameters_on_personalize_are_named(
    admin: Caller, query: str, field: str
) -> None:
    body = _valid_bodies()["personalize"][2]
    errors = assert_problem(send(admin, "personalize", body, path=f"/v1/personalize?{query}"), 422)
    assert_names_only(errors, field)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("raw", ['{"granted": ', "{'a': 1}", "{}}", "nul", '{"a": 1,}'])
def test_malformed_json_is_400_naming_the_body(admin: Caller, endpoint: str, raw: str) -> None:
    method, path, _ = _valid_bodies()[endpoint]
    response = admin.request(method, path, data=raw, headers={"Content-Type": "application/json"})
    assert_names_only(assert_problem(response, 400), "body")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("whole", [[], [{"subject_id": SUBJECT}], 3, "text", True, None])
def test_a_body_that_is_not_an_object_is_named(admin: Caller, endpoint: str, whole: Any) -> None:
    method, path, _ = _valid_bodies()[endpoint]
    response = admin.request(
        method, path, data=json.dumps(whole), headers={"Content-Type": "application/json"}
    )
    assert_names_only(assert_problem(response, 422), "body")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_a_body_that_is_not_json_is_415(
    admin: Caller, endpoint: str, content_type: str | None
) -> None:
    method, path, body = _valid_bodies()[endpoint]
    headers = {"Content-Type": content_type} if content_type else {}
    response = admin.request(method, path, data=json.dumps(body), headers=headers)
    assert_names_only(assert_problem(response, 415), "body")


def _admin_of(app: Flask) -> Caller:
    with app.app_context(), database.connection_context():
        _, key = create_client("limits-admin", Role.ADMIN, [], datetime.now(UTC))
    return Caller(app.test_client(), key)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_over_the_size_limit_is_413(make_app: Callable[..., Flask], endpoint: str) -> None:
    caller = _admin_of(make_app(MAX_CONTENT_LENGTH=2048))
    method, path, body = _valid_bodies()[endpoint]
    padded = json.dumps({**body, "padding": "x" * 4096})
    response = caller.request(
        method, path, data=padded, headers={"Content-Type": "application/json"}
    )
    errors = assert_problem(response, 413)
    assert_names_only(errors, "body")
    assert any("2048" in message for message in errors["body"])


@pytest.mark.parametrize(("count", "status"), [(5, 200), (6, 422)])
def test_the_candidate_limit_is_enforced(
    make_app: Callable[..., Flask], count: int, status: int
) -> None:
    caller = _admin_of(make_app(MAX_CANDIDATES=5))
    candidates = [{"id": f"sku-{i}", "category": "shoes"} for i in range(count)]
    body = _edit(_valid_bodies()["personalize"][2], "candidates", candidates)
    response = send(caller, "personalize", body)
    if status == 200:
        assert response.status_code == 200, response.get_data(as_text=True)
    else:
        errors = assert_problem(response, status)
        assert_names_only(errors, "candidates")
        assert any("5" in message for message in errors["candidates"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nothing-here"),
        ("POST", "/v1/personalise"),
        ("GET", f"/v1/subjects/{SUBJECT}/consents/recommendations/history"),
        ("PUT", f"/v1/subjects/{SUBJECT}/profile"),
    ],
)
def test_an_unknown_route_is_a_404_problem(admin: Caller, method: str, path: str) -> None:
    assert_problem(admin.request(method, path), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/personalize"),
        ("DELETE", "/v1/personalize"),
        ("POST", f"/v1/subjects/{SUBJECT}/consents/recommendations"),
        ("GET", f"/v1/subjects/{SUBJECT}/events"),
        ("PUT", f"/v1/subjects/{SUBJECT}/attributes"),
    ],
)
def test_a_wrong_method_is_a_405_problem(admin: Caller, method: str, path: str) -> None:
    assert_problem(admin.request(method, path), 405)


def _row_counts(app: Flask) -> dict[str, int]:
    with app.app_context(), database.connection_context():
        return {
            model.__name__: model.select().count()
            for model in (ConsentRecord, Event, Attribute, AuditEntry)
        }


def test_bad_requests_leave_stored_data_intact(app: Flask, admin: Caller) -> None:
    for endpoint in ("consent", "events", "attributes"):
        assert send(admin, endpoint, _valid_bodies()[endpoint][2]).status_code == 200
    consent_path = _valid_bodies()["consent"][1]
    before = admin.get(consent_path)
    assert before.status_code == 200
    assert before.get_json()["state"] == "granted"
    counts = _row_counts(app)

    withdrawal = {"granted": False, "source": "web_banner", "notice_version": "2026-01"}
    json_header = {"Content-Type": "application/json"}
    bad_requests: list[tuple[str, dict[str, Any]]] = [
        ("PUT", {"json": {**withdrawal, "extra": 1}}),
        ("PUT", {"json": {**withdrawal, "granted": "false"}}),
        ("PUT", {"json": {**withdrawal, "expires_at": "2030-01-01T00:00:00"}}),
        ("PUT", {"json": [withdrawal]}),
        ("PUT", {"data": '{"granted": false,', "headers": json_header}),
        ("PUT", {"data": json.dumps(withdrawal), "headers": {"Content-Type": "text/plain"}}),
    ]
    for method, kwargs in bad_requests:
        assert 400 <= admin.request(method, consent_path, **kwargs).status_code < 500
    for endpoint, path, value in [
        ("events", "events.0.at", "2026-01-01T00:00:00"),
        ("events", "database", "shoebox"),
        ("attributes", "attributes", {"favorite_brand": {"a": 1}}),
        ("attributes", "extra", True),
        ("personalize", "purpose", "telepathy"),
        ("personalize", "limit", 0),
    ]:
        body = _edit(_valid_bodies()[endpoint][2], path, value)
        assert send(admin, endpoint, body).status_code == 422

    after = admin.get(consent_path)
    assert after.status_code == 200
    assert after.get_json() == before.get_json()
    assert _row_counts(app) == counts
