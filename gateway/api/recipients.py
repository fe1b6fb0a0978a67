"""A recipient's resync: the current consent state of every subject, queued for it alone, for a
recipient that is new or lost its data."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g
from flask.views import MethodView
from marshmallow import fields

from gateway import keyring, policies
from gateway.api import examples
from gateway.api.auth import roles
from gateway.api.contract import path_parameter, problem
from gateway.api.strict import Blueprint, StrictSchema
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.errors import NotFound
from gateway.policy.model import Recipient
from gateway.store.clients import Role
from gateway.store.db import write_transaction
from gateway.store.resync import ResyncCount, resync_batch

blp = Blueprint("recipients", __name__, url_prefix="/v1/recipients", description="Recipients")

RECIPIENT_PARAMETER = path_parameter(
    "recipient_id",
    "A recipient (GET /v1/registry/recipients); 404 for any other.",
    {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
    "mail_service",
)


class ResyncSchema(StrictSchema):
    recipient = fields.String(required=True, metadata={"description": "The recipient's id"})
    subjects = fields.Integer(required=True, metadata={"description": "Subjects looked at"})
    messages = fields.Integer(
        required=True, metadata={"description": "`consent.changed` messages queued"}
    )
    skipped = fields.Integer(
        required=True,
        metadata={
            "description": "Subjects that cannot be named: no consent change since resyncs"
            " came, or erased"
        },
    )


def _recipient(recipient_id: str) -> Recipient:
    found = policies().recipients.get(recipient_id)
    if found is None:
        raise NotFound(
            "Unknown recipient.",
            {"recipient_id": [f"Not a recipient: '{recipient_id}'."]},
            code="unknown_recipient",
        )
    return found


def resync(recipient: Recipient, actor: str, request_id: str | None) -> dict[str, Any]:
    """Queue every subject's state for the recipient, batch by batch, then audit the count."""
    now, count, after = datetime.now(UTC), ResyncCount(), 0
    batch = int(current_app.config["RESYNC_BATCH"])
    while after := resync_batch(recipient, policies(), keyring(), after, batch, now, count):
        pass
    record = AuditRecord(
        actor=actor,
        action=Action.RECIPIENT_RESYNC,
        policy_hash=policies().hash,
        outcome="queued",
        fields={"recipient": recipient.id, **asdict(count)},
        request_id=request_id,
    )
    with write_transaction():
        audit(record, datetime.now(UTC))
    return {"recipient": recipient.id, **asdict(count)}


@blp.route("/<string:recipient_id>/resync", parameters=[RECIPIENT_PARAMETER])
class RecipientResync(MethodView):
    @roles(Role.ADMIN)
    @blp.response(200, ResyncSchema, example=examples.RESYNC)
    @blp.alt_response(
        **problem(
            404,
            "unknown_recipient",
            "Unknown recipient.",
            {"recipient_id": ["Not a recipient: 'crm'."]},
        )
    )
    def post(self, recipient_id: str) -> dict[str, Any]:
        """Queue every subject's current consent state for a new or recovered recipient."""
        return resync(_recipient(recipient_id), g.client.name, g.request_id)
