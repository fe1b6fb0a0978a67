"""POST /v1/personalize: auth -> schema -> store -> decide -> score -> audit -> response."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g, request
from flask.views import MethodView
from marshmallow import RAISE, ValidationError, fields, validate, validates, validates_schema

from gateway import keyring, policies, scoring
from gateway.api import examples
from gateway.api.auth import caller, roles
from gateway.api.contract import POLICY_HASH, problem, vocabulary
from gateway.api.signals import BAD_TC_STRING, PurposeSignalSchema, apply_tc_string, tc_string_field
from gateway.api.strict import (
    Blueprint,
    Scalar,
    StrictBoolean,
    StrictFloat,
    StrictInteger,
    StrictSchema,
    StrictString,
    SubjectIdField,
)
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.errors import Conflict
from gateway.observability import DECISIONS
from gateway.policy.engine import Decision, decide, event_cutoffs
from gateway.policy.model import Outcome, Reason
from gateway.store.clients import Role
from gateway.store.consents import as_events, consent_receipts, consent_records
from gateway.store.db import lock_subject, write_transaction
from gateway.store.history import History
from gateway.store.models import ConsentRecord, Subject
from gateway.store.profiles import holdings, read_profile
from gateway.store.subjects import find_subject

DECIDE_ATTEMPTS = 3  # a decision made on consent that changed meanwhile is made again

blp = Blueprint("personalize", __name__, url_prefix="/v1", description="Governed rankings")


class CandidateSchema(StrictSchema):
    id = StrictString(
        required=True,
        validate=validate.Length(min=1, max=256),
        metadata={"description": "The item's id, unique among the candidates", "example": "sku-2"},
    )
    category = StrictString(
        required=True,
        validate=validate.Length(min=1, max=256),
        metadata={"description": "The item's product category", "example": "shoes"},
    )
    popularity = StrictFloat(
        validate=validate.Range(min=0),
        metadata={
            "description": "An anonymous popularity count, which the non-personalized ranking"
            " orders by",
            "example": 90,
        },
    )
    features = fields.Dict(
        keys=StrictString(validate=validate.Length(min=1, max=64)),
        values=Scalar(),
        metadata={
            "description": "The item's features (names of 1 to 64 characters) that segment rules"
            " match against the subject's attributes",
            "example": {"brand": "acme", "size": 42},
        },
    )


class PersonalizeSchema(StrictSchema):
    subject_id = SubjectIdField
    purpose = StrictString(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={
            "description": "The purpose of the ranking; an app must have been granted it",
            "policy_ids": "purposes",
            "example": "recommendations",
        },
    )
    candidates = fields.List(
        fields.Nested(CandidateSchema),
        required=True,
        metadata={
            "description": "The items to rank, with unique ids (at most GATEWAY_MAX_CANDIDATES)",
            "uniqueItems": True,
            "count_setting": "MAX_CANDIDATES",
        },
    )
    context = fields.Dict(
        keys=StrictString(validate=validate.Length(max=64)),
        values=Scalar(),
        metadata={
            "description": "The caller's context of the request (names of at most 64 characters);"
            " not stored",
            "example": {"page": "home"},
        },
    )
    limit = StrictInteger(
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "How many items to return at most (default: all)"},
    )
    tcf = tc_string_field()

    @validates("purpose")
    def _known_purpose(self, value: str, **_: Any) -> None:
        if value not in policies().purposes:
            raise ValidationError(f"Unknown purpose: '{value}'.")

    @validates_schema
    def _candidates(self, data: dict[str, Any], **_: Any) -> None:
        candidates = data.get("candidates", [])
        most = current_app.config["MAX_CANDIDATES"]
        if not 1 <= len(candidates) <= most:
            raise ValidationError(f"Give between 1 and {most} candidates.", "candidates")
        ids = [c["id"] for c in candidates]
        if len(set(ids)) != len(ids):
            raise ValidationError("Candidate ids must be unique.", "candidates")


class ExplainArgs(StrictSchema):
    explain = fields.Boolean(
        load_default=False,
        metadata={"description": "Add each item's score contributions and the excluded items"},
    )


class ItemSchema(StrictSchema):
    id = fields.String(required=True, metadata={"description": "The candidate's id"})
    score = fields.Float(
        required=True,
        metadata={"description": "Higher ranks first; equal scores keep the caller's order"},
    )
    contributions = fields.Dict(
        keys=fields.String(),
        values=fields.Float(),
        metadata={
            "description": "With explain: what the score sums (`affinity:<category>`,"
            " `segment:<name>`, or `popularity`)",
            "example": {"affinity:shoes": 1.0, "segment:favorite_brand": 0.5},
        },
    )


class DroppedSchema(StrictSchema):
    field = fields.String(
        required=True,
        metadata={"description": "The attribute name or event type held back"},
    )
    database = fields.String(required=True, metadata={"description": "The database holding it"})
    reason = fields.String(
        required=True,
        validate=vocabulary(Reason),
        metadata={"description": "Why it did not reach the scorer"},
    )
    count = fields.Integer(
        required=True,
        validate=validate.Range(min=1),
        metadata={"description": "How many items of it were held back"},
    )


class DecisionSchema(StrictSchema):
    decision_id = fields.String(
        required=True,
        metadata={"description": "The decision's id, also in its audit entry", "format": "uuid"},
    )
    outcome = fields.String(
        required=True,
        validate=vocabulary(Outcome),
        metadata={
            "description": "allow: personalized; fallback: non-personalized ranking, no"
            " personal data read; deny: no ranking (the purpose has no fallback)"
        },
    )
    personalized = StrictBoolean(
        required=True, metadata={"description": "True only when the outcome is allow"}
    )
    items = fields.List(
        fields.Nested(ItemSchema),
        required=True,
        metadata={"description": "The ranked candidates, best first; empty on deny"},
    )
    excluded = fields.List(
        fields.String(),
        metadata={"description": "With explain: candidates left out as recently bought"},
    )
    reasons = fields.List(
        fields.String(validate=vocabulary(Reason)),
        required=True,
        metadata={"description": "Why the outcome is what it is, machine-readable"},
    )
    fields_used = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The data categories and attribute names read"},
    )
    fields_dropped = fields.List(
        fields.Nested(DroppedSchema),
        required=True,
        metadata={"description": "The data held but not used, and why"},
    )
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    tcf = fields.List(
        fields.Nested(PurposeSignalSchema),
        metadata={
            "description": "With a tcf string: what it did to each mapped purpose the client may"
            " use, applied before deciding"
        },
    )


GPC = {
    "in": "header",
    "name": "Sec-GPC",
    "required": False,
    "description": "Global Privacy Control: `1` objects to purposes that honor it",
    "schema": {"type": "string"},
    "example": "1",
}


def _consents_changed(pseudonym: str, seen: list[ConsentRecord]) -> bool:
    """Whether the subject's consent records differ from those a decision was made on."""
    return consent_receipts(pseudonym) != [r.receipt_id for r in seen]


def _rank(
    decision: Decision,
    subject: Subject | None,
    history: History,
    body: dict[str, Any],
    now: datetime,
) -> scoring.Ranking:
    """Score on the minimized profile when allowed; otherwise without reading personal data."""
    candidates = [scoring.Candidate(**c) for c in body["candidates"]]
    limit = body.get("limit", len(candidates))
    if decision.outcome is Outcome.DENY:
        return scoring.Ranking(())
    if decision.outcome is Outcome.FALLBACK:
        return scoring.rank_popular(candidates, limit=limit)
    # of the items bought, only the candidates' are read: the rest cannot change the ranking
    items = [candidate.id for candidate in candidates]
    rules = policies().purposes[decision.purpose].scoring
    profile = read_profile(
        subject,
        decision.reads,
        keyring(),
        now=now,
        half_life=rules.half_life,
        history=history,
        items=items,
    )
    return scoring.rank(candidates, profile, rules, now=now, limit=limit)


def _audit_record(decision: Decision, decision_id: str, pseudonym: str) -> AuditRecord:
    return AuditRecord(
        actor=g.client.name,
        action=Action.DECISION,
        policy_hash=decision.policy_hash,
        subject=pseudonym,
        purpose=decision.purpose,
        outcome=decision.outcome.value,
        reasons=[r.value for r in decision.reasons],
        fields={
            "used": list(decision.fields_used),
            "dropped": [
                f"{d.field}@{d.database}:{d.reason.value}" for d in decision.fields_dropped
            ],
        },
        request_id=g.request_id,
        decision_id=decision_id,
    )


def _response(
    decision: Decision,
    decision_id: str,
    ranking: scoring.Ranking,
    explain: bool,
    applied: dict[str, Any] | None,
) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"id": i.id, "score": i.score} for i in ranking.items]
    if explain:
        for item, scored in zip(items, ranking.items, strict=True):
            item["contributions"] = dict(scored.contributions)
    body: dict[str, Any] = {
        "decision_id": decision_id,
        "outcome": decision.outcome.value,
        "personalized": decision.personalized,
        "items": items,
        "reasons": [r.value for r in decision.reasons],
        "fields_used": list(decision.fields_used),
        "fields_dropped": [
            {"field": d.field, "database": d.database, "reason": d.reason.value, "count": d.count}
            for d in decision.fields_dropped
        ],
        "policy_hash": decision.policy_hash,
    }
    if explain:
        body["excluded"] = list(ranking.excluded)
    if applied is not None:
        body["tcf"] = applied["purposes"]
    return body


@blp.route("/personalize", parameters=[GPC])
class Personalize(MethodView):
    @roles(Role.APP, Role.ADMIN)
    @blp.arguments(ExplainArgs, location="query", as_kwargs=True, unknown=RAISE)
    @blp.arguments(PersonalizeSchema, example=examples.PERSONALIZE)
    @blp.response(200, DecisionSchema, example=examples.DECISION)
    @blp.alt_response(**BAD_TC_STRING)
    @blp.alt_response(
        **problem(
            409,
            "consent_changing",
            "The subject's consent kept changing while the decision was made; try again.",
        )
    )
    def post(self, body: dict[str, Any], explain: bool) -> dict[str, Any]:
        """Rank candidates for a subject, personalized only where policy and consent allow."""
        purpose = body["purpose"]
        client = caller(purpose)
        applied = None
        if "tcf" in body:  # applied first, so the decision sees what the string changed
            applied = apply_tc_string(
                body["tcf"],
                subject_id=body["subject_id"],
                client=client,
                channel=None,
                now=datetime.now(UTC),
            )
        pseudonym = keyring().pseudonym(body["subject_id"])
        gpc = request.headers.get("Sec-GPC", "").strip() == "1"
        for _ in range(DECIDE_ATTEMPTS):
            now = datetime.now(UTC)
            subject = find_subject(pseudonym)
            consents = consent_records(subject)
            # A change committed is in force, whatever its clock said (another host's may run
            # ahead of this one's): the decision is made no earlier than any change it read.
            now = max([now, *(record.recorded_at for record in consents)])
            history = History(subject, event_cutoffs(policies(), now))
            decision = decide(
                purpose,
                gpc=gpc,
                consents=as_events(consents),
                holdings=holdings(subject, history),
                policies=policies(),
                now=now,
            )
            ranking = _rank(decision, subject, history, body, now)
            decision_id = str(uuid.uuid4())
            with write_transaction(serialize=False):
                # The log must show this decision before any consent change it did not see:
                # a change commits after this (its lock waits for ours), or it has committed
                # and is seen here, and the decision is made again on what it says.
                lock_subject(pseudonym, shared=True)
                if _consents_changed(pseudonym, consents):
                    continue
                audit(_audit_record(decision, decision_id, pseudonym), now)
            DECISIONS.labels(decision.purpose, decision.outcome.value).inc()
            return _response(decision, decision_id, ranking, explain, applied)
        raise Conflict(
            "The subject's consent kept changing while the decision was made; try again.",
            code="consent_changing",
        )
