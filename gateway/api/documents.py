"""Read-only views of the active policy set, the database registry and the public signing key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response
from flask.views import MethodView
from marshmallow import RAISE, fields, validate

from gateway import keyring, policies
from gateway.api.auth import roles
from gateway.api.strict import Blueprint, StrictBoolean, StrictSchema, StrictString
from gateway.crypto import SIGNATURE_ALGORITHM
from gateway.errors import NotFound
from gateway.policy.model import Registration
from gateway.policy.records import records_csv, records_of_processing
from gateway.store.clients import Role

blp = Blueprint("documents", __name__, url_prefix="/v1", description="Policies and registry")


class PoliciesSchema(StrictSchema):
    policy_hash = fields.String()
    categories = fields.Dict()
    purposes = fields.Dict()


class RegistrationSchema(StrictSchema):
    id = fields.String()
    name = fields.String()
    controller = fields.String()
    security_officer = fields.String()
    purposes = fields.List(fields.String())
    categories = fields.List(fields.String())
    location = fields.String()
    transfers = fields.List(fields.String())
    reference = fields.String()
    review_by = fields.Date()
    active = StrictBoolean()


class RegistryListSchema(StrictSchema):
    policy_hash = fields.String()
    databases = fields.List(fields.Nested(RegistrationSchema))


class RecordsArgs(StrictSchema):
    format = StrictString(load_default="json", validate=validate.OneOf(["json", "csv"]))


class RecordPurposeSchema(StrictSchema):
    id = fields.String()
    description = fields.String()
    legal_basis = fields.String()
    categories = fields.List(
        fields.String(), metadata={"description": "What of this database the purpose may use"}
    )


class RecordCategorySchema(StrictSchema):
    id = fields.String()
    retention = fields.String(metadata={"description": "ISO 8601 duration"})
    pii = StrictBoolean()
    sensitive = StrictBoolean()


class RecordSchema(StrictSchema):
    database = fields.String()
    name = fields.String()
    controller = fields.String()
    security_officer = fields.String()
    reference = fields.String()
    location = fields.String()
    transfers = fields.List(fields.String())
    review_by = fields.String(metadata={"description": "The registration's review date"})
    active = StrictBoolean(metadata={"description": "False past the review date"})
    purposes = fields.List(fields.Nested(RecordPurposeSchema))
    categories = fields.List(fields.Nested(RecordCategorySchema))


class RecordsSchema(StrictSchema):
    policy_hash = fields.String()
    records = fields.List(fields.Nested(RecordSchema))


class PublicKeySchema(StrictSchema):
    key_id = fields.String()
    algorithm = fields.String()
    public_key = fields.String(metadata={"description": "Raw Ed25519 key, base64url"})
    public_key_pem = fields.String()


def _registration(registration: Registration, now: datetime) -> dict[str, Any]:
    return {**registration.__dict__, "active": not registration.expired(now)}


@blp.route("/policies")
class Policies(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, PoliciesSchema)
    def get(self) -> dict[str, Any]:
        """The active policy set (categories and purposes) and its content hash."""
        active = policies()
        return {"policy_hash": active.hash, **active.documents["policies"]}


@blp.route("/registry/databases")
class Databases(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, RegistryListSchema)
    def get(self) -> dict[str, Any]:
        """Every registered database; `active` is false past its review date."""
        now = datetime.now(UTC)
        found = policies().databases.values()
        return {"policy_hash": policies().hash, "databases": [_registration(r, now) for r in found]}


@blp.route("/registry/databases/<string:database_id>")
class Database(MethodView):
    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.response(200, RegistrationSchema)
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
    @blp.response(200, RecordsSchema)
    @blp.doc(
        responses={
            "200": {
                "description": "JSON, or with format=csv a row per database",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Records"}},
                    "text/csv": {"schema": {"type": "string"}},
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
    @blp.response(200, PublicKeySchema)
    def get(self) -> dict[str, Any]:
        """The public key that verifies consent receipts (and audit checkpoints)."""
        ring = keyring()
        return {
            "key_id": ring.key_id,
            "algorithm": SIGNATURE_ALGORITHM,
            "public_key": ring.public_key,
            "public_key_pem": ring.public_key_pem,
        }
