"""Data-subject requests: access (everything held, decrypted) and erasure (crypto-shredded)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import fields

from gateway import keyring, policies
from gateway.api import examples
from gateway.api.audit import ExportedEntrySchema
from gateway.api.auth import roles
from gateway.api.consents import ReceiptSchema
from gateway.api.contract import INVALID_SUBJECT_ID, SUBJECT_ID_PARAMETER
from gateway.api.strict import Blueprint, Scalar, StrictBoolean, StrictSchema, check_subject_id
from gateway.audit import audit, audit_chained, chain_now, key_destroyed
from gateway.audit.chain import Action, AuditRecord, entry_body
from gateway.policy.engine import HoldingKind
from gateway.policy.records import item_terms
from gateway.store.clients import Role
from gateway.store.consents import consent_records, receipt
from gateway.store.db import database, fold_wal, lock_subject, write_transaction
from gateway.store.models import AuditEntry, KeyDestruction
from gateway.store.outbox import MessageType, enqueue
from gateway.store.profiles import erase, everything
from gateway.store.subjects import (
    destruction_pending,
    find_subject,
    finish_destructions,
    order_destruction,
    unordered_key,
)

blp = Blueprint("subjects", __name__, url_prefix="/v1/subjects", description="Subject requests")


class ItemTermsSchema(StrictSchema):
    """What an access export says of a held item beside its value."""

    database = fields.String(required=True, metadata={"description": "The database holding it"})
    data_category = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Its data category (null if the policy set no longer has it)"},
    )
    purposes = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The purposes that may use it there"},
    )
    held_in = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Where its database is hosted (null if no longer registered)"},
    )
    kept_until = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Its time plus its category's retention: when a purge deletes it",
            "format": "date-time",
        },
    )


class ExportedAttributeSchema(ItemTermsSchema):
    name = fields.String(required=True, metadata={"description": "The attribute's name"})
    value = fields.Raw(
        required=True,
        metadata={**Scalar.SCHEMA, "description": "Its value, decrypted"},
    )
    updated_at = fields.String(
        required=True,
        metadata={"description": "When it was last set", "format": "date-time"},
    )


class ExportedEventSchema(ItemTermsSchema):
    type = fields.String(required=True, metadata={"description": "The event type"})
    item_id = fields.String(required=True, metadata={"description": "The item, decrypted"})
    category = fields.String(
        required=True, metadata={"description": "The item's product category, decrypted"}
    )
    at = fields.String(
        required=True, metadata={"description": "When it happened", "format": "date-time"}
    )
    received_at = fields.String(
        required=True, metadata={"description": "When it was collected", "format": "date-time"}
    )


class ExportedConsentSchema(StrictSchema):
    purpose = fields.String(required=True, metadata={"description": "The purpose"})
    granted = StrictBoolean(required=True, metadata={"description": "A grant, or a withdrawal"})
    source = fields.String(required=True, metadata={"description": "Where the subject said so"})
    notice_version = fields.String(
        required=True, metadata={"description": "The notice the subject saw"}
    )
    recorded_at = fields.String(
        required=True, metadata={"description": "When it was recorded", "format": "date-time"}
    )
    expires_at = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The expiry the caller gave, if any", "format": "date-time"},
    )
    client = fields.String(required=True, metadata={"description": "The client that recorded it"})
    receipt = fields.Nested(
        ReceiptSchema, required=True, metadata={"description": "The signed receipt"}
    )


class SubjectExportSchema(StrictSchema):
    subject_id = fields.String(required=True, metadata={"description": "The subject's id"})
    pseudonym = fields.String(
        required=True,
        metadata={"description": "The keyed pseudonym that the database and the audit log use"},
    )
    exported_at = fields.AwareDateTime(required=True, metadata={"description": "When"})
    attributes = fields.List(
        fields.Nested(ExportedAttributeSchema),
        required=True,
        metadata={"description": "Every attribute held, by name"},
    )
    events = fields.List(
        fields.Nested(ExportedEventSchema),
        required=True,
        metadata={"description": "Every event held, oldest first"},
    )
    consents = fields.List(
        fields.Nested(ExportedConsentSchema),
        required=True,
        metadata={"description": "Every consent change, oldest first"},
    )
    audit_entries = fields.List(
        fields.Nested(ExportedEntrySchema),
        required=True,
        metadata={"description": "Every audit entry about the subject, this export's included"},
    )


class DeletedSchema(StrictSchema):
    attributes = fields.Integer(required=True, metadata={"description": "Attributes deleted"})
    events = fields.Integer(required=True, metadata={"description": "Events deleted"})
    consents = fields.Integer(required=True, metadata={"description": "Consent records deleted"})


class ErasureSchema(StrictSchema):
    subject_id = fields.String(required=True, metadata={"description": "The subject's id"})
    erased = StrictBoolean(
        required=True, metadata={"description": "Always true: nothing is held any more"}
    )
    key_destroyed = StrictBoolean(
        required=True,
        metadata={
            "description": "The subject's data key was destroyed and an audit entry confirms it"
            " (false when no key was held)."
        },
    )
    deleted = fields.Nested(
        DeletedSchema, required=True, metadata={"description": "Rows deleted per kind"}
    )


NOTHING_DELETED = {"attributes": 0, "events": 0, "consents": 0}


def _record(action: Action, pseudonym: str, outcome: str, **details: Any) -> AuditRecord:
    return AuditRecord(
        actor=g.client.name,
        action=action,
        policy_hash=policies().hash,
        subject=pseudonym,
        outcome=outcome,
        fields=details,
        request_id=g.request_id,
    )


def _consents(pseudonym: str) -> list[dict[str, Any]]:
    subject = find_subject(pseudonym)
    return [
        {
            "purpose": r.purpose,
            "granted": r.granted,
            "source": r.source,
            "notice_version": r.notice_version,
            "recorded_at": r.recorded_at.isoformat(),
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
            "client": r.client,
            "receipt": receipt(r),
        }
        for r in consent_records(subject)
    ]


def _iso(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v.isoformat() if isinstance(v, datetime) else v for k, v in r.items()} for r in rows
    ]


@blp.route("/<string:subject_id>", parameters=[SUBJECT_ID_PARAMETER])
class SubjectData(MethodView):
    @roles(Role.ADMIN)
    @blp.response(200, ErasureSchema, example=examples.ERASURE)
    @blp.alt_response(**INVALID_SUBJECT_ID)
    def delete(self, subject_id: str) -> dict[str, Any]:
        """Erase a subject: data deleted, data key destroyed; audit entries stay pseudonymous."""
        return erase_subject(subject_id)


def erase_subject(subject_id: str) -> dict[str, Any]:
    """Erase a subject for the calling client (the API and the console alike): its data deleted
    with the entry ordering its key destroyed, then, once committed, the key destroyed and
    confirmed by a second entry."""
    check_subject_id(subject_id)
    now, pseudonym = datetime.now(UTC), keyring().pseudonym(subject_id)
    with write_transaction():
        deleted, doomed = _erase_ordering_destruction(pseudonym, now)
        _tell_recipients(subject_id, pseudonym, now)
    # Committed: only now may the key go. The erased rows' old pages leave the WAL first.
    fold_wal(database)
    finish_destructions(_confirm_destruction)
    return {
        "subject_id": subject_id,
        "erased": True,
        "key_destroyed": doomed and not destruction_pending(pseudonym),
        "deleted": deleted,
    }


def _erase_ordering_destruction(pseudonym: str, now: datetime) -> tuple[dict[str, int], bool]:
    """Delete the subject's data and append the entry ordering its key destroyed, if it has one
    (call in a write); returns the rows deleted per kind and whether a destruction is pending."""
    lock_subject(pseudonym, shared=False)  # decisions on this subject commit before, or see it
    subject = find_subject(pseudonym)
    deleted = erase(subject) if subject else dict(NOTHING_DELETED)
    fingerprint = unordered_key(pseudonym)
    doomed = fingerprint is not None or destruction_pending(pseudonym)
    key = "destroy_pending" if doomed else "none"
    record = _record(Action.SUBJECT_ERASE, pseudonym, "erased", deleted=deleted, key=key)
    entry = audit_chained(record, now)  # chained now: the order names its seq
    if fingerprint is not None:
        order_destruction(pseudonym, fingerprint, entry["seq"], now)
    return deleted, doomed


def _tell_recipients(subject_id: str, pseudonym: str, now: datetime) -> None:
    """Queue `subject.erased` for every recipient, in the erasure's transaction."""
    enqueue(
        policies().recipients.values(),
        message_type=MessageType.SUBJECT_ERASED,
        pseudonym=pseudonym,
        data={"subject_id": subject_id, "erased_at": now.isoformat()},
        keyring=keyring(),
        now=now,
    )


def _confirm_destruction(order: KeyDestruction) -> None:
    """Append the entry saying the key that entry `order.ordered_by` ordered destroyed is gone."""
    audit(key_destroyed(order, g.client.name, policies().hash, g.request_id), datetime.now(UTC))


@blp.route("/<string:subject_id>/export", parameters=[SUBJECT_ID_PARAMETER])
class SubjectExport(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, SubjectExportSchema, example=examples.SUBJECT_EXPORT)
    @blp.alt_response(**INVALID_SUBJECT_ID)
    def get(self, subject_id: str) -> dict[str, Any]:
        """Everything held about a subject (access request): data, consents, audit entries."""
        return subject_export(subject_id)


def subject_export(subject_id: str) -> dict[str, Any]:
    """Everything held about a subject, audited as an access by the calling client (the API's
    export and the console's subject page alike)."""
    check_subject_id(subject_id)
    now, pseudonym = datetime.now(UTC), keyring().pseudonym(subject_id)
    with write_transaction():
        audit(_record(Action.SUBJECT_EXPORT, pseudonym, "exported"), now)
    subject = find_subject(pseudonym)
    attributes, events = everything(subject, keyring()) if subject else ([], [])
    # per item, what it is and may be used for, where it is held and until when it is kept
    active = policies()
    for kind, items, name, at in (
        (HoldingKind.ATTRIBUTE, attributes, "name", "updated_at"),
        (HoldingKind.EVENT, events, "type", "at"),
    ):
        for item in items:
            item.update(item_terms(active, kind, item[name], item["database"], item[at]))
    chain_now(wait=True)  # this request's own entry among them
    entries = AuditEntry.select().where(AuditEntry.subject == pseudonym).order_by(AuditEntry.seq)
    return {
        "subject_id": subject_id,
        "pseudonym": pseudonym,
        "exported_at": now,
        "attributes": _iso(attributes),
        "events": _iso(events),
        "consents": _consents(pseudonym),
        "audit_entries": [entry_body(e) for e in entries.iterator()],
    }
