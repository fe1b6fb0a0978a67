"""The OpenAPI contract around the views: errors are problem+json, and every operation declares
the statuses that the layers around its view answer with.

    api = GatewayApi(app, spec_kwargs={"extra_plugins": [ErrorResponses()]})
    describe_fields(api.ma_plugin, app)   # map keys; the enums and bounds this app enforces

    @blp.alt_response(**problem(409, "purge_running", "Another purge is running."))

Around every view: a rate limit (429), a database connection (503); under /v1/ an API key (401)
and a role (403); with a body, JSON no larger than the limit (400, 413, 415). A view declares
what it raises itself (404, 409, 422 ...) with `problem`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from apispec import BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import fields, validate

from gateway.api.problems import PROBLEM_MIME
from gateway.api.strict import SUBJECT_ID_MAX, SUBJECT_ID_PATTERN, StrictSchema
from gateway.policy.documents import IDENTIFIER

AUTHENTICATED_PREFIX = "/v1/"
WRITE_METHODS = ("post", "put", "patch")

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
REQUEST_ID_HEADER = "REQUEST_ID"  # the name of its component
REQUEST_ID = {
    "description": "The request's id, also in its audit entry: the caller's X-Request-Id when it"
    " is 1 to 64 of A-Z a-z 0-9 . _ -, else a new one.",
    "required": True,
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}
CHALLENGE = {
    "description": "How to authenticate: a bearer API key.",
    "required": True,
    "schema": {"type": "string", "example": 'Bearer realm="gateway"'},
}
RETRY_AFTER = {
    "description": "Seconds until the client's rate limit admits requests again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}

# What each status means wherever it is declared without a description of its own.
MEANINGS: dict[int, tuple[str, str, str]] = {
    400: ("bad_request", "The body is not JSON the gateway reads.", "Invalid JSON body."),
    401: (
        "unauthorized",
        "No valid API key: send `Authorization: Bearer <key>`.",
        "A valid API key is required (Authorization: Bearer <key>).",
    ),
    403: (
        "forbidden",
        "The client's role, or the purposes it was granted, do not allow this.",
        "This needs the role auditor, admin; the client is app.",
    ),
    404: ("not_found", "Nothing is found at this path.", "Not Found"),
    409: ("conflict", "The request conflicts with the current state.", "Conflict"),
    413: (
        "body_too_large",
        "The body is larger than the gateway's limit (GATEWAY_MAX_CONTENT_LENGTH).",
        "The body is larger than the limit of 1048576 bytes.",
    ),
    415: (
        "unsupported_media_type",
        "A body that is not `application/json`.",
        "The body must be JSON (Content-Type: application/json).",
    ),
    422: (
        "invalid_input",
        "Invalid input: `errors` names each bad field (`body` for the body as a whole, a dotted"
        " path for a field, the parameter's name for a query or path parameter).",
        "Some fields are invalid.",
    ),
    429: (
        "too_many_requests",
        "The client sent more requests than its rate limit admits; retry after `Retry-After`"
        " seconds.",
        "1200 per 1 minute",
    ),
    503: (
        "unavailable",
        "The database, the keyring or the audit log is unavailable; nothing was changed or"
        " personalized.",
        "The database is unavailable.",
    ),
}
HEADERS = {401: {"WWW-Authenticate": CHALLENGE}, 429: {"Retry-After": RETRY_AFTER}}


def vocabulary(values: Iterable[str]) -> validate.OneOf:
    """A closed vocabulary (the members of a str enum), for a response field's `validate`:
    the document lists it as the field's enum."""
    return validate.OneOf([str(value) for value in values])


def path_parameter(
    name: str, description: str, schema: dict[str, Any], example: str
) -> dict[str, Any]:
    """A path parameter for `Blueprint.route(parameters=...)`, in place of Flask's bare one."""
    return {
        "in": "path",
        "name": name,
        "required": True,
        "description": description,
        "schema": schema,
        "example": example,
    }


SUBJECT_ID_PARAMETER = path_parameter(
    "subject_id",
    "The subject's id in the calling app; the gateway files it under a keyed pseudonym and"
    " holds the id itself only encrypted with the subject's own key.",
    {
        "type": "string",
        "minLength": 1,
        "maxLength": SUBJECT_ID_MAX,
        "pattern": SUBJECT_ID_PATTERN,
    },
    "alice",
)
POLICY_ID = {"type": "string", "pattern": IDENTIFIER.regex.pattern}
PURPOSE_PARAMETER = path_parameter(
    "purpose",
    "A purpose of the active policy set (GET /v1/policies); 404 for any other.",
    POLICY_ID,
    "recommendations",
)
DATABASE_PARAMETER = path_parameter(
    "database_id",
    "A registered database (GET /v1/registry/databases); 404 for any other.",
    POLICY_ID,
    "shop_events",
)
POLICY_HASH = {
    "description": "The content hash of the policy set in force (policies/ and registry/)",
    "pattern": "^sha256:[0-9a-f]{64}$",
    "example": "sha256:2542e5e522c56332453c14db3a202a2c6c87a57d8bd5659b1162173ae9751cae",
}


class ProblemSchema(StrictSchema):
    """An RFC 9457 problem document."""

    type = fields.String(
        required=True,
        metadata={"description": "`about:blank#` and the code", "example": "about:blank#not_found"},
    )
    title = fields.String(
        required=True, metadata={"description": "The HTTP status phrase", "example": "Not Found"}
    )
    status = fields.Integer(
        required=True, metadata={"description": "The HTTP status code", "example": 404}
    )
    code = fields.String(
        required=True,
        metadata={
            "description": "What went wrong, machine-readable (e.g. invalid_input,"
            " purpose_not_granted, audit_unavailable)",
            "example": "not_found",
        },
    )
    detail = fields.String(
        required=True, metadata={"description": "What went wrong, for a person to read"}
    )
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        required=True,
        metadata={
            "description": "Messages per field at fault (a dotted path into the body, a"
            " parameter's name, or `body`); empty when no one field is at fault",
            "example": {"candidates.0.id": ["Missing data for required field."]},
        },
    )


def problem_example(
    status: int, code: str, detail: str, errors: Mapping[str, list[str]] | None = None
) -> dict[str, Any]:
    """A problem document as `gateway.api.problems.problem` writes it."""
    return {
        "type": f"about:blank#{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
        "errors": dict(errors or {}),
    }


def problem(
    status: int,
    code: str,
    description: str,
    errors: Mapping[str, list[str]] | None = None,
    *,
    detail: str | None = None,
) -> dict[str, Any]:
    """`Blueprint.alt_response` arguments for a problem+json answer a view gives itself; the
    example's detail is the description unless given."""
    return {
        "status_code": status,
        "schema": ProblemSchema,
        "content_type": PROBLEM_MIME,
        "description": description,
        "example": problem_example(status, code, detail or description, errors),
        "headers": {"X-Request-Id": REQUEST_ID_HEADER},
    }


INVALID_SUBJECT_ID = problem(
    422,
    "invalid_input",
    "Invalid subject id.",
    {"subject_id": ["Must not contain whitespace, '/' or U+FFFD (bytes that were not UTF-8)."]},
)


def problem_response(status: HTTPStatus) -> dict[str, Any]:
    """The component response of an error status, with its meaning and an example."""
    code, description, detail = MEANINGS.get(
        status, ("error", status.phrase + ".", status.description or status.phrase)
    )
    headers: dict[str, Any] = {"X-Request-Id": REQUEST_ID_HEADER, **HEADERS.get(status, {})}
    return {
        "description": description,
        "content": {
            PROBLEM_MIME: {
                "schema": ProblemSchema,
                "example": problem_example(status, code, detail),
            }
        },
        "headers": headers,
    }


def common_statuses(path: str, method: str, operation: Mapping[str, Any]) -> list[int]:
    """The statuses the layers around a view may answer with, whatever the view does."""
    statuses = [429, 503]  # every route is rate limited and connects to the database
    if path.startswith(AUTHENTICATED_PREFIX):
        statuses += [401, 403]
        if method in WRITE_METHODS:
            statuses.append(415)  # any body that is not JSON, even where none is read
    if "requestBody" in operation:
        statuses += [400, 413, 415]
    if "{" in path:
        statuses.append(404)  # an id the path names may match no route or no resource
    return sorted(set(statuses))


class ErrorResponses(BasePlugin):
    """An apispec plugin declaring `common_statuses` on every operation, and the request id
    header on every response."""

    def operation_helper(
        self,
        path: str | None = None,
        operations: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for method, operation in (operations or {}).items():
            responses = {str(k): v for k, v in operation.get("responses", {}).items()}
            for status in common_statuses(path or "", method, operation):
                responses.setdefault(str(status), HTTPStatus(status).name)
            for response in responses.values():
                if isinstance(response, dict):
                    response.setdefault("headers", {})["X-Request-Id"] = REQUEST_ID_HEADER
            operation["responses"] = responses


def map_keys(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """An attribute function: a map's keys as the key field validates them (apispec states only
    the values)."""
    if isinstance(field, fields.Dict) and field.key_field is not None:
        keys = self.field2property(field.key_field)
        return {"propertyNames": keys} if len(keys) > 1 else {}
    return {}


def describe_fields(plugin: MarshmallowPlugin, app: Flask) -> None:
    """Let the document say what fields enforce beyond apispec's reach: a map's keys, and what
    this deployment enforces: `metadata={"policy_ids": "purposes"}` lists the policy set's
    purposes (or databases) as an enum, and `{"count_setting": "MAX_EVENTS"}` bounds a list or
    map by that setting."""
    active = app.extensions["gateway.policies"]
    config = app.config

    def deployment_properties(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        section = field.metadata.get("policy_ids")
        if section is not None:
            found["enum"] = sorted(getattr(active, section))
        setting = field.metadata.get("count_setting")
        if setting is not None:
            kind = "Properties" if isinstance(field, fields.Dict) else "Items"
            found.update({f"min{kind}": 1, f"max{kind}": int(config[setting])})
        return found

    converter = plugin.converter
    assert converter is not None, "the plugin is initialised with the spec"
    converter.add_attribute_function(map_keys)
    converter.add_attribute_function(deployment_properties)
