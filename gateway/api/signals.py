"""IAB TCF consent signals in: a TC string applied to every mapped purpose a client may use.

    applied = apply_tc_string(text, subject_id="alice", client=g.client, channel="web_cmp",
                              now=datetime.now(UTC))
    applied["purposes"]   # [{"purpose": "recommendations", "result": "granted", ...}, ...]

Used by `PUT /v1/subjects/{id}/consents` and by `POST /v1/personalize` with a `tcf` field. A
string that changes nothing costs a read of the subject's consent history, never a write; a
change goes through `record_consent` with its audit entry, under the subject's lock, like any
other consent change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g
from marshmallow import fields, validate

from gateway import keyring, policies
from gateway.api.auth import may_use
from gateway.api.contract import problem, vocabulary
from gateway.api.strict import StrictSchema, StrictString
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.errors import InvalidInput
from gateway.policy.model import Purpose, TcfSettings
from gateway.policy.signals import Ignored, PurposeOutcome, SignalResult, plan_tcf
from gateway.store.clients import ApiClient
from gateway.store.consents import TcfSignal, as_choices, consent_records, record_consent
from gateway.store.db import lock_subject, write_transaction
from gateway.store.models import Subject
from gateway.store.subjects import ensure_subject, find_subject
from gateway.tcf import (
    MAX_TC_STRING_LENGTH,
    TCString,
    TCStringErrorCode,
    decode_tc_string,
)

TCF_SOURCE = "tcf"
TCF_NOT_CONFIGURED = "tcf_not_configured"

TC_STRING_FIELD = {
    "description": "An IAB TCF v2.2 or v2.3 TC string, as the site's CMP made it (base64url"
    " segments separated by '.'); it is decoded and kept as its SHA-256 only. A string that does"
    " not decode is a 422 whose `code` says why (not_base64url, truncated, ...)",
    # what a schema can say; the decoder checks it too, to answer with its own code
    "pattern": r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
    "example": "CQt-4cAQuQzaRAfAHCENCWFgALwAAEIAAAYgF6QAYF5gXoBekAGBeYF6ABhgAIC8x0AGBeYF6CwAIC9A"
    ".IF6QAYF5gXoA.YAAAAAAAAAAA",
}


def tc_string_field(**kwargs: Any) -> StrictString:
    """The `tcf` field of a request body."""
    return StrictString(
        validate=validate.Length(min=1, max=MAX_TC_STRING_LENGTH),
        metadata=TC_STRING_FIELD,
        **kwargs,
    )


class TcfSignalSchema(StrictSchema):
    tcf = tc_string_field(required=True)
    source = StrictString(
        validate=validate.Length(min=1, max=64),
        metadata={
            "description": "Where the app got the string (its CMP, a page); written into the"
            " audit entries of the changes as `channel`. The records' own source is `tcf`",
            "example": "web_cmp",
        },
    )


class PurposeSignalSchema(StrictSchema):
    purpose = fields.String(required=True, metadata={"description": "The purpose"})
    result = fields.String(
        required=True,
        validate=vocabulary(SignalResult),
        metadata={
            "description": "granted or withdrawn: a record was written (for a legitimate"
            " interest purpose, withdrawn is an objection); unchanged: the state already says"
            " so, or the same string was applied before; ignored: see reason"
        },
    )
    reason = fields.String(
        required=True,
        allow_none=True,
        validate=vocabulary(Ignored),
        metadata={
            "description": "Why it was ignored: vendor_not_disclosed (the gateway's vendor is"
            " not in the Disclosed Vendors segment), no_publisher_segment (publisher mode and no"
            " Publisher TC segment), stale (LastUpdated older than the newest choice), expired"
            " (a grant older than the purpose's consent_max_age)"
        },
    )
    receipt_id = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The receipt of the record written, if one was", "format": "uuid"},
    )


def _tc_string_facts() -> dict[str, fields.Field]:
    """What a TC string says of itself, as the response and a receipt show it."""
    return {
        "sha256": fields.String(
            required=True,
            metadata={"description": "The string's SHA-256 (hex)", "pattern": "^[0-9a-f]{64}$"},
        ),
        "cmp_id": fields.Integer(required=True, metadata={"description": "The CMP's id"}),
        "vendor_list_version": fields.Integer(
            required=True, metadata={"description": "The Global Vendor List version"}
        ),
        "policy_version": fields.Integer(
            required=True, metadata={"description": "The TCF policy version (4: v2.2, 5: v2.3)"}
        ),
    }


TcfStringInfoSchema = StrictSchema.from_dict(
    {
        **_tc_string_facts(),
        "last_updated": fields.AwareDateTime(
            required=True, metadata={"description": "When the subject last made the choices"}
        ),
    },
    name="TcfStringInfo",
)
ReceiptTcfSchema = StrictSchema.from_dict(
    {
        **_tc_string_facts(),
        "last_updated": fields.String(
            required=True,
            metadata={
                "description": "When the subject last made the choices (UTC), as signed",
                "format": "date-time",
            },
        ),
    },
    name="ReceiptTcf",
)


class TcfAppliedSchema(StrictSchema):
    subject_id = fields.String(required=True, metadata={"description": "The subject's id"})
    tcf = fields.Nested(
        TcfStringInfoSchema, required=True, metadata={"description": "What the string says"}
    )
    purposes = fields.List(
        fields.Nested(PurposeSignalSchema),
        required=True,
        metadata={
            "description": "Per purpose mapped to TCF purposes (tcf_purposes) that the client"
            " may use, what the string did"
        },
    )


BAD_TC_STRING = problem(
    422,
    TCStringErrorCode.TRUNCATED.value,
    "The TC string is refused, or the body is invalid; for a string `code` says why: "
    + ", ".join(code.value for code in TCStringErrorCode)
    + f", or {TCF_NOT_CONFIGURED} (the policies have no tcf: map). Nothing is recorded.",
    {"tcf": ["The string ends too early."]},
    detail="The string ends too early.",
)


def tcf_settings() -> TcfSettings:
    """The policy set's `tcf:` map; a 422 naming `tcf` where there is none."""
    settings = policies().tcf
    if settings is None:
        message = "TCF is not configured: the policy documents have no tcf: map."
        raise InvalidInput(message, {"tcf": [message]}, code=TCF_NOT_CONFIGURED)
    return settings


def decode(text: str, now: datetime) -> TCString:
    """The decoded string; a TCStringError is the 422 naming `tcf` with the decoder's code."""
    return decode_tc_string(text, now=now)


def _signal(tc: TCString) -> TcfSignal:
    """What a record keeps of the string."""
    return TcfSignal(
        cmp_id=tc.cmp_id,
        vendor_list_version=tc.vendor_list_version,
        policy_version=tc.policy_version,
        last_updated=tc.last_updated,
        sha256=tc.sha256,
    )


def _record(
    tc: TCString,
    outcome: PurposeOutcome,
    subject: Subject,
    subject_id: str,
    client: ApiClient,
    channel: str | None,
    now: datetime,
) -> str:
    """Write one change with its audit entry; returns its receipt id."""
    record = record_consent(
        subject,
        subject_id=subject_id,
        purpose=outcome.purpose,
        granted=outcome.result is SignalResult.GRANTED,
        source=TCF_SOURCE,
        notice_version=f"tcf-policy-{tc.policy_version}/gvl-{tc.vendor_list_version}",
        expires_at=outcome.expires_at,
        client=client.name,
        policies=policies(),
        keyring=keyring(),
        now=now,
        tcf=_signal(tc),
    )
    action = Action.CONSENT_GRANT if record.granted else Action.CONSENT_WITHDRAW
    fields = {
        "source": record.source,
        "notice_version": record.notice_version,
        "receipt_id": record.receipt_id,
        "tcf_sha256": tc.sha256,
        "tcf_cmp_id": tc.cmp_id,
        "tcf_last_updated": tc.last_updated.isoformat(),
    }
    if channel is not None:
        fields["channel"] = channel
    entry = AuditRecord(
        actor=client.name,
        action=action,
        policy_hash=policies().hash,
        subject=subject.pseudonym,
        purpose=outcome.purpose,
        outcome="recorded",
        fields=fields,
        request_id=g.request_id,
    )
    audit(entry, now)
    return str(record.receipt_id)


def _plan(
    tc: TCString,
    subject: Subject | None,
    purposes: list[Purpose],
    settings: TcfSettings,
    now: datetime,
) -> list[PurposeOutcome]:
    """What the string does to each purpose, given the subject's consent history."""
    choices = as_choices(consent_records(subject)) if subject is not None else []
    return plan_tcf(tc, purposes, choices, settings, now)


def apply_tc_string(
    text: str, *, subject_id: str, client: ApiClient, channel: str | None, now: datetime
) -> dict[str, Any]:
    """Apply a TC string to the subject's consent for every mapped purpose the client may use;
    what it did per purpose, as `TcfAppliedSchema` shows it."""
    settings = tcf_settings()
    tc = decode(text, now)
    purposes = [p for p in policies().purposes.values() if p.tcf_purposes and may_use(client, p.id)]
    pseudonym = keyring().pseudonym(subject_id)
    plan = _plan(tc, find_subject(pseudonym), purposes, settings, now)
    receipts: dict[str, str] = {}
    if any(outcome.writes for outcome in plan):
        with write_transaction():
            # as a single consent change: decisions on this subject commit first, or see it
            lock_subject(pseudonym, shared=False)
            # timed under the lock: the subject's changes are ordered by time as they commit
            now = datetime.now(UTC)
            subject = ensure_subject(keyring(), pseudonym, now)
            plan = _plan(tc, subject, purposes, settings, now)
            for outcome in (o for o in plan if o.writes):
                receipts[outcome.purpose] = _record(
                    tc, outcome, subject, subject_id, client, channel, now
                )
    return {
        "subject_id": subject_id,
        "tcf": {
            "sha256": tc.sha256,
            "cmp_id": tc.cmp_id,
            "vendor_list_version": tc.vendor_list_version,
            "policy_version": tc.policy_version,
            "last_updated": tc.last_updated,
        },
        "purposes": [
            {
                "purpose": o.purpose,
                "result": o.result.value,
                "reason": o.reason.value if o.reason else None,
                "receipt_id": receipts.get(o.purpose),
            }
            for o in plan
        ],
    }
