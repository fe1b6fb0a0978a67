"""Collection: events and attributes, admitted item by item against the registry and policies."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from flask import current_app, g
from flask.views import MethodView
from marshmallow import ValidationError, fields, validate, validates

from gateway import keyring, policies
from gateway.api import examples
from gateway.api.auth import caller, roles
from gateway.api.contract import SUBJECT_ID_PARAMETER, vocabulary
from gateway.api.strict import (
    Blueprint,
    Scalar,
    StrictSchema,
    StrictString,
    UtcDateTime,
    check_subject_id,
)
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.errors import Forbidden, InvalidInput
from gateway.policy.engine import HoldingKind, admit
from gateway.policy.model import Reason, Registration
from gateway.store.clients import Role, client_purposes
from gateway.store.db import write_transaction
from gateway.store.models import Subject
from gateway.store.profiles import NewEvent, add_events, put_attributes
from gateway.store.subjects import ensure_subject

blp = Blueprint("profiles", __name__, url_prefix="/v1/subjects", description="Collection")

NAME = validate.Length(min=1, max=64)


class EventSchema(StrictSchema):
    type = StrictString(
        required=True,
        validate=NAME,
        metadata={
            "description": "The event type; its data category follows from it",
            "example": "view",
        },
    )
    item_id = StrictString(
        required=True,
        validate=validate.Length(min=1, max=256),
        metadata={"description": "The item the event is about", "example": "sku-2"},
    )
    category = StrictString(
        required=True,
        validate=validate.Length(min=1, max=256),
        metadata={"description": "The item's product category", "example": "shoes"},
    )
    at = UtcDateTime(
        required=True,
        metadata={
            "description": "When it happened; one older than its category's retention, or"
            " more than 5 minutes ahead, is refused"
        },
    )


DATABASE = {
    "description": "The registered database to store into",
    "policy_ids": "databases",
    "example": "shop_events",
}


class EventsSchema(StrictSchema):
    database = StrictString(required=True, validate=NAME, metadata=DATABASE)
    events = fields.List(
        fields.Nested(EventSchema),
        required=True,
        metadata={
            "description": "The events (at most GATEWAY_MAX_EVENTS)",
            "count_setting": "MAX_EVENTS",
        },
    )

    @validates("events")
    def _count(self, value: list[Any], **_: Any) -> None:
        most = current_app.config["MAX_EVENTS"]
        if not 1 <= len(value) <= most:
            raise ValidationError(f"Give between 1 and {most} events.")


class AttributesSchema(StrictSchema):
    database = StrictString(required=True, validate=NAME, metadata={**DATABASE, "example": "crm"})
    attributes = fields.Dict(
        keys=StrictString(validate=NAME),
        values=Scalar(),
        required=True,
        metadata={
            "description": "Attribute values by name (names of 1 to 64 characters; at most"
            " GATEWAY_MAX_ATTRIBUTES); a value replaces the one held",
            "count_setting": "MAX_ATTRIBUTES",
            "example": {"favorite_brand": "acme", "shoe_size": 42},
        },
    )

    @validates("attributes")
    def _count(self, value: dict[str, Any], **_: Any) -> None:
        most = current_app.config["MAX_ATTRIBUTES"]
        if not 1 <= len(value) <= most:
            raise ValidationError(f"Give between 1 and {most} attributes.")


class CollectionResultSchema(StrictSchema):
    accepted = fields.List(
        fields.Raw(metadata={"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
        required=True,
        metadata={"description": "What was stored: event indexes, or attribute names"},
    )
    refused = fields.Dict(
        keys=fields.String(),
        values=fields.String(validate=vocabulary(Reason)),
        required=True,
        metadata={
            "description": "What was refused, by event index (as a string) or attribute name,"
            " with the reason"
        },
    )


def _registration(database_id: str, subject_id: str) -> Registration:
    """The registration a client may write into, or a 422/403 naming the database."""
    check_subject_id(subject_id)
    registration = policies().databases.get(database_id)
    if registration is None:
        raise InvalidInput(
            "Unknown database.",
            {"database": [f"Not a registered database: '{database_id}'."]},
            code="unknown_database",
        )
    client = caller()
    if client.role == Role.APP and not set(client_purposes(client)) & set(registration.purposes):
        raise Forbidden(
            "None of the client's purposes uses this database.",
            {"database": [f"Not registered for this client's purposes: '{database_id}'."]},
            code="database_not_granted",
        )
    return registration


def _screen(
    kind: HoldingKind, items: dict[str, tuple[str, datetime]], database: Registration, now: datetime
) -> tuple[list[str], dict[str, str]]:
    """Admit or refuse each item (key -> (name, time)); returns (accepted keys, refused keys)."""
    client = caller()
    # an app writes only for its own purposes; an admin for any
    purposes = client_purposes(client) if client.role == Role.APP else None
    refused = {}
    for key, (name, at) in items.items():
        reason = admit(kind, name, database, policies(), at, now, purposes)
        if reason is not None:
            refused[key] = reason.value
    return [key for key in items if key not in refused], refused


def _is_pii(kind: HoldingKind, name: str) -> bool:
    rules = policies()
    is_event = kind is HoldingKind.EVENT
    category = rules.category_of_event(name) if is_event else rules.category_of_attribute(name)
    return category is not None and category.pii


def _collect(
    subject_id: str,
    database: Registration,
    action: Action,
    result: dict[str, Any],
    write: Callable[[Subject], None] | None,
) -> dict[str, Any]:
    """Store what was admitted and audit the call, in one transaction."""
    now = datetime.now(UTC)
    pseudonym = keyring().pseudonym(subject_id)
    with write_transaction():
        if write is not None:
            write(ensure_subject(keyring(), pseudonym, now))
        record = AuditRecord(
            actor=g.client.name,
            action=action,
            policy_hash=policies().hash,
            subject=pseudonym,
            outcome="accepted" if result["accepted"] else "refused",
            fields={"database": database.id, **result},
            request_id=g.request_id,
        )
        audit(record, now)
    return result


@blp.route("/<string:subject_id>/events", parameters=[SUBJECT_ID_PARAMETER])
class SubjectEvents(MethodView):
    @roles(Role.APP, Role.ADMIN)
    @blp.arguments(EventsSchema, example=examples.EVENTS)
    @blp.response(200, CollectionResultSchema, example=examples.EVENTS_RESULT)
    def post(self, body: dict[str, Any], subject_id: str) -> dict[str, Any]:
        """Collect events; each is stored or refused with a reason."""
        database = _registration(body["database"], subject_id)
        now = datetime.now(UTC)
        events = {str(i): e for i, e in enumerate(body["events"])}
        times = {key: (e["type"], e["at"]) for key, e in events.items()}
        accepted, refused = _screen(HoldingKind.EVENT, times, database, now)
        admitted = [_new_event(events[key]) for key in accepted]
        write = partial(_write_events, database=database.id, events=admitted) if admitted else None
        result = {"accepted": [int(key) for key in accepted], "refused": refused}
        return _collect(subject_id, database, Action.EVENTS_COLLECT, result, write)


@blp.route("/<string:subject_id>/attributes", parameters=[SUBJECT_ID_PARAMETER])
class SubjectAttributes(MethodView):
    @roles(Role.APP, Role.ADMIN)
    @blp.arguments(AttributesSchema, example=examples.ATTRIBUTES)
    @blp.response(200, CollectionResultSchema, example=examples.ATTRIBUTES_RESULT)
    def patch(self, body: dict[str, Any], subject_id: str) -> dict[str, Any]:
        """Set attributes; each is stored or refused with a reason."""
        database = _registration(body["database"], subject_id)
        now = datetime.now(UTC)
        names = {name: (name, now) for name in body["attributes"]}
        accepted, refused = _screen(HoldingKind.ATTRIBUTE, names, database, now)
        values = {
            name: (body["attributes"][name], _is_pii(HoldingKind.ATTRIBUTE, name))
            for name in accepted
        }
        write = partial(_write_attributes, database=database.id, values=values) if values else None
        result = {"accepted": sorted(accepted), "refused": refused}
        return _collect(subject_id, database, Action.ATTRIBUTES_COLLECT, result, write)


def _new_event(event: dict[str, Any]) -> NewEvent:
    pii = _is_pii(HoldingKind.EVENT, event["type"])
    return NewEvent(event["type"], event["item_id"], event["category"], event["at"], pii)


def _write_events(subject: Subject, *, database: str, events: list[NewEvent]) -> None:
    add_events(subject, database, events, keyring(), datetime.now(UTC))


def _write_attributes(
    subject: Subject, *, database: str, values: dict[str, tuple[Any, bool]]
) -> None:
    put_attributes(subject, database, values, keyring(), datetime.now(UTC))
