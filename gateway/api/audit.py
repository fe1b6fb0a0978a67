"""The audit log for compliance officers: entries, verification, exports, summary, checkpoints."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Response, g, stream_with_context
from flask.views import MethodView
from marshmallow import RAISE, ValidationError, fields, validate, validates_schema

from gateway import keyring, policies
from gateway.api import examples
from gateway.api.auth import roles
from gateway.api.contract import POLICY_HASH, vocabulary
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
from gateway.policy.model import Outcome
from gateway.store.clients import Role

blp = Blueprint("audit", __name__, url_prefix="/v1/audit", description="Audit log")

READERS = (Role.AUDITOR, Role.ADMIN)


class WindowArgs(StrictSchema):
    since = UtcDateTime(metadata={"description": "Entries at or after this time"})
    until = UtcDateTime(metadata={"description": "Entries before this time (later than since)"})

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        if "since" in data and "until" in data and data["since"] >= data["until"]:
            raise ValidationError("Must be later than since.", "until")


class EntriesArgs(WindowArgs):
    subject_id = StrictString(
        validate=SUBJECT_ID,
        metadata={"description": "Only this subject's entries (matched by its pseudonym)"},
    )
    purpose = StrictString(
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Only entries for this purpose"},
    )
    action = StrictString(
        validate=vocabulary(Action), metadata={"description": "Only entries of this action"}
    )
    outcome = StrictString(
        validate=validate.Length(min=1, max=32),
        metadata={"description": "Only entries with this outcome"},
    )
    client = StrictString(
        validate=validate.Length(min=1, max=128),
        metadata={"description": "Only entries by this client (the actor)"},
    )
    cursor = StrictString(
        validate=validate.Length(min=1, max=64),
        metadata={"description": "The `next_cursor` of the previous page"},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "Entries per page"},
    )


class ExportArgs(WindowArgs):
    format = StrictString(
        load_default="jsonl",
        validate=validate.OneOf(FORMATS),
        metadata={"description": "jsonl: JSON lines (application/x-ndjson); csv: text/csv"},
    )


class EntrySchema(StrictSchema):
    """An entry of the hash chain, as `gateway.audit.chain.entry_body` gives it."""

    seq = fields.Integer(
        required=True, validate=validate.Range(min=1), metadata={"description": "Its place"}
    )
    at = fields.String(
        required=True, metadata={"description": "When (UTC, microseconds)", "format": "date-time"}
    )
    actor = fields.String(
        required=True,
        metadata={"description": "The client, or `cli:<user>` for an operator's command"},
    )
    action = fields.String(
        required=True, validate=vocabulary(Action), metadata={"description": "What happened"}
    )
    subject = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The subject's pseudonym (never its id)"},
    )
    purpose = fields.String(
        required=True, allow_none=True, metadata={"description": "The purpose involved"}
    )
    outcome = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "How it ended: a decision's outcome (allow, fallback, deny), or"
            " recorded, accepted, refused, exported, erased, key_destroyed, a purge's status"
        },
    )
    reasons = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "A decision's reasons (see the decision's `reasons`)"},
    )
    fields_ = fields.Dict(
        data_key="fields",
        required=True,
        metadata={
            "description": "What else the action recorded, by name; it differs per action (the"
            " fields a decision used and dropped, a consent's receipt id, the items collected"
            " and refused, a purge's counts, ...)",
            "example": {"notice_version": "2026-01", "source": "web_banner"},
        },
    )
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    request_id = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The request's X-Request-Id (null for commands)"},
    )
    decision_id = fields.String(
        required=True, allow_none=True, metadata={"description": "A decision's id"}
    )
    prev_hash = fields.String(
        required=True, metadata={"description": "The previous entry's hash (SHA-256, hex)"}
    )
    hash = fields.String(
        required=True,
        metadata={"description": "SHA-256 (hex) of this entry's hashed fields and prev_hash"},
    )
    scheme = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The hashing scheme (2 hashes scheme and entry_id too)"},
    )
    entry_id = fields.String(
        required=True, allow_none=True, metadata={"description": "The entry's own id"}
    )


class ExportedEntrySchema(EntrySchema):
    """An entry as the access export holds it: `fields` under its own name (the entries view
    passes it as `fields_`)."""

    fields_ = fields.Dict(
        attribute="fields",
        data_key="fields",
        required=True,
        metadata={"description": "What else the action recorded, by name (differs per action)"},
    )


class EntriesSchema(StrictSchema):
    entries = fields.List(
        fields.Nested(EntrySchema),
        required=True,
        metadata={"description": "The page of entries, in seq order"},
    )
    next_cursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last"},
    )


class VerificationSchema(StrictSchema):
    ok = StrictBoolean(
        required=True,
        metadata={"description": "The chain and every checkpoint verify, and nothing is missing"},
    )
    entries = fields.Integer(required=True, metadata={"description": "Entries checked"})
    first_bad_seq = fields.Integer(
        required=True, allow_none=True, metadata={"description": "The first entry that fails"}
    )
    problem = fields.String(
        required=True, allow_none=True, metadata={"description": "What fails there"}
    )
    checkpoints = fields.Integer(required=True, metadata={"description": "Checkpoints verified"})
    last_seq = fields.Integer(
        required=True, allow_none=True, metadata={"description": "The last entry checked"}
    )


class CheckpointSchema(StrictSchema):
    seq = fields.Integer(required=True, metadata={"description": "The entry signed"})
    hash = fields.String(required=True, metadata={"description": "Its hash"})
    at = fields.String(
        required=True, metadata={"description": "When it was signed", "format": "date-time"}
    )
    key_id = fields.String(required=True, metadata={"description": "The signing key's id"})
    signature = fields.String(
        required=True,
        metadata={"description": "Ed25519 over seq, hash, at, key_id (and every), base64url"},
    )
    every = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The interval of required checkpoints in force"},
    )


class PurgeTotalsSchema(StrictSchema):
    runs = fields.Integer(required=True, metadata={"description": "Purges run"})
    dry_runs = fields.Integer(required=True, metadata={"description": "Dry runs"})
    deleted = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={
            "description": "Rows deleted per `kind:category`",
            "example": {"events:browsing": 12},
        },
    )


class ConsentCountsSchema(StrictSchema):
    granted = fields.Integer(required=True, metadata={"description": "Grants"})
    withdrawn = fields.Integer(required=True, metadata={"description": "Withdrawals"})


class SummarySchema(StrictSchema):
    since = fields.AwareDateTime(
        required=True, allow_none=True, metadata={"description": "The window's start"}
    )
    until = fields.AwareDateTime(
        required=True, allow_none=True, metadata={"description": "The window's end"}
    )
    entries = fields.Integer(required=True, metadata={"description": "Entries in the window"})
    decisions = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(
            keys=fields.String(validate=vocabulary(Outcome)), values=fields.Integer()
        ),
        required=True,
        metadata={
            "description": "Decisions per purpose and outcome",
            "example": {"recommendations": {"allow": 1, "fallback": 1}},
        },
    )
    refusals = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={
            "description": "Decisions not allowed, per reason",
            "example": {"consent_withdrawn": 1},
        },
    )
    consents = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(ConsentCountsSchema),
        required=True,
        metadata={"description": "Consent changes per purpose"},
    )
    purges = fields.Nested(
        PurgeTotalsSchema, required=True, metadata={"description": "Retention purges"}
    )
    erasures = fields.Integer(required=True, metadata={"description": "Subjects erased"})
    actions = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={
            "description": "Entries per action",
            "example": {"decision": 2, "consent.grant": 3},
        },
    )


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
    @blp.response(200, EntriesSchema, example=examples.ENTRIES)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Entries in seq order, filtered; pass `next_cursor` back as `cursor` for more."""
        found, cursor = entries_page(args)
        entries = [{**e, "fields_": e.pop("fields")} for e in found]
        return {"entries": entries, "next_cursor": cursor}


def entries_page(args: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The entries that the filters of EntriesArgs (as loaded) select after its cursor, and the
    cursor of the next page (None on the last); the API and the console page alike."""
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
    cursor = _cursor(page.next_after) if page.next_after is not None else None
    return page.entries, cursor


@blp.route("/verify")
class Verify(MethodView):
    @roles(*READERS)
    @blp.response(200, VerificationSchema, example=examples.VERIFICATION)
    def get(self) -> dict[str, Any]:
        """Recompute the chain and check every checkpoint; name the first bad seq."""
        result = verify_database()
        return {k: v for k, v in result.__dict__.items() if k != "last_hash"}


@blp.route("/export")
class Export(MethodView):
    @roles(*READERS)
    @blp.arguments(ExportArgs, location="query", unknown=RAISE)
    @blp.response(200, description="JSON lines or CSV, verifiable offline")
    @blp.doc(
        responses={
            "200": {
                "description": "JSON lines (format=jsonl) or CSV (format=csv): a header, the"
                " entries in seq order each followed by its checkpoint, and a signed footer;"
                " `gateway audit verify --export` checks it offline",
                "content": {
                    "application/x-ndjson": {
                        "schema": {"type": "string"},
                        "example": examples.audit_export("jsonl"),
                    },
                    "text/csv": {
                        "schema": {"type": "string"},
                        "example": examples.audit_export("csv"),
                    },
                },
            }
        }
    )
    def get(self, args: dict[str, Any]) -> Response:
        """Stream the entries of a time window with what offline verification needs."""
        return export_download(args["format"], args.get("since"), args.get("until"))


def export_download(fmt: str, since: datetime | None, until: datetime | None) -> Response:
    """The export of a time window as a streamed download, audited as the calling client's
    (the API and the console alike)."""
    now = datetime.now(UTC)
    lines = audited_export(_record(Action.AUDIT_EXPORT), fmt, since, until, now)
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
    @blp.response(200, SummarySchema, example=examples.SUMMARY)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Decisions by purpose and outcome, refusals by reason, consent changes, and more."""
        chain_now(wait=True)
        return summary(args.get("since"), args.get("until"))


@blp.route("/checkpoints")
class Checkpoints(MethodView):
    @roles(*READERS)
    @blp.response(201, CheckpointSchema, example=examples.CHECKPOINT)
    def post(self) -> dict[str, Any]:
        """Sign the chain head now (the request itself is the entry signed)."""
        checkpoint = checkpoint_now(_record(Action.AUDIT_CHECKPOINT), datetime.now(UTC))
        return checkpoint
