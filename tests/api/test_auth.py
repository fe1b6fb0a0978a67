"""Authentication (401) and authorization (403) across every /v1 route."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient

from gateway import keyring
from gateway.api.problems import PROBLEM_MIME
from gateway.store.clients import authenticate, revoke_client
from gateway.store.db import database
from gateway.store.models import ApiClient, Attribute, AuditEntry, ConsentRecord, Event, Subject
from tests.conftest import Caller
from tests.tcf_strings import tc_string

SUBJECT = "subject-auth-7"
MESSAGE = "msg_0123456789abcdef0123456789abcdef"
PATH_VALUES = {
    "subject_id": SUBJECT,
    "purpose": "recommendations",
    "database_id": "crm",
    "delivery_id": MESSAGE,
    "recipient_id": "mail_service",
}
IGNORED_METHODS = {"HEAD", "OPTIONS"}
Sample = tuple[str, str, Any]  # method, concrete path, JSON body or None
CALENDAR = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the date: the demo registrations' review_by dates (mobile_location's is past) hold."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


def v1_routes(app: Flask) -> list[tuple[str, str]]:
    """Every (rule, method) under /v1 that the app answers, as the url_map lists them."""
    return sorted(
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/")
        for method in (rule.methods or set()) - IGNORED_METHODS
    )


def concrete(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: PATH_VALUES[m.group(1)], rule)


def consent_body() -> dict[str, Any]:
    return {"granted": True, "source": "web-banner", "notice_version": "2024-05"}


def events_body(database: str = "shop_events") -> dict[str, Any]:
    at = datetime.now(UTC).isoformat()
    event = {"type": "view", "item_id": "i1", "category": "shoes", "at": at}
    return {"database": database, "events": [event]}


def attributes_body(database: str = "crm") -> dict[str, Any]:
    return {"database": database, "attributes": {"favorite_brand": "Acme"}}


def personalize_body(purpose: str = "recommendations") -> dict[str, Any]:
    return {
        "subject_id": SUBJECT,
        "purpose": purpose,
        "candidates": [{"id": "a", "category": "shoes"}, {"id": "b", "category": "books"}],
    }


def sample_bodies() -> dict[tuple[str, str], Any]:
    """A valid body for every (rule, method) that takes one; None where there is no body."""
    consents = "/v1/subjects/<string:subject_id>/consents"
    return {
        ("/v1/personalize", "POST"): personalize_body(),
        (consents, "GET"): None,
        (consents, "PUT"): {"tcf": tc_string(last_updated=datetime.now(UTC) - timedelta(days=1))},
        (consents + "/<string:purpose>", "GET"): None,
        (consents + "/<string:purpose>", "PUT"): consent_body(),
        ("/v1/subjects/<string:subject_id>/events", "POST"): events_body(),
        ("/v1/subjects/<string:subject_id>/attributes", "PATCH"): attributes_body(),
        ("/v1/policies", "GET"): None,
        ("/v1/registry/databases", "GET"): None,
        ("/v1/registry/databases/<string:database_id>", "GET"): None,
        ("/v1/registry/recipients", "GET"): None,
        ("/v1/deliveries", "GET"): None,
        ("/v1/deliveries/<string:delivery_id>/retry", "POST"): None,
        ("/v1/recipients/<string:recipient_id>/resync", "POST"): None,
        ("/v1/registry/records-of-processing", "GET"): None,
        ("/v1/keys/signing", "GET"): None,
        ("/v1/audit/entries", "GET"): None,
        ("/v1/audit/verify", "GET"): None,
        ("/v1/audit/export", "GET"): None,
        ("/v1/audit/summary", "GET"): None,
        ("/v1/audit/checkpoints", "POST"): None,
        ("/v1/purges", "GET"): None,
        ("/v1/purges", "POST"): {"dry_run": True},
        ("/v1/subjects/<string:subject_id>/export", "GET"): None,
        ("/v1/subjects/<string:subject_id>", "DELETE"): None,
    }


def samples(app: Flask) -> list[Sample]:
    bodies = sample_bodies()
    return [(method, concrete(rule), bodies[(rule, method)]) for rule, method in v1_routes(app)]


def send(http: FlaskClient, sample: Sample, authorization: str | None) -> Any:
    method, path, body = sample
    headers = {} if authorization is None else {"Authorization": authorization}
    return http.open(path, method=method, json=body, headers=headers)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == PROBLEM_MIME
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["code"] == code
    return body


def counts(app: Flask) -> dict[str, int]:
    with app.app_context(), database.connection_context():
        tables = (Subject, ConsentRecord, Attribute, Event, AuditEntry)
        return {table.__name__: table.select().count() for table in tables}


NOTHING_STORED = {"Subject": 0, "ConsentRecord": 0, "Attribute": 0, "Event": 0, "AuditEntry": 0}


# -- the route table itself ------------------------------------------------------------------


def test_every_v1_route_has_a_sample(app: Flask) -> None:
    """A new route must be added to the table, or the 401/admin sweeps below would miss it."""
    assert set(v1_routes(app)) == set(sample_bodies())


# -- 401 ---------------------------------------------------------------------------------------

BAD_CREDENTIALS: dict[str, Callable[[str], str | None]] = {
    "no_header": lambda key: None,
    "empty_header": lambda key: "",
    "scheme_only": lambda key: "Bearer",
    "scheme_and_space": lambda key: "Bearer ",
    "no_scheme": lambda key: key,
    "basic_scheme": lambda key: f"Basic {key}",
    "token_scheme": lambda key: f"Token {key}",
    "trailing_garbage": lambda key: f"Bearer {key} extra",
    "truncated_key": lambda key: f"Bearer {key[:-1]}",
    "unknown_key": lambda key: "Bearer gwk_" + "A" * 43,
    "key_without_prefix": lambda key: "Bearer " + key.removeprefix("gwk_"),
}


@pytest.mark.parametrize("credential", list(BAD_CREDENTIALS.values()), ids=list(BAD_CREDENTIALS))
def test_every_v1_route_refuses_a_missing_or_bad_key(
    app: Flask, client: FlaskClient, admin: Caller, credential: Callable[[str], str | None]
) -> None:
    routes = samples(app)
    assert routes, "the app must expose /v1 routes"
    for sample in routes:
        response = send(client, sample, credential(admin.key))
        assert_problem(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert counts(app) == NOTHING_STORED


def test_every_v1_route_refuses_a_revoked_key(
    app: Flask, client: FlaskClient, admin: Caller
) -> None:
    routes = samples(app)
    signing = ("GET", "/v1/keys/signing", None)
    assert send(client, signing, f"Bearer {admin.key}").status_code == 200
    with app.app_context(), database.connection_context():
        found = authenticate(admin.key)
        assert found is not None
        revoke_client(found.name, datetime.now(UTC))
        assert ApiClient.get(ApiClient.name == found.name).revoked_at is not None
    for sample in routes:
        assert_problem(send(client, sample, f"Bearer {admin.key}"), 401, "unauthorized")
    assert counts(app) == NOTHING_STORED


def test_the_scheme_is_case_insensitive(client: FlaskClient, admin: Caller) -> None:
    response = send(client, ("GET", "/v1/keys/signing", None), f"bearer {admin.key}")
    assert response.status_code == 200


# -- admin may do everything -----------------------------------------------------------------


CREATED = {("POST", "/v1/audit/checkpoints")}
STREAMED = {("GET", "/v1/audit/export"): "application/x-ndjson"}
# a fresh instance has no failed message to retry: admin is let through to the handler,
# which answers that there is none
NOT_FOUND = {("POST", f"/v1/deliveries/{MESSAGE}/retry"): "unknown_delivery"}


def test_admin_may_call_every_v1_route(app: Flask, admin: Caller) -> None:
    for method, path, body in samples(app):
        response = admin.request(method, path, body)
        if (method, path) in NOT_FOUND:
            assert_problem(response, 404, NOT_FOUND[(method, path)])
            continue
        expected = 201 if (method, path) in CREATED else 200
        assert response.status_code == expected, (method, path, response.get_data(as_text=True))
        assert response.mimetype == STREAMED.get((method, path), "application/json")


# -- 403: roles --------------------------------------------------------------------------------

CONSENT = f"/v1/subjects/{SUBJECT}/consents/recommendations"
ROLE_REFUSALS = [
    pytest.param("shop", "GET", "/v1/policies", None, id="app-policies"),
    pytest.param("shop", "GET", "/v1/registry/databases", None, id="app-registry"),
    pytest.param("shop", "GET", "/v1/registry/databases/crm", None, id="app-registry-one"),
    pytest.param("shop", "GET", "/v1/registry/recipients", None, id="app-recipients"),
    pytest.param("shop", "GET", "/v1/deliveries", None, id="app-deliveries"),
    pytest.param("auditor", "POST", f"/v1/deliveries/{MESSAGE}/retry", None, id="auditor-retry"),
    pytest.param(
        "auditor", "POST", "/v1/recipients/mail_service/resync", None, id="auditor-resync"
    ),
    pytest.param(
        "shop", "GET", "/v1/registry/records-of-processing", None, id="app-records-of-processing"
    ),
    pytest.param("auditor", "PUT", CONSENT, consent_body(), id="auditor-put-consent"),
    pytest.param(
        "auditor", "POST", f"/v1/subjects/{SUBJECT}/events", events_body(), id="auditor-events"
    ),
    pytest.param(
        "auditor",
        "PATCH",
        f"/v1/subjects/{SUBJECT}/attributes",
        attributes_body(),
        id="auditor-attributes",
    ),
    pytest.param(
        "auditor", "POST", "/v1/personalize", personalize_body(), id="auditor-personalize"
    ),
]


@pytest.mark.parametrize(("who", "method", "path", "body"), ROLE_REFUSALS)
def test_a_role_not_granted_is_refused(
    request: pytest.FixtureRequest, app: Flask, who: str, method: str, path: str, body: Any
) -> None:
    caller: Caller = request.getfixturevalue(who)
    problem = assert_problem(caller.request(method, path, body), 403, "forbidden")
    assert "role" in problem["detail"]
    assert counts(app) == NOTHING_STORED


ROLE_ALLOWED = [
    pytest.param("auditor", "GET", "/v1/policies", id="auditor-policies"),
    pytest.param("auditor", "GET", "/v1/registry/databases", id="auditor-registry"),
    pytest.param("auditor", "GET", "/v1/registry/databases/crm", id="auditor-registry-one"),
    pytest.param("auditor", "GET", "/v1/registry/recipients", id="auditor-recipients"),
    pytest.param("auditor", "GET", "/v1/deliveries?status=failed", id="auditor-deliveries"),
    pytest.param(
        "auditor", "GET", "/v1/registry/records-of-processing", id="auditor-records-of-processing"
    ),
    pytest.param("auditor", "GET", f"/v1/subjects/{SUBJECT}/consents", id="auditor-consents"),
    pytest.param("auditor", "GET", CONSENT, id="auditor-consent"),
    pytest.param("shop", "GET", CONSENT, id="app-own-consent"),
]


@pytest.mark.parametrize(("who", "method", "path"), ROLE_ALLOWED)
def test_reads_a_role_is_granted_succeed(
    request: pytest.FixtureRequest, who: str, method: str, path: str
) -> None:
    caller: Caller = request.getfixturevalue(who)
    assert caller.request(method, path).status_code == 200


# -- 403: purposes -----------------------------------------------------------------------------

PURPOSE_REFUSALS = [
    pytest.param("shop", "POST", "/v1/personalize", "email_marketing", id="shop-personalize"),
    pytest.param("shop", "PUT", "consent", "email_marketing", id="shop-put-consent"),
    pytest.param("shop", "GET", "consent", "email_marketing", id="shop-get-consent"),
    pytest.param("mailer", "POST", "/v1/personalize", "recommendations", id="mailer-personalize"),
    pytest.param("mailer", "PUT", "consent", "ads_personalization", id="mailer-put-consent"),
    pytest.param("mailer", "GET", "consent", "recommendations", id="mailer-get-consent"),
]


@pytest.mark.parametrize(("who", "method", "target", "purpose"), PURPOSE_REFUSALS)
def test_an_app_cannot_use_a_purpose_it_was_not_granted(
    request: pytest.FixtureRequest, app: Flask, who: str, method: str, target: str, purpose: str
) -> None:
    caller: Caller = request.getfixturevalue(who)
    if target == "consent":
        path = f"/v1/subjects/{SUBJECT}/consents/{purpose}"
        body = consent_body() if method == "PUT" else None
    else:
        path, body = target, personalize_body(purpose)
    problem = assert_problem(caller.request(method, path, body), 403, "purpose_not_granted")
    assert list(problem["errors"]) == ["purpose"]
    assert purpose in problem["errors"]["purpose"][0]
    assert counts(app) == NOTHING_STORED


@pytest.mark.parametrize(
    ("who", "purpose"),
    [("shop", "recommendations"), ("shop", "ads_personalization"), ("mailer", "email_marketing")],
)
def test_an_app_may_use_the_purposes_it_was_granted(
    request: pytest.FixtureRequest, who: str, purpose: str
) -> None:
    caller: Caller = request.getfixturevalue(who)
    path = f"/v1/subjects/{SUBJECT}/consents/{purpose}"
    assert caller.put(path, consent_body()).status_code == 200
    assert caller.get(path).status_code == 200
    assert caller.post("/v1/personalize", personalize_body(purpose)).status_code == 200


ALL_PURPOSES = ["recommendations", "email_marketing", "ads_personalization"]


@pytest.mark.parametrize(
    ("who", "visible"),
    [
        ("shop", ["recommendations", "ads_personalization"]),
        ("mailer", ["email_marketing"]),
        ("auditor", ALL_PURPOSES),
        ("admin", ALL_PURPOSES),
    ],
)
def test_the_consent_list_shows_an_app_only_its_own_purposes(
    request: pytest.FixtureRequest, admin: Caller, who: str, visible: list[str]
) -> None:
    for purpose in ALL_PURPOSES:
        response = admin.put(f"/v1/subjects/{SUBJECT}/consents/{purpose}", consent_body())
        assert response.status_code == 200
    caller: Caller = request.getfixturevalue(who)
    response = caller.get(f"/v1/subjects/{SUBJECT}/consents")
    assert response.status_code == 200
    states = response.get_json()["purposes"]
    assert [s["purpose"] for s in states] == visible
    receipts = [h["receipt"]["payload"]["purpose"] for s in states for h in s["history"]]
    assert receipts == visible


# -- 403: databases ----------------------------------------------------------------------------

DATABASE_REFUSALS = [
    pytest.param("POST", "events", events_body("shop_events"), id="events-shop_events"),
    pytest.param("POST", "events", events_body("mobile_location"), id="events-mobile_location"),
    pytest.param(
        "PATCH", "attributes", attributes_body("shop_events"), id="attributes-shop_events"
    ),
]


@pytest.mark.parametrize(("method", "resource", "body"), DATABASE_REFUSALS)
def test_an_app_cannot_write_into_a_database_none_of_its_purposes_uses(
    app: Flask, mailer: Caller, method: str, resource: str, body: dict[str, Any]
) -> None:
    response = mailer.request(method, f"/v1/subjects/{SUBJECT}/{resource}", body)
    problem = assert_problem(response, 403, "database_not_granted")
    assert list(problem["errors"]) == ["database"]
    assert body["database"] in problem["errors"]["database"][0]
    assert counts(app) == NOTHING_STORED


def test_an_app_may_write_into_a_database_its_purposes_use(mailer: Caller, shop: Caller) -> None:
    attributes = mailer.patch(f"/v1/subjects/{SUBJECT}/attributes", attributes_body("crm"))
    assert attributes.get_json() == {"accepted": ["favorite_brand"], "refused": {}}
    events = shop.post(f"/v1/subjects/{SUBJECT}/events", events_body("shop_events"))
    assert events.get_json() == {"accepted": [0], "refused": {}}


# -- the signing key is public to every role ---------------------------------------------------


@pytest.mark.parametrize("who", ["shop", "mailer", "auditor", "admin"])
def test_every_role_can_read_the_signing_key(
    request: pytest.FixtureRequest, app: Flask, who: str
) -> None:
    caller: Caller = request.getfixturevalue(who)
    response = caller.get("/v1/keys/signing")
    assert response.status_code == 200
    with app.app_context():
        ring = keyring()
    assert response.get_json() == {
        "key_id": ring.key_id,
        "algorithm": "Ed25519",
        "public_key": ring.public_key,
        "public_key_pem": ring.public_key_pem,
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/personalize"),
        ("PUT", "/v1/subjects/s1/consents/recommendations"),
        ("POST", "/v1/subjects/s1/events"),
        ("PATCH", "/v1/subjects/s1/attributes"),
    ],
)
def test_a_role_not_granted_is_refused_before_the_body_is_read(
    auditor: Caller, method: str, path: str
) -> None:
    response = auditor.request(method, path, json={"not": "a valid body"})

    assert response.status_code == 403
    assert response.get_json()["code"] == "forbidden"


def test_options_needs_no_key_and_reveals_no_data(client: FlaskClient) -> None:
    response = client.options("/v1/personalize")

    assert response.status_code == 200
    assert "POST" in response.headers["Allow"]
    assert response.get_data() == b""


def test_a_wrong_method_names_the_allowed_ones(shop: Caller) -> None:
    response = shop.request("DELETE", "/v1/personalize")

    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert "POST" in response.headers["Allow"]
