"""Data-subject requests: access (everything held, decrypted) and erasure (crypto-shredded)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import fields

from gateway import keyring, policies
from gateway.api.auth import roles
from gateway.api.strict import Blueprint, StrictBoolean, StrictSchema, check_subject_id
from gateway.audit import audit, audit_chained, chain_now, key_destroyed
from gateway.audit.chain import Action, AuditRecord, entry_body
from gateway.policy.engine import HoldingKind
from gateway.policy.records import item_terms
from gateway.store.clients import Role
from gateway.store.consents import consent_records, receipt
from gateway.store.db import database, fold_wal, lock_subject, write_transaction
from gateway.store.models import AuditEntry, KeyDestruction
from gateway.store.profiles import erase, everything
from gateway.store.subjects import (
    destruction_pending,
    find_subject,
    finish_destructions,
    order_destruction,
    unordered_key,
)

blp = Blueprint("subjects", __name__, url_prefix="/v1/subjects", description="Subject requests")


class SubjectExportSchema(StrictSchema):
    subject_id = fields.String()
    pseudonym = fields.String()
    exported_at = fields.AwareDateTime()
    attributes = fields.List(fields.Dict())
    events = fields.List(fields.Dict())
    consents = fields.List(fields.Dict())
    audit_entries = fields.List(fields.Dict())


class ErasureSchema(StrictSchema):
    subject_id = fields.String()
    erased = StrictBoolean()
    key_destroyed = StrictBoolean(
        metadata={
            "description": "The subject's data key was destroyed and an audit entry confirms it"
            " (false when no key was held)."
        }
    )
    deleted = fields.Dict(keys=fields.String(), values=fields.Integer())


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


@blp.route("/<string:subject_id>")
class SubjectData(MethodView):
    @roles(Role.ADMIN)
    @blp.response(200, ErasureSchema)
    def delete(self, subject_id: str) -> dict[str, Any]:
        """Erase a subject: data deleted, data key destroyed; audit entries stay pseudonymous."""
        check_subject_id(subject_id)
        now, pseudonym = datetime.now(UTC), keyring().pseudonym(subject_id)
        with write_transaction():
            deleted, doomed = _erase_ordering_destruction(pseudonym, now)
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


def _confirm_destruction(order: KeyDestruction) -> None:
    """Append the entry saying the key that entry `order.ordered_by` ordered destroyed is gone."""
    audit(key_destroyed(order, g.client.name, policies().hash, g.request_id), datetime.now(UTC))


@blp.route("/<string:subject_id>/export")
class SubjectExport(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, SubjectExportSchema)
    def get(self, subject_id: str) -> dict[str, Any]:
        """Everything held about a subject (access request): data, consents, audit entries."""
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
        entries = (
            AuditEntry.select().where(AuditEntry.subject == pseudonym).order_by(AuditEntry.seq)
        )
        return {
            "subject_id": subject_id,
            "pseudonym": pseudonym,
            "exported_at": now,
            "attributes": _iso(attributes),
            "events": _iso(events),
            "consents": _consents(pseudonym),
            "audit_entries": [entry_body(e) for e in entries.iterator()],
        }
