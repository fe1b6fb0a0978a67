"""Read-only views of the active policy set, the database registry and the public signing key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response
from flask.views import MethodView
from marshmallow import RAISE, fields, validate

from gateway import keyring, policies
from gateway.api import examples
from gateway.api.auth import roles
from gateway.api.contract import DATABASE_PARAMETER, POLICY_HASH, problem, vocabulary
from gateway.api.strict import Blueprint, StrictBoolean, StrictSchema, StrictString
from gateway.crypto import SIGNATURE_ALGORITHM
from gateway.errors import NotFound
from gateway.policy.model import Fallback, LegalBasis, Registration
from gateway.policy.records import records_csv, records_of_processing
from gateway.store.clients import Role

blp = Blueprint("documents", __name__, url_prefix="/v1", description="Policies and registry")


DURATION = {"description": "An ISO 8601 duration", "example": "P90D"}


class CategoryDocumentSchema(StrictSchema):
    """A data category as written in policies/."""

    attributes = fields.List(
        fields.String(), metadata={"description": "The attribute names that belong to it"}
    )
    events = fields.List(
        fields.String(), metadata={"description": "The event types that belong to it"}
    )
    retention = fields.String(
        required=True,
        metadata={**DURATION, "description": "How long its items are kept (ISO 8601 duration)"},
    )
    pii = StrictBoolean(metadata={"description": "Its values are encrypted at rest"})
    sensitive = StrictBoolean(metadata={"description": "It is used only under explicit consent"})


class SegmentDocumentSchema(StrictSchema):
    name = fields.String(required=True, metadata={"description": "The rule's name"})
    attribute = fields.String(
        required=True, metadata={"description": "The subject attribute it reads"}
    )
    candidate_field = fields.String(
        required=True, metadata={"description": "The candidate feature it compares with"}
    )
    weight = fields.Raw(
        required=True,
        metadata={"type": "number", "description": "Added to the score where they are equal"},
    )


class ScoringDocumentSchema(StrictSchema):
    half_life = fields.String(
        allow_none=True,
        metadata={**DURATION, "description": "An event's weight halves every half_life"},
    )
    event_weights = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(metadata={"type": "number"}),
        metadata={"description": "Weight per event type", "example": {"purchase": 3, "view": 0.5}},
    )
    exclude_purchased_within = fields.String(
        allow_none=True,
        metadata={**DURATION, "description": "Items bought this recently are not ranked"},
    )
    segments = fields.List(
        fields.Nested(SegmentDocumentSchema),
        metadata={"description": "Rules matching subject attributes to candidate features"},
    )


class PurposeDocumentSchema(StrictSchema):
    """A purpose as written in policies/."""

    description = fields.String(required=True, metadata={"description": "What it is for"})
    legal_basis = fields.String(
        required=True,
        validate=vocabulary(LegalBasis),
        metadata={"description": "consent: opt-in; legitimate_interest: until objected; contract"},
    )
    categories = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The data categories it may use (the minimization allowlist)"},
    )
    honor_gpc = StrictBoolean(
        metadata={"description": "Sec-GPC: 1 on a request counts as an objection"}
    )
    consent_max_age = fields.String(
        allow_none=True,
        metadata={**DURATION, "description": "A grant lapses this long after it was given"},
    )
    consent_history_retention = fields.String(
        allow_none=True,
        metadata={**DURATION, "description": "How long superseded consent records are kept"},
    )
    fallback = fields.String(
        validate=vocabulary(Fallback),
        metadata={"description": "What callers get without a lawful basis (default popular)"},
    )
    scoring = fields.Nested(
        ScoringDocumentSchema,
        allow_none=True,
        metadata={"description": "How rankings are scored"},
    )
    tcf_purposes = fields.List(
        fields.Integer(validate=validate.Range(min=1, max=11)),
        metadata={
            "description": "The IAB TCF purposes (1-11) a TC string must allow for this purpose",
            "example": [5, 6],
        },
    )


class TcfDocumentSchema(StrictSchema):
    """The `tcf:` map of policies/: how TC strings are read."""

    vendor_id = fields.Integer(
        validate=validate.Range(min=1, max=65535),
        metadata={
            "description": "The gateway's vendor id on the Global Vendor List; absent: strings"
            " are read through their Publisher TC segment, as the site's own publisher",
            "example": 755,
        },
    )


class PoliciesSchema(StrictSchema):
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    categories = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(CategoryDocumentSchema),
        required=True,
        metadata={"description": "The data categories by id"},
    )
    purposes = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(PurposeDocumentSchema),
        required=True,
        metadata={"description": "The purposes by id"},
    )
    tcf = fields.Nested(
        TcfDocumentSchema,
        metadata={"description": "How IAB TCF strings are read; absent where they are not"},
    )


class RegistrationSchema(StrictSchema):
    id = fields.String(required=True, metadata={"description": "The database's id"})
    name = fields.String(required=True, metadata={"description": "Its name"})
    controller = fields.String(required=True, metadata={"description": "The data controller"})
    security_officer = fields.String(
        required=True, metadata={"description": "Who answers for its security"}
    )
    purposes = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The purposes it is registered for"},
    )
    categories = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The data categories it may hold"},
    )
    location = fields.String(required=True, metadata={"description": "Where it is hosted"})
    transfers = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Where its data is transferred abroad"},
    )
    reference = fields.String(
        required=True, metadata={"description": "The registration's reference"}
    )
    review_by = fields.Date(
        required=True,
        metadata={"description": "The registration counts as absent after this date"},
    )
    active = StrictBoolean(required=True, metadata={"description": "False past review_by"})


class RegistryListSchema(StrictSchema):
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    databases = fields.List(
        fields.Nested(RegistrationSchema),
        required=True,
        metadata={"description": "Every registered database"},
    )


class RecipientSchema(StrictSchema):
    id = fields.String(required=True, metadata={"description": "The recipient's id"})
    name = fields.String(required=True, metadata={"description": "Who it is"})
    purposes = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The purposes whose consent changes it is told of"},
    )
    url = fields.String(
        required=True, metadata={"description": "Where its webhooks go", "format": "uri"}
    )
    secret_env = fields.String(
        required=True,
        metadata={"description": "The variable holding its signing secret (never the secret)"},
    )


class RecipientListSchema(StrictSchema):
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    recipients = fields.List(
        fields.Nested(RecipientSchema),
        required=True,
        metadata={"description": "Every recipient: told of its purposes' changes and erasures"},
    )


class RecordsArgs(StrictSchema):
    format = StrictString(
        load_default="json",
        validate=validate.OneOf(["json", "csv"]),
        metadata={"description": "json, or csv: a row per database"},
    )


class RecordPurposeSchema(StrictSchema):
    id = fields.String(required=True, metadata={"description": "The purpose's id"})
    description = fields.String(required=True, metadata={"description": "What it is for"})
    legal_basis = fields.String(
        required=True, validate=vocabulary(LegalBasis), metadata={"description": "Its legal basis"}
    )
    categories = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "What of this database the purpose may use"},
    )


class RecordCategorySchema(StrictSchema):
    id = fields.String(required=True, metadata={"description": "The data category's id"})
    retention = fields.String(
        required=True, metadata={**DURATION, "description": "How long it is kept"}
    )
    pii = StrictBoolean(required=True, metadata={"description": "Encrypted at rest"})
    sensitive = StrictBoolean(
        required=True, metadata={"description": "Used only under explicit consent"}
    )


class RecordRecipientSchema(StrictSchema):
    id = fields.String(required=True, metadata={"description": "The recipient's id"})
    name = fields.String(required=True, metadata={"description": "Who it is"})
    purposes = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The purposes it is told of (none: erasures only)"},
    )


class RecordSchema(StrictSchema):
    database = fields.String(required=True, metadata={"description": "The database's id"})
    name = fields.String(required=True, metadata={"description": "Its name"})
    controller = fields.String(required=True, metadata={"description": "The data controller"})
    security_officer = fields.String(
        required=True, metadata={"description": "Who answers for its security"}
    )
    reference = fields.String(
        required=True, metadata={"description": "The registration's reference"}
    )
    location = fields.String(required=True, metadata={"description": "Where it is hosted"})
    transfers = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Where its data is transferred abroad"},
    )
    review_by = fields.String(
        required=True,
        metadata={"description": "The registration's review date", "format": "date"},
    )
    active = StrictBoolean(required=True, metadata={"description": "False past the review date"})
    purposes = fields.List(
        fields.Nested(RecordPurposeSchema),
        required=True,
        metadata={"description": "The purposes it is registered for"},
    )
    categories = fields.List(
        fields.Nested(RecordCategorySchema),
        required=True,
        metadata={"description": "The data categories it holds"},
    )
    recipients = fields.List(
        fields.Nested(RecordRecipientSchema),
        required=True,
        metadata={"description": "Who its data is disclosed to (registry/recipients.yaml)"},
    )


class RecordsSchema(StrictSchema):
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    records = fields.List(
        fields.Nested(RecordSchema),
        required=True,
        metadata={"description": "A record per registered database"},
    )


class PublicKeySchema(StrictSchema):
    key_id = fields.String(required=True, metadata={"description": "The key's id"})
    algorithm = fields.String(
        required=True,
        validate=vocabulary([SIGNATURE_ALGORITHM]),
        metadata={"description": "The signature scheme"},
    )
    public_key = fields.String(
        required=True, metadata={"description": "Raw Ed25519 key, base64url"}
    )
    public_key_pem = fields.String(
        required=True, metadata={"description": "The same key, PEM (SubjectPublicKeyInfo)"}
    )


def _registration(registration: Registration, now: datetime) -> dict[str, Any]:
    return {**registration.__dict__, "active": not registration.expired(now)}


@blp.route("/policies")
class Policies(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, PoliciesSchema, example=examples.POLICIES)
    def get(self) -> dict[str, Any]:
        """The active policy set (categories, purposes, the tcf map) and its content hash."""
        active = policies()
        return {"policy_hash": active.hash, **active.documents["policies"]}


@blp.route("/registry/databases")
class Databases(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, RegistryListSchema, example=examples.REGISTRY)
    def get(self) -> dict[str, Any]:
        """Every registered database; `active` is false past its review date."""
        now = datetime.now(UTC)
        found = policies().databases.values()
        return {"policy_hash": policies().hash, "databases": [_registration(r, now) for r in found]}


@blp.route("/registry/recipients")
class Recipients(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, RecipientListSchema, example=examples.RECIPIENTS)
    def get(self) -> dict[str, Any]:
        """Every recipient the data is disclosed to, told of consent changes and erasures."""
        found = [
            {**r.__dict__, "purposes": list(r.purposes)} for r in policies().recipients.values()
        ]
        return {"policy_hash": policies().hash, "recipients": found}


@blp.route("/registry/databases/<string:database_id>", parameters=[DATABASE_PARAMETER])
class Database(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, RegistrationSchema, example=examples.CRM_REGISTRATION)
    @blp.alt_response(
        **problem(
            404,
            "unknown_database",
            "Unknown database.",
            {"database_id": ["Not a registered database: 'data_lake'."]},
        )
    )
    def get(self, database_id: str) -> dict[str, Any]:
        """One registered database."""
        registration = policies().databases.get(database_id)
        if registration is None:
            raise NotFound(
                "Unknown database.",
                {"database_id": [f"Not a registered database: '{database_id}'."]},
                code="unknown_database",
            )
        return _registration(registration, datetime.now(UTC))


@blp.route("/registry/records-of-processing")
class RecordsOfProcessing(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.arguments(RecordsArgs, location="query", as_kwargs=True, unknown=RAISE)
    @blp.response(200, RecordsSchema, example=examples.RECORDS)
    @blp.doc(
        responses={
            "200": {
                "description": "JSON, or with format=csv a row per database",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/Records"},
                        "example": examples.RECORDS,
                    },
                    "text/csv": {
                        "schema": {"type": "string"},
                        "example": examples.RECORDS_CSV,
                    },
                },
            }
        }
    )
    def get(self, format: str) -> Any:
        """Records of processing (GDPR Art. 30): a record per registered database, as JSON or as
        CSV (a row per database)."""
        active = policies()
        records = records_of_processing(active, datetime.now(UTC))
        if format == "csv":
            return Response(
                records_csv(records),
                mimetype="text/csv",
                headers={"Content-Disposition": 'attachment; filename="records-of-processing.csv"'},
            )
        return {"policy_hash": active.hash, "records": records}


@blp.route("/keys/signing")
class SigningKey(MethodView):
    @roles(Role.APP, Role.AUDITOR, Role.ADMIN)
    @blp.response(200, PublicKeySchema, example=examples.SIGNING_KEY)
    def get(self) -> dict[str, Any]:
        """The public key that verifies consent receipts (and audit checkpoints)."""
        ring = keyring()
        return {
            "key_id": ring.key_id,
            "algorithm": SIGNATURE_ALGORITHM,
            "public_key": ring.public_key,
            "public_key_pem": ring.public_key_pem,
        }
