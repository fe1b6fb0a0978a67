"""Consent records with signed receipts; history is append-only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from gateway.crypto import SIGNATURE_ALGORITHM, Keyring, canonical_json
from gateway.policy.engine import ConsentEvent
from gateway.store.models import ConsentRecord, Subject
from gateway.store.statements import Statement

# The order of a history: by time, then as recorded.
_OLDEST_FIRST = (ConsentRecord.recorded_at, ConsentRecord._meta.primary_key)
# Every decision reads a subject's history, then its receipts again under the subject's lock.
_HISTORY = Statement(
    lambda subject_id: (
        ConsentRecord.select().where(ConsentRecord.subject == subject_id).order_by(*_OLDEST_FIRST)
    )
)
_RECEIPTS = Statement(
    lambda pseudonym: (
        ConsentRecord.select(ConsentRecord.receipt_id)
        .join(Subject)
        .where(Subject.pseudonym == pseudonym)
        .order_by(*_OLDEST_FIRST)
    )
)


def consent_records(subject: Subject | None, purpose: str | None = None) -> list[ConsentRecord]:
    """A subject's consent history, oldest first."""
    if subject is None:
        return []
    if purpose is None:
        return _HISTORY.models(subject.get_id())
    query = ConsentRecord.select().where(ConsentRecord.subject == subject)
    query = query.where(ConsentRecord.purpose == purpose)
    return list(query.order_by(*_OLDEST_FIRST))


def consent_receipts(pseudonym: str) -> list[str]:
    """The receipt ids of the history of the subject with this pseudonym, oldest first (what
    `consent_records(find_subject(pseudonym))` holds, in one statement)."""
    return [str(row[0]) for row in _RECEIPTS.execute(pseudonym)]


def as_events(records: list[ConsentRecord]) -> list[ConsentEvent]:
    return [ConsentEvent(r.purpose, r.granted, r.recorded_at, r.expires_at) for r in records]


def receipt_payload(record: ConsentRecord, pseudonym: str) -> dict[str, Any]:
    """What a receipt signs: the record, its subject's pseudonym, the policy set in force."""
    return {
        "receipt_id": record.receipt_id,
        "subject": pseudonym,
        "purpose": record.purpose,
        "granted": record.granted,
        "source": record.source,
        "notice_version": record.notice_version,
        "recorded_at": record.recorded_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "policy_hash": record.policy_hash,
        "key_id": record.key_id,
    }


def receipt(record: ConsentRecord) -> dict[str, Any]:
    """The signed receipt of a stored record, as it was signed."""
    payload = receipt_payload(record, record.subject.pseudonym)
    return {"payload": payload, "algorithm": SIGNATURE_ALGORITHM, "signature": record.signature}


def record_consent(
    subject: Subject,
    *,
    purpose: str,
    granted: bool,
    source: str,
    notice_version: str,
    expires_at: datetime | None,
    client: str,
    policy_hash: str,
    keyring: Keyring,
    now: datetime,
) -> ConsentRecord:
    """Append one consent change and sign its receipt (call inside a write transaction)."""
    record = ConsentRecord(
        subject=subject,
        receipt_id=str(uuid.uuid4()),
        purpose=purpose,
        granted=granted,
        source=source,
        notice_version=notice_version,
        recorded_at=now,
        # Stored and read back as UTC: sign that form, or stored receipts would not verify.
        expires_at=expires_at.astimezone(UTC) if expires_at else None,
        client=client,
        policy_hash=policy_hash,
        key_id=keyring.key_id,
    )
    payload = receipt_payload(record, subject.pseudonym)
    record.signature = keyring.sign(canonical_json(payload))
    record.save(force_insert=True)
    return record
