"""Collection: events and attributes, admitted item by item against the registry and policies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app, g
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError, fields, validate, validates

from gateway import keyring, policies
from gateway.api.auth import caller, roles
from gateway.api.strict import Scalar, StrictSchema, check_subject_id
from gateway.audit.chain import Action, AuditRecord, append
from gateway.errors import GatewayError
from gateway.policy.engine import HoldingKind, admit
from gateway.policy.model import Registration
from gateway.store.clients import Role, client_purposes
from gateway.store.db import write_transaction
from gateway.store.profiles import NewEvent, add_events, put_attributes
from gateway.store.subjects import ensure_subject

blp = Blueprint("profiles", __name__, url_prefix="/v1/subjects", description="Collection")

NAME = validate.Length(min=1, max=64)


class EventSchema(StrictSchema):
    type = fields.String(required=True, validate=NAME)
    item_id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    category = fields.String(required=True, validate=validate.Length(min=1, max=256))
    at = fields.AwareDateTime(required=True)


class EventsSchema(StrictSchema):
    database = fields.String(required=True, validate=NAME)
    events = fields.List(fields.Nested(EventSchema), required=True)

    @validates("events")
    def _count(self, value: list[Any], **_: Any) -> None:
        most = current_app.config["MAX_EVENTS"]
        if not 1 <= len(value) <= most:
            raise ValidationError(f"Give between 1 and {most} events.")


class AttributesSchema(StrictSchema):
    database = fields.String(required=True, validate=NAME)
    attributes = fields.Dict(keys=fields.String(validate=NAME), values=Scalar(), required=True)

    @validates("attributes")
    def _count(self, value: dict[str, Any], **_: Any) -> None:
        most = current_app.config["MAX_ATTRIBUTES"]
        if not 1 <= len(value) <= most:
            raise ValidationError(f"Give between 1 and {most} attributes.")


class CollectionResultSchema(StrictSchema):
    accepted = fields.List(fields.Raw())
    refused = fields.Dict(keys=fields.String(), values=fields.String())


def _registration(database_id: str) -> Registration:
    """The registration a client may write into, or a 422/403 naming the database."""
    registration = policies().databases.get(database_id)
    if registration is None:
        raise GatewayError(
            422,
            "unknown_database",
            "Unknown database.",
            {"database": [f"Not a registered database: '{database_id}'."]},
        )
    client = caller()
    if client.role == Role.APP and not set(client_purposes(client)) & set(registration.purposes):
        raise GatewayError(
            403,
            "database_not_granted",
            "None of the client's purposes uses this database.",
            {"database": [f"Not registered for this client's purposes: '{database_id}'."]},
        )
    return registration


def _audit(action: Action, pseudonym: str, result: dict[str, Any], database: str) -> AuditRecord:
    return AuditRecord(
        actor=g.client.name,
        action=action,
        policy_hash=policies().hash,
        subject=pseudonym,
        outcome="refused" if not result["accepted"] else "accepted",
        fields={"database": database, **result},
        request_id=g.request_id,
    )


@blp.route("/<string:subject_id>/events")
class SubjectEvents(MethodView):
    @roles(Role.APP, Role.ADMIN)
    @blp.arguments(EventsSchema)
    @blp.response(200, CollectionResultSchema)
    def post(self, body: dict[str, Any], subject_id: str) -> dict[str, Any]:
        """Collect events; each is stored or refused with a reason."""
        registration = _registration(body["database"])
        check_subject_id(subject_id)
        now, rules = datetime.now(UTC), policies()
        accepted: list[int] = []
        refused: dict[str, str] = {}
        admitted: list[NewEvent] = []
        for index, event in enumerate(body["events"]):
            reason = admit(HoldingKind.EVENT, event["type"], registration, rules, event["at"], now)
            if reason is not None:
                refused[str(index)] = reason.value
                continue
            category = rules.category_of_event(event["type"])
            assert category is not None
            accepted.append(index)
            admitted.append(
                NewEvent(
                    event["type"], event["item_id"], event["category"], event["at"], category.pii
                )
            )
        result = {"accepted": accepted, "refused": refused}
        pseudonym = keyring().pseudonym(subject_id)
        with write_transaction():
            if admitted:
                subject = ensure_subject(keyring(), pseudonym, now)
                add_events(subject, registration.id, admitted, keyring(), now)
            append(_audit(Action.EVENTS_COLLECT, pseudonym, result, registration.id), now)
        return result


@blp.route("/<string:subject_id>/attributes")
class SubjectAttributes(MethodView):
    @roles(Role.APP, Role.ADMIN)
    @blp.arguments(AttributesSchema)
    @blp.response(200, CollectionResultSchema)
    def patch(self, body: dict[str, Any], subject_id: str) -> dict[str, Any]:
        """Set attributes; each is stored or refused with a reason."""
        registration = _registration(body["database"])
        check_subject_id(subject_id)
        now, rules = datetime.now(UTC), policies()
        values: dict[str, tuple[Any, bool]] = {}
        refused: dict[str, str] = {}
        for name, value in body["attributes"].items():
            reason = admit(HoldingKind.ATTRIBUTE, name, registration, rules, now, now)
            category = rules.category_of_attribute(name)
            if reason is not None or category is None:
                refused[name] = reason.value if reason else "unknown_attribute"
                continue
            values[name] = (value, category.pii)
        result = {"accepted": sorted(values), "refused": refused}
        pseudonym = keyring().pseudonym(subject_id)
        with write_transaction():
            if values:
                subject = ensure_subject(keyring(), pseudonym, now)
                put_attributes(subject, registration.id, values, keyring(), now)
            append(_audit(Action.ATTRIBUTES_COLLECT, pseudonym, result, registration.id), now)
        return result
