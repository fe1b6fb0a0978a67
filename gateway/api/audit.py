"""The audit log for compliance officers: entries, verification, exports, summary, checkpoints."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from flask import Response, g, stream_with_context
from flask.views import MethodView
from marshmallow import RAISE, ValidationError, fields, validate, validates_schema

from gateway import keyring, policies
from gateway.api.auth import roles
from gateway.api.strict import (
    SUBJECT_ID,
    Blueprint,
    StrictBoolean,
    StrictSchema,
    StrictString,
    UtcDateTime,
)
from gateway.audit import audited_export, chain_now, checkpoint_now, verify_database
from gateway.audit.chain import Action, AuditRecord
from gateway.audit.export import FORMATS
from gateway.audit.queries import EntryFilter, find_entries, summary
from gateway.errors import InvalidInput
from gateway.store.clients import Role

blp = Blueprint("audit", __name__, url_prefix="/v1/audit", description="Audit log")

READERS = (Role.AUDITOR, Role.ADMIN)


class WindowArgs(StrictSchema):
    since = UtcDateTime(metadata={"description": "inclusive"})
    until = UtcDateTime(metadata={"description": "exclusive"})

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        if "since" in data and "until" in data and data["since"] >= data["until"]:
            raise ValidationError("Must be later than since.", "until")


class EntriesArgs(WindowArgs):
    subject_id = StrictString(validate=SUBJECT_ID)
    purpose = StrictString(validate=validate.Length(min=1, max=64))
    action = StrictString(validate=validate.OneOf([a.value for a in Action]))
    outcome = StrictString(validate=validate.Length(min=1, max=32))
    client = StrictString(validate=validate.Length(min=1, max=128))
    cursor = StrictString(validate=validate.Length(min=1, max=64))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class ExportArgs(WindowArgs):
    format = StrictString(load_default="jsonl", validate=validate.OneOf(FORMATS))


class EntrySchema(StrictSchema):
    seq = fields.Integer()
    at = fields.String()
    actor = fields.String()
    action = fields.String()
    subject = fields.String(allow_none=True)
    purpose = fields.String(allow_none=True)
    outcome = fields.String(allow_none=True)
    reasons = fields.List(fields.String())
    fields_ = fields.Dict(data_key="fields")
    policy_hash = fields.String()
    request_id = fields.String(allow_none=True)
    decision_id = fields.String(allow_none=True)
    prev_hash = fields.String()
    hash = fields.String()
    scheme = fields.Integer(allow_none=True)
    entry_id = fields.String(allow_none=True)


class EntriesSchema(StrictSchema):
    entries = fields.List(fields.Nested(EntrySchema))
    next_cursor = fields.String(allow_none=True)


class VerificationSchema(StrictSchema):
    ok = StrictBoolean()
    entries = fields.Integer()
    first_bad_seq = fields.Integer(allow_none=True)
    problem = fields.String(allow_none=True)
    checkpoints = fields.Integer()
    last_seq = fields.Integer(allow_none=True)


class CheckpointSchema(StrictSchema):
    seq = fields.Integer()
    hash = fields.String()
    at = fields.String()
    key_id = fields.String()
    signature = fields.String()
    every = fields.Integer(allow_none=True)


class SummarySchema(StrictSchema):
    since = fields.AwareDateTime(allow_none=True)
    until = fields.AwareDateTime(allow_none=True)
    entries = fields.Integer()
    decisions = fields.Dict(keys=fields.String(), values=fields.Dict())
    refusals = fields.Dict(keys=fields.String(), values=fields.Integer())
    consents = fields.Dict(keys=fields.String(), values=fields.Dict())
    purges = fields.Dict()
    erasures = fields.Integer()
    actions = fields.Dict(keys=fields.String(), values=fields.Integer())


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def _after(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        kind, _, seq = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        # a seq past SQLite's 64-bit integers names no position (and would be a 500)
        if kind == "seq" and seq.isdigit() and int(seq) < 2**63:
            return int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidInput("Invalid cursor.", {"cursor": ["Not a cursor."]})


def _record(action: Action, **fields: Any) -> AuditRecord:
    return AuditRecord(
        actor=g.client.name,
        action=action,
        policy_hash=policies().hash,
        outcome="recorded",
        fields=fields,
        request_id=g.request_id,
    )


@blp.route("/entries")
class Entries(MethodView):
    @roles(*READERS)
    @blp.arguments(EntriesArgs, location="query", unknown=RAISE)
    @blp.response(200, EntriesSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Entries in seq order, filtered; pass `next_cursor` back as `cursor` for more."""
        subject_id = args.get("subject_id")
        where = EntryFilter(
            subject=keyring().pseudonym(subject_id) if subject_id else None,
            purpose=args.get("purpose"),
            action=args.get("action"),
            outcome=args.get("outcome"),
            actor=args.get("client"),
            since=args.get("since"),
            until=args.get("until"),
        )
        chain_now(wait=True)  # every committed entry, in the chain
        page = find_entries(where, after_seq=_after(args.get("cursor")), limit=args["limit"])
        entries = [{**e, "fields_": e.pop("fields")} for e in page.entries]
        cursor = _cursor(page.next_after) if page.next_after is not None else None
        return {"entries": entries, "next_cursor": cursor}


@blp.route("/verify")
class Verify(MethodView):
    @roles(*READERS)
    @blp.response(200, VerificationSchema)
    def get(self) -> dict[str, Any]:
        """Recompute the chain and check every checkpoint; name the first bad seq."""
        result = verify_database()
        return {k: v for k, v in result.__dict__.items() if k != "last_hash"}


@blp.route("/export")
class Export(MethodView):
    @roles(*READERS)
    @blp.arguments(ExportArgs, location="query", unknown=RAISE)
    @blp.response(200, description="JSON lines or CSV, verifiable offline")
    def get(self, args: dict[str, Any]) -> Response:
        """Stream the entries of a time window with what offline verification needs."""
        now, fmt = datetime.now(UTC), args["format"]
        record = _record(Action.AUDIT_EXPORT)
        lines = audited_export(record, fmt, args.get("since"), args.get("until"), now)
        mimetype = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
        name = f"audit-{now:%Y%m%dT%H%M%SZ}.{fmt}"
        return Response(
            stream_with_context(lines),
            mimetype=mimetype,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )


@blp.route("/summary")
class Summary(MethodView):
    @roles(*READERS)
    @blp.arguments(WindowArgs, location="query", unknown=RAISE)
    @blp.response(200, SummarySchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Decisions by purpose and outcome, refusals by reason, consent changes, and more."""
        chain_now(wait=True)
        return summary(args.get("since"), args.get("until"))


@blp.route("/checkpoints")
class Checkpoints(MethodView):
    @roles(*READERS)
    @blp.response(201, CheckpointSchema)
    def post(self) -> dict[str, Any]:
        """Sign the chain head now (the request itself is the entry signed)."""
        checkpoint = checkpoint_now(_record(Action.AUDIT_CHECKPOINT), datetime.now(UTC))
        return checkpoint
