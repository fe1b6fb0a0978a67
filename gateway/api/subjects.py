"""Data-subject requests: access (everything held, decrypted) and erasure (crypto-shredded)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields

from gateway import keyring, policies
from gateway.api.auth import roles
from gateway.api.strict import StrictBoolean, StrictSchema, check_subject_id
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord, entry_body
from gateway.store.clients import Role
from gateway.store.consents import consent_records, receipt
from gateway.store.db import write_transaction
from gateway.store.keystore import wrapped_key
from gateway.store.models import AuditEntry
from gateway.store.profiles import erase, everything
from gateway.store.subjects import find_subject, shred_key

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
    key_destroyed = StrictBoolean()
    deleted = fields.Dict(keys=fields.String(), values=fields.Integer())


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
            subject = find_subject(pseudonym)
            deleted = erase(subject) if subject else {"attributes": 0, "events": 0, "consents": 0}
            destroyed = wrapped_key(pseudonym) is not None
            details = {"deleted": deleted, "key_destroyed": destroyed}
            audit(_record(Action.SUBJECT_ERASE, pseudonym, "erased", **details), now)
            # Last, once the audit entry is written: if the key cannot be destroyed the whole
            # erasure rolls back, and if the audit failed the key is still there.
            shred_key(pseudonym)
        return {
            "subject_id": subject_id,
            "erased": True,
            "key_destroyed": destroyed,
            "deleted": deleted,
        }


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
