"""Metrics in Prometheus format, JSON request logs without personal data, readiness."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.store.db import bind
from tests.conftest import Caller

CANDIDATES = [{"id": "a", "category": "shoes"}, {"id": "b", "category": "books"}]


def sample(client: FlaskClient, name: str, **labels: str) -> float:
    """The current value of one sample of /metrics (0 when it does not exist yet)."""
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


def test_metrics_are_prometheus_text_without_a_key(client: FlaskClient) -> None:
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    names = {f.name for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"gateway_requests", "gateway_decisions", "gateway_audit_append_seconds"} <= names


def test_decisions_are_counted_by_purpose_and_outcome(client: FlaskClient, shop: Caller) -> None:
    labels = {"purpose": "recommendations", "outcome": "fallback"}
    before = sample(client, "gateway_decisions_total", **labels)
    appends = sample(client, "gateway_audit_append_seconds_count")

    body = {"subject_id": "s1", "purpose": "recommendations", "candidates": CANDIDATES}
    assert shop.post("/v1/personalize", body).status_code == 200
    assert shop.post("/v1/personalize", body).status_code == 200

    assert sample(client, "gateway_decisions_total", **labels) == before + 2
    assert sample(client, "gateway_audit_append_seconds_count") == appends + 2


def test_requests_are_counted_by_route_template_not_path(client: FlaskClient, shop: Caller) -> None:
    route = "/v1/subjects/<string:subject_id>/consents"
    before = sample(client, "gateway_requests_total", route=route, status="200")

    shop.get("/v1/subjects/alice@example.com/consents")

    assert sample(client, "gateway_requests_total", route=route, status="200") == before + 1
    assert "alice@example.com" not in client.get("/metrics").get_data(as_text=True)


def test_purged_rows_are_counted(app: Flask, client: FlaskClient, admin: Caller) -> None:
    labels = {"kind": "events", "category": "browsing"}
    before = sample(client, "gateway_purge_rows_deleted_total", **labels)
    event = {"type": "view", "item_id": "i", "category": "shoes", "at": "2026-06-01T00:00:00Z"}
    with time_machine.travel("2026-06-01T00:00:00Z", tick=False):
        body = {"database": "shop_events", "events": [event, event, event]}
        assert admin.post("/v1/subjects/s1/events", body).json["accepted"] == [0, 1, 2]
    with time_machine.travel("2026-09-15T00:00:00Z", tick=False):
        assert admin.post("/v1/purges", {"dry_run": False}).status_code == 200

    assert sample(client, "gateway_purge_rows_deleted_total", **labels) == before + 3


def test_each_request_is_one_json_log_line_without_personal_data(
    shop: Caller, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    body = {"granted": True, "source": "banner", "notice_version": "1"}
    response = shop.put(
        "/v1/subjects/bob.smith@example.com/consents/recommendations",
        body,
        headers={"X-Request-Id": "req-42"},
    )

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    (line,) = [entry for entry in lines if entry.get("event") == "request"]
    assert response.headers["X-Request-Id"] == "req-42"
    assert line["request_id"] == "req-42"
    assert line["route"] == "/v1/subjects/<string:subject_id>/consents/<string:purpose>"
    assert (line["method"], line["status"], line["level"]) == ("PUT", 200, "info")
    assert line["client"].startswith("test-app-")
    text = json.dumps(lines)
    assert "bob.smith" not in text and shop.key not in text


def test_readyz_fails_when_the_keyring_is_unusable(app: Flask, client: FlaskClient) -> None:
    Path(app.config["KEYRING"]).unlink()
    app.extensions.pop("gateway.keyring", None)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["code"] == "keyring_unavailable"


def test_readyz_fails_when_the_database_is_unusable(make_app: Any, tmp_path: Path) -> None:
    app = make_app()
    missing = tmp_path / "no-such-folder" / "gateway.db"
    bind(f"sqlite:///{missing}")
    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["code"] == "database_unavailable"
    assert str(missing) not in response.get_data(as_text=True)
    assert not os.path.exists(missing)
