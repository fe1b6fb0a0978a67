"""HTTP API: one blueprint per resource; the schemas are the contract and the OpenAPI document."""

from __future__ import annotations

import re
import uuid
from http import HTTPStatus

from flask import Flask, Response, g, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from gateway.api.auth import authenticate_request
from gateway.api.contract import (
    AUTHENTICATED_PREFIX,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    REQUEST_ID_PATTERN,
    ErrorResponses,
    ProblemSchema,
    describe_fields,
    problem_example,
    problem_response,
)
from gateway.api.problems import PROBLEM_MIME, http_problem
from gateway.api.strict import StrictJSONProvider
from gateway.errors import GatewayError

GIVEN_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)

__all__ = ["GatewayApi", "ProblemSchema", "init_app"]


class GatewayApi(Api):
    """flask-smorest's Api, answering and documenting every error as problem+json."""

    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        return http_problem(error)

    def _register_responses(self) -> None:
        """A component response per error status (flask-smorest names them HTTPStatus names),
        lazily: only those the operations refer to appear in the document."""
        self.spec.components.header(REQUEST_ID_HEADER, REQUEST_ID)
        for status in HTTPStatus:
            if status >= 400:
                self.spec.components.response(status.name, problem_response(status), lazy=True)
        default = problem_response(HTTPStatus.INTERNAL_SERVER_ERROR)
        default["description"] = "Any other error, also problem+json."
        default["content"][PROBLEM_MIME]["example"] = problem_example(
            500, "internal_error", "An unexpected error occurred."
        )
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, default, lazy=True)


def _before_request() -> None:
    given = request.headers.get("X-Request-Id", "")
    g.request_id = given if GIVEN_REQUEST_ID.match(given) else uuid.uuid4().hex
    # OPTIONS carries no key (browsers send it before the real request) and reveals no data.
    if not request.path.startswith(AUTHENTICATED_PREFIX) or request.method == "OPTIONS":
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
        deliveries,
        docs,
        documents,
        health,
        personalize,
        profiles,
        purges,
        recipients,
        subjects,
    )

    # every body is read by it (see strict.Blueprint), so its rules hold for every endpoint
    app.json = StrictJSONProvider(app)
    app.before_request(_before_request)
    app.after_request(_after_request)
    api = GatewayApi(app, spec_kwargs={"extra_plugins": [ErrorResponses()]})
    describe_fields(api.ma_plugin, app)
    modules = (personalize, consents, profiles, subjects, documents, audit, purges, deliveries)
    for module in (*modules, recipients, health):
        api.register_blueprint(module.blp)
    app.register_blueprint(docs.assets)
