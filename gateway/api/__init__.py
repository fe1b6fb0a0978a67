"""HTTP API: one blueprint per resource; the schemas are the contract and the OpenAPI document."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request
from flask_smorest import Api
from marshmallow import fields
from werkzeug.exceptions import HTTPException

from gateway.api.auth import authenticate_request
from gateway.api.problems import http_problem
from gateway.api.strict import StrictJSONProvider, StrictSchema
from gateway.errors import GatewayError

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ProblemSchema(StrictSchema):
    """An RFC 9457 problem document."""

    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    code = fields.String()
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class GatewayApi(Api):
    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        return http_problem(error)


def _before_request() -> None:
    given = request.headers.get("X-Request-Id", "")
    g.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
    # OPTIONS carries no key (browsers send it before the real request) and reveals no data.
    if not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return
    authenticate_request()
    has_body = request.content_length or request.headers.get("Transfer-Encoding")
    if request.method in ("POST", "PUT", "PATCH") and has_body and not request.is_json:
        raise GatewayError(
            "The body must be JSON (Content-Type: application/json).",
            {"body": ["Expected Content-Type: application/json."]},
            status=415,
            code="unsupported_media_type",
        )


def _after_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_app(app: Flask) -> None:
    from gateway.api import (
        audit,
        consents,
        documents,
        health,
        personalize,
        profiles,
        purges,
        subjects,
    )

    # every body is read by it (see strict.Blueprint), so its rules hold for every endpoint
    app.json = StrictJSONProvider(app)
    app.before_request(_before_request)
    app.after_request(_after_request)
    api = GatewayApi(app)
    for module in (personalize, consents, profiles, subjects, documents, audit, purges, health):
        api.register_blueprint(module.blp)
