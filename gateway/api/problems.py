"""The one HTTP mapping of errors: everything a request can fail with becomes problem+json.

    as_gateway_error(exc)   # a GatewayError for any exception (werkzeug, database, unexpected)
    problem(error)          # its RFC 9457 response

A `GatewayError` answers for itself; werkzeug's HTTP errors keep their status and name the bad
fields; a database error is 503 `database_unavailable` and its text never reaches the client;
anything else is a logged 500 without a traceback in the response.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, jsonify
from peewee import PeeweeException
from werkzeug.exceptions import HTTPException

from gateway.errors import GatewayError, Unavailable
from gateway.store.db import unavailable

PROBLEM_MIME = "application/problem+json"

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


def _from_http(error: HTTPException) -> GatewayError:
    status = error.code or 500
    errors = _field_errors(error)
    if status == 413 and not errors:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        errors = {"body": [f"The body is larger than the limit of {limit} bytes."]}
    detail = "Some fields are invalid." if errors and status in (400, 422) else error.description
    # keep what the exception says about itself, such as Allow on a 405
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    code = CODES.get(status, "error")
    return GatewayError(detail or "", errors, status=status, code=code, headers=headers)


def as_gateway_error(error: BaseException) -> GatewayError:
    """The one place that decides what any exception means to a client."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, HTTPException):
        return _from_http(error)
    if isinstance(error, PeeweeException):
        return unavailable(error)
    unexpected = GatewayError(f"{type(error).__name__}: {error}")
    unexpected.client_message = "An unexpected error occurred."
    return unexpected


def problem(error: GatewayError) -> Response:
    body: dict[str, Any] = {
        "type": f"about:blank#{error.code}",
        "title": HTTPStatus(error.status).phrase,
        "status": error.status,
        "code": error.code,
        "detail": error.client_message or error.message,
        "errors": error.errors,
    }
    response = jsonify(body)
    response.status_code = error.status
    response.mimetype = PROBLEM_MIME
    response.headers.update(error.headers)
    return response


def http_problem(error: HTTPException) -> Response:
    return problem(_from_http(error))


def reported(error: Exception) -> GatewayError:
    """`as_gateway_error(error)`, with a server-side failure's cause logged (never shown)."""
    mapped = as_gateway_error(error)
    if mapped.status >= 500:
        cause = error.__cause__ or error
        logger = current_app.logger
        level = logger.error if isinstance(mapped, Unavailable) else logger.exception
        level("%s: %s: %s", mapped.code, type(cause).__name__, cause)
    return mapped


def init_app(app: Flask) -> None:
    @app.errorhandler(Exception)
    def _any(error: Exception) -> Response:
        return problem(reported(error))
