"""Strict marshmallow fields: a wrong JSON type is an error, never silently coerced."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from gateway.errors import InvalidInput

SUBJECT_ID = [
    validate.Length(min=1, max=256),
    validate.Regexp(r"^[^\s/]+$", error="Must not contain whitespace or '/'."),
]
SubjectIdField = fields.String(required=True, validate=SUBJECT_ID)


def check_subject_id(subject_id: str) -> None:
    """Validate a subject id taken from the URL path, naming the field on error."""
    try:
        fields.String(validate=SUBJECT_ID).deserialize(subject_id)
    except ValidationError as exc:
        raise InvalidInput("Invalid subject id.", {"subject_id": list(exc.messages)}) from exc


class StrictBoolean(fields.Boolean):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean (true or false).")
        return value


class StrictFloat(fields.Float):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Not a valid number.")
        return super()._deserialize(value, attr, data, **kwargs)


class Scalar(fields.Field):
    """A string (at most 512 characters), number or boolean."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and len(value) <= 512:
            return value
        if isinstance(value, bool | int | float):
            return value
        raise ValidationError("Must be a string of at most 512 characters, a number or a boolean.")


class StrictSchema(Schema):
    """Unknown fields are errors (marshmallow's default RAISE, stated so it stays)."""

    class Meta:
        unknown = "raise"


def strict_int(**kwargs: Any) -> fields.Integer:
    return fields.Integer(strict=True, **kwargs)
