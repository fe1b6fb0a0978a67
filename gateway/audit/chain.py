"""The append-only, hash-chained audit log and its signed checkpoints.

    with write_transaction():
        change_state(...)
        append(AuditRecord(actor="web-shop", action=Action.CONSENT_GRANT, ...), now,
               keyring=ring, checkpoint_every=100)

Each entry's hash covers its content, its seq and the previous entry's hash, so an edit,
deletion, insertion or reordering breaks the chain at that seq. Every `checkpoint_every` entries
the head is signed with Ed25519, which also fixes everything before it: re-writing the chain
behind a checkpoint needs the signing key. Appends happen in the caller's write transaction: if
the append fails, the change it records is rolled back with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from peewee import PeeweeException
from playhouse.shortcuts import model_to_dict

from gateway.crypto import Keyring, canonical_json, sha256_hex
from gateway.errors import Unavailable
from gateway.store.models import AuditCheckpoint, AuditEntry

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


def body_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of an entry's hashed fields."""
    return sha256_hex(canonical_json({name: body.get(name) for name in HASHED_FIELDS}))


def checkpoint_payload(seq: int, entry_hash: str, at: str, key_id: str) -> bytes:
    return canonical_json({"seq": seq, "hash": entry_hash, "at": at, "key_id": key_id})


def sign_checkpoint(entry: AuditEntry, keyring: Keyring, now: datetime) -> AuditCheckpoint:
    """Sign the chain up to `entry` (idempotent: one checkpoint per seq)."""
    existing = AuditCheckpoint.get_or_none(AuditCheckpoint.seq == entry.seq)
    if existing is not None:
        return existing
    at = timestamp(now)
    signature = keyring.sign(checkpoint_payload(entry.seq, entry.hash, at, keyring.key_id))
    return AuditCheckpoint.create(
        seq=entry.seq, hash=entry.hash, at=at, key_id=keyring.key_id, signature=signature
    )


def head() -> AuditEntry | None:
    return AuditEntry.select().order_by(AuditEntry.seq.desc()).first()


def append(
    record: AuditRecord,
    now: datetime,
    *,
    keyring: Keyring | None = None,
    checkpoint_every: int = 0,
) -> AuditEntry:
    """Append one entry at the chain head; call inside `write_transaction()`."""
    try:
        last = head()
        entry = AuditEntry(
            seq=last.seq + 1 if last else 1,
            at=timestamp(now),
            actor=record.actor,
            action=record.action.value,
            subject=record.subject,
            purpose=record.purpose,
            outcome=record.outcome,
            reasons=json.dumps(list(record.reasons)),
            fields=json.dumps(record.fields, sort_keys=True),
            policy_hash=record.policy_hash,
            request_id=record.request_id,
            decision_id=record.decision_id,
            prev_hash=last.hash if last else GENESIS,
        )
        entry.hash = body_hash(entry_body(entry))
        entry.save(force_insert=True)
        if keyring is not None and checkpoint_every and entry.seq % checkpoint_every == 0:
            sign_checkpoint(entry, keyring, now)
    except PeeweeException as exc:
        raise AuditUnavailable("the audit entry could not be written") from exc
    return entry
