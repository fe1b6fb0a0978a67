"""Strict input: a wrong JSON type is an error, never silently coerced, and a value the gateway
cannot hold (NUL, a lone surrogate, a date outside UTC's calendar, an infinite or oversized
number) is refused by the field that received it; JSON nested too deep is a 400 naming `body`.

    blp = Blueprint("things", __name__)   # bodies read by the app's StrictJSONProvider

    class ThingSchema(StrictSchema):
        name = StrictString(required=True)
        at = UtcDateTime(required=True)
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import flask_smorest
from flask import Request, current_app
from flask.json.provider import DefaultJSONProvider
from flask_smorest.utils import resolve_schema_instance
from marshmallow import Schema, ValidationError, fields, validate
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from gateway.errors import GatewayError, InvalidInput

# No field holds an integer beyond 64 bits (the databases' integers): a longer literal is read
# as an infinity, which every number field refuses by name. int() would take quadratic time on
# it or fail with a bare ValueError past 4300 digits.
MAX_INT_CHARS = len(str(-(2**63)))
# The integers every JSON reader holds exactly (RFC 7493, I-JSON).
MAX_EXACT_INT = 2**53 - 1


def check_text(value: str) -> None:
    """Refuse NUL (PostgreSQL text cannot hold it) and lone surrogates (UTF-8 cannot)."""
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("Must be valid Unicode text, without lone surrogates.") from exc


class StrictString(fields.String):
    """A string of valid Unicode text, without NUL."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        check_text(text)
        return text


SUBJECT_ID_MAX = 256
# No whitespace (what Python's \s matches, spelled out so that the JSON Schema regexes of the
# OpenAPI document, which are ECMA-262's, mean the same), no '/', and no U+FFFD: bytes of a URL
# that are not UTF-8 arrive as U+FFFD, and two different ids would share one pseudonym.
WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SUBJECT_ID_PATTERN = rf"^[^{WHITESPACE}/\ufffd]+$"
SUBJECT_ID = [
    validate.Length(min=1, max=SUBJECT_ID_MAX),
    validate.Regexp(
        SUBJECT_ID_PATTERN,
        error="Must not contain whitespace, '/' or U+FFFD (bytes that were not UTF-8).",
    ),
]
SubjectIdField = StrictString(
    required=True,
    validate=SUBJECT_ID,
    metadata={
        "description": "The subject's id in the calling app; the gateway files it under a keyed"
        " pseudonym and holds the id itself only encrypted with the subject's own key",
        "example": "alice",
    },
)


def check_subject_id(subject_id: str) -> None:
    """Validate a subject id taken from the URL path, naming the field on error."""
    try:
        StrictString(validate=SUBJECT_ID).deserialize(subject_id)
    except ValidationError as exc:
        raise InvalidInput("Invalid subject id.", {"subject_id": list(exc.messages)}) from exc


class UtcDateTime(fields.AwareDateTime):
    """A date and time with an offset that also exists in UTC (year 1 to 9999 there too)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment.astimezone(UTC)
        except OverflowError as exc:
            raise ValidationError("Must be representable in UTC (years 1 to 9999).") from exc
        return moment


class StrictBoolean(fields.Boolean):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean (true or false).")
        return value


class StrictInteger(fields.Integer):
    """A JSON number without a fractional part (2 or 2.0, both integers to JSON Schema), never a
    string or a boolean."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(int(value), attr, data, **kwargs)


class StrictFloat(fields.Float):
    """A finite JSON number (marshmallow's Float refuses NaN and infinities by default)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Not a valid number.")
        return super()._deserialize(value, attr, data, **kwargs)


class Scalar(fields.Field):
    """A string (at most 512 characters), a number every JSON reader holds, or a boolean."""

    # what the OpenAPI document says of it
    SCHEMA: dict[str, Any] = {
        "oneOf": [
            {"type": "string", "maxLength": 512},
            {"type": "number", "description": f"Finite; if an integer, within ±{MAX_EXACT_INT}"},
            {"type": "boolean"},
        ]
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {**self.SCHEMA, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and len(value) <= 512:
            check_text(value)
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and abs(value) <= MAX_EXACT_INT:
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        if isinstance(value, int | float):
            raise ValidationError(f"Must be a finite number; integers within ±{MAX_EXACT_INT}.")
        raise ValidationError("Must be a string of at most 512 characters, a number or a boolean.")


class StrictSchema(Schema):
    """Unknown fields are errors (marshmallow's default RAISE, stated so it stays)."""

    class Meta:
        unknown = "raise"


def _json_int(text: str) -> int | float:
    """A JSON integer, or a signed infinity for one longer than any 64-bit integer."""
    if len(text) <= MAX_INT_CHARS:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with integers past 64 bits out of range and too deep a nesting a 400."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_int", _json_int)
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:
            raise GatewayError(
                "The body is nested too deeply.",
                {"body": ["JSON nested deeper than the gateway reads."]},
                status=400,
                code="bad_request",
            ) from exc


class JsonArgumentsParser(FlaskParser):
    """webargs' parser, reading bodies with the app's JSON provider instead of `json.loads`."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        # strict UTF-8 as webargs does: a decoding error is its 400 "Invalid JSON body."
        return current_app.json.loads(req.get_data(cache=True).decode("utf-8"))


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint whose arguments are read by JsonArgumentsParser, each by one
    schema instance for every request."""

    ARGUMENTS_PARSER = JsonArgumentsParser()

    def arguments(self, schema: type[Schema] | Schema, **kwargs: Any) -> Any:
        # Given a class, webargs builds the schema for each request: every field copied, every
        # nested schema built again. A schema keeps no state between loads, so one serves all.
        return super().arguments(resolve_schema_instance(schema), **kwargs)
