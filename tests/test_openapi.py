"""The OpenAPI document: valid, complete for /v1, and stating the contract the apps rely on."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document: dict[str, Any] = response.get_json()
    return document


def _openapi_path(rule: str) -> str:
    """Flask's `/v1/subjects/<string:subject_id>` is OpenAPI's `/v1/subjects/{subject_id}`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule)


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = spec["components"][section][name]
    return node


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("/v1/subjects/<string:subject_id>/consents", "/v1/subjects/{subject_id}/consents"),
        ("/v1/registry/databases/<database_id>", "/v1/registry/databases/{database_id}"),
        ("/v1/a/<int:n>/<path:rest>", "/v1/a/{n}/{rest}"),
    ],
)
def test_flask_rules_convert_to_openapi_paths(rule: str, expected: str) -> None:
    assert _openapi_path(rule) == expected


def test_every_v1_route_and_method_is_documented(app: Flask, spec: dict[str, Any]) -> None:
    routes = [r for r in app.url_map.iter_rules() if r.rule.startswith("/v1/")]
    assert "/v1/personalize" in {r.rule for r in routes}
    missing = []
    for rule in routes:
        path = _openapi_path(rule.rule)
        documented = {m.upper() for m in spec["paths"].get(path, {})}
        missing += [
            f"{method} {path}"
            for method in sorted((rule.methods or set()) - IGNORED_METHODS)
            if method not in documented
        ]
    assert missing == []


def test_the_personalize_request_schema_requires_its_fields(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/v1/personalize"]["post"]["requestBody"]
    schema = _resolve(spec, body["content"]["application/json"]["schema"])
    assert {"subject_id", "purpose", "candidates"} <= set(schema["required"])
    assert {"context", "limit"}.isdisjoint(schema["required"])
    assert schema["properties"]["candidates"]["type"] == "array"
    assert schema.get("additionalProperties") is False


def test_the_bearer_security_scheme_is_declared(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    bearer = [
        name
        for name, scheme in schemes.items()
        if scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
    ]
    assert bearer
    required = {name for requirement in spec.get("security", []) for name in requirement}
    assert required & set(bearer), "the bearer scheme is declared but not required"
