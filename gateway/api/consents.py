"""Consent per subject and purpose: append-only history, signed receipts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import ValidationError, fields, validate, validates

from gateway import keyring, policies
from gateway.api import examples
from gateway.api.auth import caller, may_use, roles
from gateway.api.contract import (
    INVALID_SUBJECT_ID,
    POLICY_HASH,
    PURPOSE_PARAMETER,
    SUBJECT_ID_PARAMETER,
    problem,
    vocabulary,
)
from gateway.api.signals import (
    BAD_TC_STRING,
    ReceiptTcfSchema,
    TcfAppliedSchema,
    TcfSignalSchema,
    apply_tc_string,
)
from gateway.api.strict import (
    Blueprint,
    StrictBoolean,
    StrictSchema,
    StrictString,
    UtcDateTime,
    check_subject_id,
)
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.crypto import SIGNATURE_ALGORITHM
from gateway.errors import NotFound
from gateway.policy.engine import ConsentState, consent_status, grant_expiry
from gateway.policy.model import LegalBasis, Purpose, Reason
from gateway.store.clients import Role
from gateway.store.consents import as_events, consent_records, receipt, record_consent
from gateway.store.db import lock_subject, write_transaction
from gateway.store.models import ConsentRecord
from gateway.store.subjects import ensure_subject, find_subject

blp = Blueprint("consents", __name__, url_prefix="/v1/subjects", description="Consent")

SUBJECT_PATH = "/<string:subject_id>/consents"


class ConsentChangeSchema(StrictSchema):
    granted = StrictBoolean(
        required=True,
        metadata={"description": "true grants consent; false withdraws it (or objects)"},
    )
    source = StrictString(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Where the subject said so", "example": "web_banner"},
    )
    notice_version = StrictString(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "The version of the notice the subject saw", "example": "2026-01"},
    )
    expires_at = UtcDateTime(
        load_default=None,
        metadata={
            "description": "When the grant lapses, in the future; it lapses earlier where the"
            " purpose's consent_max_age says so"
        },
    )

    @validates("expires_at")
    def _future(self, value: datetime | None, **_: Any) -> None:
        if value is not None and value <= datetime.now(UTC):
            raise ValidationError("Must be in the future.")


class ReceiptPayloadSchema(StrictSchema):
    receipt_id = fields.String(
        required=True, metadata={"description": "The receipt's id", "format": "uuid"}
    )
    subject = fields.String(
        required=True, metadata={"description": "The subject's pseudonym (never the raw id)"}
    )
    purpose = fields.String(required=True, metadata={"description": "The purpose"})
    granted = StrictBoolean(required=True, metadata={"description": "A grant, or a withdrawal"})
    source = fields.String(required=True, metadata={"description": "Where the subject said so"})
    notice_version = fields.String(
        required=True, metadata={"description": "The notice the subject saw"}
    )
    recorded_at = fields.String(
        required=True,
        metadata={"description": "When the gateway recorded it (UTC)", "format": "date-time"},
    )
    expires_at = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The expiry the caller gave, if any", "format": "date-time"},
    )
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    key_id = fields.String(required=True, metadata={"description": "The signing key's id"})
    tcf = fields.Nested(
        ReceiptTcfSchema,
        metadata={
            "description": "Only in a receipt of a record made from an IAB TCF string (source"
            " `tcf`): what the string said of itself, and its SHA-256"
        },
    )


class ReceiptSchema(StrictSchema):
    payload = fields.Nested(
        ReceiptPayloadSchema,
        required=True,
        metadata={"description": "What was signed, as canonical JSON (sorted keys, no spaces)"},
    )
    algorithm = fields.String(
        required=True,
        validate=vocabulary([SIGNATURE_ALGORITHM]),
        metadata={"description": "The signature scheme"},
    )
    signature = fields.String(
        required=True,
        metadata={
            "description": "Base64url signature of the payload, verified with GET /v1/keys/signing"
        },
    )


class ConsentRecordSchema(StrictSchema):
    purpose = fields.String(required=True, metadata={"description": "The purpose"})
    granted = StrictBoolean(required=True, metadata={"description": "A grant, or a withdrawal"})
    source = fields.String(required=True, metadata={"description": "Where the subject said so"})
    notice_version = fields.String(
        required=True, metadata={"description": "The notice the subject saw"}
    )
    recorded_at = fields.AwareDateTime(
        required=True, metadata={"description": "When the gateway recorded it"}
    )
    expires_at = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When a grant lapses (its own expiry or consent_max_age)"},
    )
    client = fields.String(required=True, metadata={"description": "The client that recorded it"})
    receipt = fields.Nested(
        ReceiptSchema, required=True, metadata={"description": "The signed receipt"}
    )


class PurposeConsentSchema(StrictSchema):
    purpose = fields.String(required=True, metadata={"description": "The purpose"})
    legal_basis = fields.String(
        required=True,
        validate=vocabulary(LegalBasis),
        metadata={"description": "The purpose's legal basis"},
    )
    state = fields.String(
        required=True,
        validate=vocabulary(ConsentState),
        metadata={"description": "The latest consent change, as of now"},
    )
    lawful = StrictBoolean(
        required=True,
        metadata={"description": "Whether the purpose may use the subject's data now"},
    )
    reason = fields.String(
        required=True,
        validate=vocabulary(Reason),
        metadata={"description": "Why it is lawful or not"},
    )
    expires_at = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When the grant in force lapses"},
    )
    history = fields.List(
        fields.Nested(ConsentRecordSchema),
        required=True,
        metadata={"description": "Every consent change for the purpose, newest first"},
    )


class SubjectConsentsSchema(StrictSchema):
    subject_id = fields.String(required=True, metadata={"description": "The subject's id"})
    purposes = fields.List(
        fields.Nested(PurposeConsentSchema),
        required=True,
        metadata={"description": "Per purpose the client may use, its state and history"},
    )


UNKNOWN_PURPOSE = problem(
    404, "unknown_purpose", "Unknown purpose.", {"purpose": ["Unknown: 'newsletter'."]}
)


def _purpose(purpose_id: str) -> Purpose:
    found = policies().purposes.get(purpose_id)
    if found is None:
        raise NotFound(
            "Unknown purpose.", {"purpose": [f"Unknown: '{purpose_id}'."]}, code="unknown_purpose"
        )
    return found


def _record(record: ConsentRecord, purpose: Purpose) -> dict[str, Any]:
    return {
        "purpose": record.purpose,
        "granted": record.granted,
        "source": record.source,
        "notice_version": record.notice_version,
        "recorded_at": record.recorded_at,
        "expires_at": grant_expiry(purpose, as_events([record])[0]) if record.granted else None,
        "client": record.client,
        "receipt": receipt(record),
    }


def _purpose_state(purpose: Purpose, records: list[ConsentRecord], now: datetime) -> dict[str, Any]:
    status = consent_status(purpose, as_events(records), now)
    return {
        "purpose": purpose.id,
        "legal_basis": purpose.legal_basis.value,
        "state": status.state.value,
        "lawful": status.lawful,
        "reason": status.reason.value,
        "expires_at": status.expires_at,
        "history": [_record(r, purpose) for r in reversed(records)],
    }


@blp.route(SUBJECT_PATH, parameters=[SUBJECT_ID_PARAMETER])
class SubjectConsents(MethodView):
    @roles(Role.APP, Role.AUDITOR, Role.ADMIN)
    @blp.response(200, SubjectConsentsSchema, example=examples.SUBJECT_CONSENTS)
    @blp.alt_response(**INVALID_SUBJECT_ID)
    def get(self, subject_id: str) -> dict[str, Any]:
        """Consent state and history per purpose (an app sees its own purposes only)."""
        client = caller()
        check_subject_id(subject_id)
        subject = find_subject(keyring().pseudonym(subject_id))
        now = datetime.now(UTC)
        records = consent_records(subject)
        visible = [p for p in policies().purposes.values() if may_use(client, p.id)]
        states = [
            _purpose_state(p, [r for r in records if r.purpose == p.id], now) for p in visible
        ]
        return {"subject_id": subject_id, "purposes": states}

    @roles(Role.APP, Role.ADMIN)
    @blp.arguments(TcfSignalSchema, example=examples.TCF_SIGNAL)
    @blp.response(200, TcfAppliedSchema, example=examples.TCF_APPLIED)
    @blp.alt_response(**BAD_TC_STRING)
    def put(self, signal: dict[str, Any], subject_id: str) -> dict[str, Any]:
        """Apply an IAB TCF string to every mapped purpose the client may use."""
        client = caller()
        check_subject_id(subject_id)
        return apply_tc_string(
            signal["tcf"],
            subject_id=subject_id,
            client=client,
            channel=signal.get("source"),
            now=datetime.now(UTC),
        )


@blp.route(SUBJECT_PATH + "/<string:purpose>", parameters=[SUBJECT_ID_PARAMETER, PURPOSE_PARAMETER])
class SubjectPurposeConsent(MethodView):
    @roles(Role.APP, Role.AUDITOR, Role.ADMIN)
    @blp.response(200, PurposeConsentSchema, example=examples.PURPOSE_STATE)
    @blp.alt_response(**UNKNOWN_PURPOSE)
    @blp.alt_response(**INVALID_SUBJECT_ID)
    def get(self, subject_id: str, purpose: str) -> dict[str, Any]:
        """Consent state and history for one purpose."""
        found = _purpose(purpose)
        caller(purpose)
        check_subject_id(subject_id)
        subject = find_subject(keyring().pseudonym(subject_id))
        return _purpose_state(found, consent_records(subject, purpose), datetime.now(UTC))

    @roles(Role.APP, Role.ADMIN)
    @blp.arguments(ConsentChangeSchema, example=examples.CONSENT_CHANGE)
    @blp.response(200, ConsentRecordSchema, example=examples.CONSENT_RECORD)
    @blp.alt_response(**UNKNOWN_PURPOSE)
    def put(self, change: dict[str, Any], subject_id: str, purpose: str) -> dict[str, Any]:
        """Record a grant or withdrawal (effective at once); returns a signed receipt."""
        found = _purpose(purpose)
        client = caller(purpose)
        check_subject_id(subject_id)
        pseudonym = keyring().pseudonym(subject_id)
        with write_transaction():
            # decisions on this subject commit before this change, or wait and see it
            lock_subject(pseudonym, shared=False)
            # timed under the lock: the subject's changes are ordered by time as they commit
            now = datetime.now(UTC)
            subject = ensure_subject(keyring(), pseudonym, now)
            record = record_consent(
                subject,
                subject_id=subject_id,
                purpose=purpose,
                client=client.name,
                policies=policies(),
                keyring=keyring(),
                now=now,
                **change,
            )
            action = Action.CONSENT_GRANT if record.granted else Action.CONSENT_WITHDRAW
            audit(
                AuditRecord(
                    actor=client.name,
                    action=action,
                    policy_hash=policies().hash,
                    subject=pseudonym,
                    purpose=purpose,
                    outcome="recorded",
                    fields={
                        "source": record.source,
                        "notice_version": record.notice_version,
                        "receipt_id": record.receipt_id,
                    },
                    request_id=g.request_id,
                ),
                now,
            )
        return _record(record, found)
