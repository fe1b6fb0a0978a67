"""Per-client rate limits: 429 problem+json with Retry-After, counted per client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask

from gateway.store.clients import Role, create_client
from gateway.store.db import database
from tests.conftest import Caller


def caller_for(app: Flask, name: str) -> Caller:
    with app.app_context(), database.connection_context():
        _, key = create_client(name, Role.AUDITOR, [], datetime.now(UTC))
    return Caller(app.test_client(), key)


def test_a_client_over_its_limit_gets_429_with_retry_after(make_app: Any) -> None:
    app = make_app(RATELIMIT_DEFAULT="3 per minute")
    auditor = caller_for(app, "compliance")

    statuses = [auditor.get("/v1/policies").status_code for _ in range(3)]
    refused = auditor.get("/v1/policies")

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["code"] == "too_many_requests"
    assert 0 < int(refused.headers["Retry-After"]) <= 60


def test_limits_are_counted_per_client(make_app: Any) -> None:
    app = make_app(RATELIMIT_DEFAULT="2 per minute")
    first, second = caller_for(app, "first"), caller_for(app, "second")

    assert [first.get("/v1/policies").status_code for _ in range(3)] == [200, 200, 429]
    assert [second.get("/v1/policies").status_code for _ in range(2)] == [200, 200]


def test_apps_do_not_share_their_counts(make_app: Any) -> None:
    one = make_app(RATELIMIT_DEFAULT="1 per minute")
    assert caller_for(one, "same-name").get("/v1/policies").status_code == 200

    other = make_app(RATELIMIT_DEFAULT="1 per minute", HOME=str(one.config["HOME"]) + "-2")

    assert caller_for(other, "same-name").get("/v1/policies").status_code == 200
