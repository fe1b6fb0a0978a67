"""One error family and one handler: every failure becomes RFC 9457 problem+json.

raise GatewayError(422, "unknown_purpose", "Unknown purpose.", {"purpose": ["Unknown."]})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify
from peewee import PeeweeException
from werkzeug.exceptions import HTTPException

from gateway.audit.chain import AuditUnavailable
from gateway.crypto import KeyringError

PROBLEM_MIME = "application/problem+json"
Errors = Mapping[str, list[str]]


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Errors | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.errors = dict(errors or {})
        self.headers = dict(headers or {})


def problem(
    status: int,
    code: str,
    detail: str,
    errors: Errors | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    from http import HTTPStatus

    body: dict[str, Any] = {
        "type": f"about:blank#{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
        "errors": dict(errors or {}),
    }
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_MIME
    response.headers.update(headers or {})
    return response


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """webargs nests messages by location and by field; clients want `field.path: [messages]`."""
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "body": list(messages)}
    flat: dict[str, list[str]] = {}
    items = messages.items() if isinstance(messages, dict) else enumerate(messages)
    for key, value in items:
        # marshmallow's `_schema` (e.g. an array where an object belongs) names its parent, and
        # a Dict field files errors under "key"/"value": the entry's own path reads better.
        inner = key in ("_schema", "key", "value")
        path = prefix if inner else f"{prefix}.{key}" if prefix else str(key)
        flat.update(_flatten(value, path))
    return flat


def _field_errors(error: HTTPException) -> dict[str, list[str]]:
    messages = (getattr(error, "data", None) or {}).get("messages") or {}
    flat: dict[str, list[str]] = {}
    for location, fields in messages.items():
        if location == "json" and isinstance(fields, list):
            flat["body"] = fields  # the body as a whole, e.g. invalid JSON
        else:
            flat.update(_flatten(fields))
    return flat


CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
}


def http_problem(error: HTTPException) -> Response:
    status = error.code or 500
    errors = _field_errors(error)
    if status == 413 and not errors:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        errors = {"body": [f"The body is larger than the limit of {limit} bytes."]}
    detail = "Some fields are invalid." if errors and status in (400, 422) else error.description
    # keep what the exception says about itself, such as Allow on a 405
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return problem(status, CODES.get(status, "error"), detail or "", errors, headers)


def init_app(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def _gateway(error: GatewayError) -> Response:
        return problem(error.status, error.code, error.message, error.errors, error.headers)

    @app.errorhandler(AuditUnavailable)
    def _audit(error: AuditUnavailable) -> Response:
        app.logger.error("audit append failed: %s", error.__cause__)
        detail = "The audit log cannot be written; nothing was changed or personalized."
        return problem(503, "audit_unavailable", detail)

    @app.errorhandler(PeeweeException)
    def _database(error: PeeweeException) -> Response:
        app.logger.error("database error: %s", error)
        return problem(503, "database_unavailable", "The database is unavailable.")

    @app.errorhandler(KeyringError)
    def _keyring(error: KeyringError) -> Response:
        app.logger.error("keyring error: %s", error)
        return problem(503, "keyring_unavailable", "The keyring is unavailable.")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return http_problem(error)
        app.logger.exception("unhandled error")
        return problem(500, "internal_error", "An unexpected error occurred.")
