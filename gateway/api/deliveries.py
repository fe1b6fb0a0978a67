"""The outbox as auditors and admins see it: each message's delivery, and a retry of one that
failed. The console and the CLI call `list_deliveries_for` and `retry_delivery` too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import RAISE, fields, validate

from gateway import policies
from gateway.api import examples
from gateway.api.auth import roles
from gateway.api.contract import path_parameter, problem, vocabulary
from gateway.api.strict import Blueprint, StrictSchema, StrictString
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.errors import Conflict, NotFound
from gateway.store.clients import Role
from gateway.store.db import write_transaction
from gateway.store.models import Delivery
from gateway.store.outbox import (
    DeliveryStatus,
    MessageType,
    find_delivery,
    list_deliveries,
    retry,
)

blp = Blueprint("deliveries", __name__, url_prefix="/v1/deliveries", description="Deliveries")

MESSAGE_ID_PATTERN = "^msg_[0-9a-f]{32}$"
DELIVERY_ID_PARAMETER = path_parameter(
    "delivery_id",
    "A message's id (its `webhook-id`), as GET /v1/deliveries lists it.",
    {"type": "string", "pattern": MESSAGE_ID_PATTERN},
    "msg_2f1c0e8a9b7d4c3e8f6a5b4c3d2e1f00",
)


class DeliveryArgs(StrictSchema):
    recipient = StrictString(
        load_default=None,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Only this recipient's messages"},
    )
    status = StrictString(
        load_default=None,
        validate=validate.OneOf([s.value for s in DeliveryStatus]),
        metadata={"description": "Only messages in this state"},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "How many, newest first"},
    )


class DeliverySchema(StrictSchema):
    id = fields.String(
        required=True,
        metadata={
            "description": "The message id, sent as `webhook-id`",
            "pattern": MESSAGE_ID_PATTERN,
        },
    )
    recipient = fields.String(required=True, metadata={"description": "The recipient's id"})
    type = fields.String(
        required=True, validate=vocabulary(MessageType), metadata={"description": "What it says"}
    )
    subject = fields.String(
        required=True, metadata={"description": "The subject's pseudonym (never the raw id)"}
    )
    status = fields.String(
        required=True,
        validate=vocabulary(DeliveryStatus),
        metadata={"description": "pending (waiting or retrying), delivered, or failed"},
    )
    attempts = fields.Integer(required=True, metadata={"description": "Attempts made so far"})
    created_at = fields.AwareDateTime(
        required=True, metadata={"description": "When the change it reports was made"}
    )
    next_attempt_at = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When it is next sent (null once delivered or failed)"},
    )
    last_error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "What went wrong at the last attempt (`HTTP 500`, `timeout`)"},
    )
    finished_at = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When it was delivered or failed"},
    )


class DeliveryListSchema(StrictSchema):
    deliveries = fields.List(
        fields.Nested(DeliverySchema),
        required=True,
        metadata={"description": "Messages, newest first"},
    )


def delivery_view(message: Delivery) -> dict[str, Any]:
    """A stored message as the API shows it."""
    pending = message.status == DeliveryStatus.PENDING.value
    return {
        "id": message.message_id,
        "recipient": message.recipient,
        "type": message.type,
        "subject": message.subject,
        "status": message.status,
        "attempts": message.attempts,
        "created_at": message.created_at,
        "next_attempt_at": message.next_attempt_at if pending else None,
        "last_error": message.last_error,
        "finished_at": message.finished_at,
    }


def list_deliveries_for(
    recipient: str | None = None, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The messages the API, the console and the CLI list."""
    return [delivery_view(m) for m in list_deliveries(recipient, status, limit)]


def retry_delivery(message_id: str, actor: str, request_id: str | None) -> dict[str, Any]:
    """Queue a failed message again, due now, and audit who did (API, console and CLI)."""
    now = datetime.now(UTC)
    with write_transaction():
        message = find_delivery(message_id)
        if message is None:
            raise NotFound(
                "Unknown delivery.",
                {"delivery_id": [f"No such message: '{message_id}'."]},
                code="unknown_delivery",
            )
        if message.status != DeliveryStatus.FAILED.value:
            raise Conflict(
                "Only a failed delivery can be retried.",
                {"delivery_id": [f"The message is {message.status}."]},
                code="not_failed",
            )
        message = retry(message, now)
        record = AuditRecord(
            actor=actor,
            action=Action.DELIVERY_RETRY,
            policy_hash=policies().hash,
            subject=message.subject,
            outcome="queued",
            fields={"recipient": message.recipient, "message_id": message_id},
            request_id=request_id,
        )
        audit(record, now)
    return delivery_view(message)


@blp.route("")
class Deliveries(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.arguments(DeliveryArgs, location="query", unknown=RAISE)
    @blp.response(200, DeliveryListSchema, example=examples.DELIVERIES)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Messages to the recipients, newest first, by recipient and status."""
        return {"deliveries": list_deliveries_for(args["recipient"], args["status"], args["limit"])}


@blp.route("/<string:delivery_id>/retry", parameters=[DELIVERY_ID_PARAMETER])
class DeliveryRetry(MethodView):
    @roles(Role.ADMIN)
    @blp.response(200, DeliverySchema, example=examples.DELIVERY_RETRIED)
    @blp.alt_response(
        **problem(
            404,
            "unknown_delivery",
            "Unknown delivery.",
            {"delivery_id": ["No such message: 'msg_00000000000000000000000000000000'."]},
        )
    )
    @blp.alt_response(
        **problem(
            409,
            "not_failed",
            "Only a failed delivery can be retried.",
            {"delivery_id": ["The message is delivered."]},
        )
    )
    def post(self, delivery_id: str) -> dict[str, Any]:
        """Send a failed message again now, with the same id (the recipient may drop repeats)."""
        return retry_delivery(delivery_id, g.client.name, g.request_id)
