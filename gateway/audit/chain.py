"""The append-only, hash-chained audit log: what an entry is, how it is hashed and signed.

    with write_transaction():
        change_state(...)
        audit(AuditRecord(actor="web-shop", action=Action.CONSENT_GRANT, ...), now)

Each entry's hash covers its content, its seq and the previous entry's hash, so an edit,
deletion, insertion or reordering breaks the chain at that seq. Checkpoints sign an entry's seq
and hash with Ed25519, which also fixes everything before it: re-writing the chain behind a
checkpoint needs the signing key.

An entry is first written as a pending row (`pending_row`, protected by an HMAC under a key of
the keyring) in the transaction of the change it records, and chained later by the sequencer
(`gateway.audit.sequencer`), so writers never wait for one another's commits.

Scheme 1 hashed HASHED_FIELDS; scheme 2 (the entries chained from schema version 5 on) also
hashes the scheme and the entry's id, and its checkpoints also sign the checkpoint interval in
force, which says where the next one must be.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from playhouse.shortcuts import model_to_dict

from gateway.crypto import Keyring, canonical_json, sha256_hex
from gateway.errors import Unavailable
from gateway.store.models import AuditEntry

GENESIS = "0" * 64
HASHED_FIELDS = (
    "seq",
    "at",
    "actor",
    "action",
    "subject",
    "purpose",
    "outcome",
    "reasons",
    "fields",
    "policy_hash",
    "request_id",
    "decision_id",
    "prev_hash",
)
SCHEME = 2
HASHED_FIELDS_2 = (*HASHED_FIELDS, "scheme", "entry_id")
# The columns of a pending entry that become the chained entry's content.
PENDING_FIELDS = ("entry_id", *HASHED_FIELDS[1:-1])  # the content: all hashed but seq and link
MAC_FIELDS = ("id", *PENDING_FIELDS)  # what its HMAC covers: all but the HMAC


class Action(StrEnum):
    DECISION = "decision"
    CONSENT_GRANT = "consent.grant"
    CONSENT_WITHDRAW = "consent.withdraw"
    EVENTS_COLLECT = "events.collect"
    ATTRIBUTES_COLLECT = "attributes.collect"
    CLIENT_CREATE = "client.create"
    CLIENT_REVOKE = "client.revoke"
    POLICY_LOAD = "policy.load"
    AUDIT_EXPORT = "audit.export"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    PURGE = "purge"
    SUBJECT_EXPORT = "subject.export"
    SUBJECT_ERASE = "subject.erase"
    CONSOLE_SIGN_IN = "console.sign_in"
    CONSOLE_SIGN_OUT = "console.sign_out"
    DELIVERY_DELIVERED = "delivery.delivered"
    DELIVERY_FAILED = "delivery.failed"
    DELIVERY_RETRY = "delivery.retry"
    RECIPIENT_RESYNC = "recipient.resync"
    # chained by the sequencer in place of a pending entry whose HMAC did not verify, or one
    # chained already (a copy): what was stored, kept as evidence; verification reports it
    AUDIT_REJECTED = "audit.rejected"


class AuditUnavailable(Unavailable):
    """The audit entry could not be written; whatever it recorded must not happen."""

    code = "audit_unavailable"
    client_message = "The audit log cannot be written; nothing was changed or personalized."


@dataclass(frozen=True)
class AuditRecord:
    actor: str
    action: Action
    policy_hash: str
    subject: str | None = None  # pseudonym, never a raw id
    purpose: str | None = None
    outcome: str | None = None
    reasons: Sequence[str] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    decision_id: str | None = None


def timestamp(now: datetime) -> str:
    """The one text form of audit times: UTC, microseconds, so text order is time order."""
    return now.astimezone(UTC).isoformat(timespec="microseconds")


def _stored_json(text: str) -> Any:
    """A JSON column; text that is not JSON (only a tampered row) stays text and fails its hash."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def entry_body(entry: AuditEntry) -> dict[str, Any]:
    """An entry as plain data: the hashed fields plus its hash."""
    return row_body(model_to_dict(entry))


def row_body(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row (as read with `.dicts()`) as plain data: its JSON columns parsed."""
    row["reasons"], row["fields"] = _stored_json(row["reasons"]), _stored_json(row["fields"])
    return row


def hashed_fields(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields an entry's hash covers: those of its scheme."""
    return HASHED_FIELDS_2 if body.get("scheme") == SCHEME else HASHED_FIELDS


def body_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of an entry's hashed fields."""
    return sha256_hex(canonical_json({name: body.get(name) for name in hashed_fields(body)}))


def checkpoint_payload(
    seq: int, entry_hash: str, at: str, key_id: str, every: int | None = None
) -> bytes:
    """What a checkpoint signs; `every` (scheme 2) is the interval of required checkpoints."""
    body: dict[str, Any] = {"seq": seq, "hash": entry_hash, "at": at, "key_id": key_id}
    if every is not None:
        body["every"] = every
    return canonical_json(body)


def next_required(seq: int, every: int) -> int:
    """The seq of the checkpoint required after one at `seq` signing interval `every`."""
    return (seq // every + 1) * every


def pending_row(record: AuditRecord, now: datetime) -> dict[str, Any]:
    """The stored columns of a new entry (but its HMAC), as the transaction it records writes it."""
    return {
        "entry_id": str(uuid.uuid4()),
        "at": timestamp(now),
        "actor": record.actor,
        "action": record.action.value,
        "subject": record.subject,
        "purpose": record.purpose,
        "outcome": record.outcome,
        "reasons": json.dumps(list(record.reasons)),
        "fields": json.dumps(record.fields, sort_keys=True),
        "policy_hash": record.policy_hash,
        "request_id": record.request_id,
        "decision_id": record.decision_id,
    }


def pending_mac(row: Mapping[str, Any], keyring: Keyring) -> str:
    """The HMAC of a pending entry's columns as stored, its row id (its place in the order the
    sequencer chains) included."""
    return keyring.audit_mac(canonical_json({name: row.get(name) for name in MAC_FIELDS}))
