"""The append-only, hash-chained audit log.

    with write_transaction():
        change_state(...)
        append(AuditRecord(actor="web-shop", action=Action.CONSENT_GRANT, ...), now)

Each entry's hash covers its content and the previous entry's hash, so an edit, deletion,
insertion or reordering breaks the chain at that seq. Appends happen in the caller's write
transaction: if the append fails, the change it records is rolled back with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from peewee import PeeweeException

from gateway.crypto import canonical_json, sha256_hex
from gateway.store.models import AuditEntry

GENESIS = "0" * 64


class Action(StrEnum):
    DECISION = "decision"
    CONSENT_GRANT = "consent.grant"
    CONSENT_WITHDRAW = "consent.withdraw"
    EVENTS_COLLECT = "events.collect"
    ATTRIBUTES_COLLECT = "attributes.collect"
    CLIENT_CREATE = "client.create"
    CLIENT_REVOKE = "client.revoke"


class AuditUnavailable(Exception):
    """The audit entry could not be written; whatever it recorded must not happen."""


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


def _body(entry: AuditEntry) -> dict[str, Any]:
    """The hashed content of an entry: every column but the hash itself."""
    return {
        "seq": entry.seq,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "purpose": entry.purpose,
        "outcome": entry.outcome,
        "reasons": json.loads(entry.reasons),
        "fields": json.loads(entry.fields),
        "policy_hash": entry.policy_hash,
        "request_id": entry.request_id,
        "decision_id": entry.decision_id,
        "prev_hash": entry.prev_hash,
    }


def entry_hash(entry: AuditEntry) -> str:
    return sha256_hex(canonical_json(_body(entry)))


def append(record: AuditRecord, now: datetime) -> AuditEntry:
    """Append one entry at the chain head; call inside `write_transaction()`."""
    try:
        head = AuditEntry.select().order_by(AuditEntry.seq.desc()).first()
        entry = AuditEntry(
            seq=head.seq + 1 if head else 1,
            at=now.astimezone(UTC).isoformat(timespec="microseconds"),
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
            prev_hash=head.hash if head else GENESIS,
        )
        entry.hash = entry_hash(entry)
        entry.save(force_insert=True)
    except PeeweeException as exc:
        raise AuditUnavailable("the audit entry could not be written") from exc
    return entry


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify() -> Verification:
    """Recompute the whole chain from the first entry and name the first entry that breaks it."""
    previous, expected_seq, count = GENESIS, 1, 0
    for entry in AuditEntry.select().order_by(AuditEntry.seq).iterator():
        count += 1
        if entry.seq != expected_seq:
            return Verification(False, count, expected_seq, "entry missing or out of order")
        if entry.prev_hash != previous:
            return Verification(False, count, entry.seq, "prev_hash does not match the chain")
        if entry_hash(entry) != entry.hash:
            return Verification(False, count, entry.seq, "content does not match its hash")
        previous, expected_seq = entry.hash, expected_seq + 1
    return Verification(True, count)
