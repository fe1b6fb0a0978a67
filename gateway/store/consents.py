"""Consent records with signed receipts; history is append-only."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from peewee import fn

from gateway.crypto import SIGNATURE_ALGORITHM, Keyring, canonical_json
from gateway.policy.engine import ConsentEvent, ConsentState, grant_expiry
from gateway.policy.model import PolicySet
from gateway.policy.signals import Choice
from gateway.store.db import write_transaction
from gateway.store.models import ConsentRecord, Subject
from gateway.store.outbox import MessageType, consent_recipients, enqueue
from gateway.store.statements import Statement
from gateway.store.subjects import seal_subject_id, unsealed_subject_id

# The order of a history: by time, then as recorded.
_RECORD_ID: Any = ConsentRecord._meta.primary_key  # type: ignore[attr-defined]
_OLDEST_FIRST = (ConsentRecord.recorded_at, _RECORD_ID)
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


@dataclass(frozen=True)
class TcfSignal:
    """What a consent record made from a TC string keeps of it: never the string itself."""

    cmp_id: int
    vendor_list_version: int
    policy_version: int
    last_updated: datetime
    sha256: str


def as_events(records: list[ConsentRecord]) -> list[ConsentEvent]:
    return [ConsentEvent(r.purpose, r.granted, r.recorded_at, r.expires_at) for r in records]


def as_choices(records: list[ConsentRecord]) -> list[Choice]:
    """The records as choices: a TCF record was chosen at its string's LastUpdated."""
    return [
        Choice(event, r.tcf_last_updated or r.recorded_at, r.tcf_sha256)
        for r, event in zip(records, as_events(records), strict=True)
    ]


def tcf_signal(record: ConsentRecord) -> TcfSignal | None:
    """The TC string a record was made from, as kept; None for records of other sources."""
    kept = (
        record.tcf_cmp_id,
        record.tcf_vendor_list_version,
        record.tcf_policy_version,
        record.tcf_last_updated,
        record.tcf_sha256,
    )
    cmp_id, vendor_list_version, policy_version, last_updated, sha256 = kept
    if cmp_id is None or vendor_list_version is None or policy_version is None:
        return None
    if last_updated is None or sha256 is None:
        return None
    return TcfSignal(cmp_id, vendor_list_version, policy_version, last_updated, sha256)


def _tcf_payload(signal: TcfSignal) -> dict[str, Any]:
    return {
        "cmp_id": signal.cmp_id,
        "vendor_list_version": signal.vendor_list_version,
        "policy_version": signal.policy_version,
        "last_updated": signal.last_updated.astimezone(UTC).isoformat(),
        "sha256": signal.sha256,
    }


def receipt_payload(record: ConsentRecord, pseudonym: str) -> dict[str, Any]:
    """What a receipt signs: the record, its subject's pseudonym, the policy set in force, and
    for a record made from a TC string what it says of itself (other receipts have no `tcf`)."""
    payload = _plain_payload(record, pseudonym)
    signal = tcf_signal(record)
    if signal is not None:
        payload["tcf"] = _tcf_payload(signal)
    return payload


def _plain_payload(record: ConsentRecord, pseudonym: str) -> dict[str, Any]:
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
    subject_id: str,
    purpose: str,
    granted: bool,
    source: str,
    notice_version: str,
    expires_at: datetime | None,
    client: str,
    policies: PolicySet,
    keyring: Keyring,
    now: datetime,
    tcf: TcfSignal | None = None,
) -> ConsentRecord:
    """Append one consent change, sign its receipt and queue a `consent.changed` message for
    each recipient of the purpose (call inside a write transaction: all of it commits together,
    or none of it). A grant that ends is marked for `report_lapsed` to find when it does. `tcf`
    is the TC string the change was read from, if it was."""
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
        policy_hash=policies.hash,
        key_id=keyring.key_id,
    )
    purpose_policy = policies.purposes.get(purpose)
    if granted and purpose_policy is not None:
        record.expiry_notice_at = grant_expiry(purpose_policy, as_events([record])[0])
    if tcf is not None:
        record.tcf_cmp_id = tcf.cmp_id
        record.tcf_vendor_list_version = tcf.vendor_list_version
        record.tcf_policy_version = tcf.policy_version
        # stored and read back as UTC, like expires_at
        record.tcf_last_updated = tcf.last_updated.astimezone(UTC)
        record.tcf_sha256 = tcf.sha256
    payload = receipt_payload(record, subject.pseudonym)
    record.signature = keyring.sign(canonical_json(payload))
    record.save(force_insert=True)
    seal_subject_id(subject, subject_id, keyring)
    _tell_recipients(subject_id, subject.pseudonym, record, policies, keyring, now)
    return record


def _tell_recipients(
    subject_id: str,
    pseudonym: str,
    record: ConsentRecord,
    policies: PolicySet,
    keyring: Keyring,
    now: datetime,
) -> None:
    """Queue the change for the purpose's recipients."""
    recipients = consent_recipients(policies.recipients.values(), record.purpose)
    if recipients:
        data = consent_changed(subject_id, record)
        changed = MessageType.CONSENT_CHANGED
        enqueue(
            recipients,
            message_type=changed,
            pseudonym=pseudonym,
            data=data,
            keyring=keyring,
            now=now,
        )


def report_lapsed(policies: PolicySet, keyring: Keyring, now: datetime, limit: int) -> int:
    """Queue `consent.changed` with state `expired` for up to `limit` grants that lapsed by
    `now`, to the recipients of their purpose, oldest lapse first; returns how many grants
    were looked at. A grant a later change of its purpose superseded is passed over silently,
    and so is one whose subject can no longer be named (its key destroyed). Each is looked
    at once: its mark is cleared in the transaction that queues its message, which holds the
    write lock, as every consent change does, so none changes under it."""
    lapsed = ConsentRecord.expiry_notice_at <= now
    if not ConsentRecord.select(_RECORD_ID).where(lapsed).exists():
        return 0  # most rounds: no write lock taken for nothing
    with write_transaction():
        later = ConsentRecord.alias()
        superseded = later.select(later.id).where(
            (later.subject == ConsentRecord.subject)
            & (later.purpose == ConsentRecord.purpose)
            & (
                (later.recorded_at > ConsentRecord.recorded_at)
                | ((later.recorded_at == ConsentRecord.recorded_at) & (later.id > _RECORD_ID))
            )
        )
        found = list(
            ConsentRecord.select(ConsentRecord, Subject, fn.EXISTS(superseded).alias("superseded"))
            .join(Subject)
            .where(lapsed)
            .order_by(ConsentRecord.expiry_notice_at, _RECORD_ID)
            .limit(limit)
        )
        for record in found:
            recipients = consent_recipients(policies.recipients.values(), record.purpose)
            if record.superseded or not recipients:  # type: ignore[attr-defined]
                continue
            subject_id = unsealed_subject_id(record.subject, keyring)
            if subject_id is None:
                continue
            lapses = record.expiry_notice_at
            data = {
                **consent_changed(subject_id, record),
                "state": ConsentState.EXPIRED.value,
                "effective_at": lapses.isoformat(),
            }
            enqueue(
                recipients,
                message_type=MessageType.CONSENT_CHANGED,
                pseudonym=record.subject.pseudonym,
                data=data,
                keyring=keyring,
                now=now,
                happened_at=lapses,
            )
        if found:
            ConsentRecord.update(expiry_notice_at=None).where(
                _RECORD_ID.in_([record.get_id() for record in found])
            ).execute()
    return len(found)


def consent_changed(subject_id: str, record: ConsentRecord) -> dict[str, Any]:
    """The data of a `consent.changed` message reporting `record`."""
    state = ConsentState.GRANTED if record.granted else ConsentState.WITHDRAWN
    return {
        "subject_id": subject_id,
        "purpose": record.purpose,
        "state": state.value,
        "effective_at": record.recorded_at.isoformat(),
        "source": record.source,
        "receipt_id": record.receipt_id,
    }
