"""Retention purges on demand, and the history of every run."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import RAISE, fields, validate

from gateway.api import examples
from gateway.api.auth import roles
from gateway.api.contract import POLICY_HASH, problem, vocabulary
from gateway.api.strict import Blueprint, StrictBoolean, StrictSchema
from gateway.retention import purge_now, recent_runs, run_report
from gateway.store.clients import Role

blp = Blueprint("purges", __name__, url_prefix="/v1/purges", description="Retention purges")


# a run's status as gateway.retention writes it
STATUSES = ("running", "finished", "failed", "interrupted")
KINDS = ("events", "attributes", "consents")


class PurgeRequestSchema(StrictSchema):
    dry_run = StrictBoolean(
        load_default=False,
        metadata={"description": "Only count what would be deleted"},
    )


class CategoryResultSchema(StrictSchema):
    category = fields.String(
        required=True,
        metadata={"description": "The data category (for consents, the purpose)"},
    )
    kind = fields.String(
        required=True, validate=vocabulary(KINDS), metadata={"description": "What was purged"}
    )
    found = fields.Integer(required=True, metadata={"description": "Rows past retention"})
    deleted = fields.Integer(required=True, metadata={"description": "Rows deleted"})
    seconds = fields.Float(required=True, metadata={"description": "How long it took"})


class PurgeRunSchema(StrictSchema):
    id = fields.Integer(required=True, metadata={"description": "The run's id"})
    started_at = fields.AwareDateTime(required=True, metadata={"description": "When it started"})
    finished_at = fields.AwareDateTime(
        required=True, allow_none=True, metadata={"description": "When it ended"}
    )
    status = fields.String(
        required=True,
        validate=vocabulary(STATUSES),
        metadata={
            "description": "interrupted: it lost its lease, and the next run closed it; failed:"
            " it stopped on an error"
        },
    )
    dry_run = StrictBoolean(required=True, metadata={"description": "Nothing was deleted"})
    policy_hash = fields.String(required=True, metadata=POLICY_HASH)
    categories = fields.List(
        fields.Nested(CategoryResultSchema),
        required=True,
        metadata={"description": "The report per data category and kind"},
    )


class PurgeListArgs(StrictSchema):
    limit = fields.Integer(
        load_default=50,
        validate=validate.Range(min=1, max=500),
        metadata={"description": "How many runs, newest first"},
    )


class PurgeListSchema(StrictSchema):
    runs = fields.List(
        fields.Nested(PurgeRunSchema),
        required=True,
        metadata={"description": "Past runs, newest first"},
    )


@blp.route("")
class Purges(MethodView):
    @roles(Role.ADMIN)
    @blp.arguments(PurgeRequestSchema, required=False, example={"dry_run": True})
    @blp.response(200, PurgeRunSchema, example=examples.PURGE_RUN)
    @blp.alt_response(**problem(409, "purge_running", "Another purge is running."))
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a purge now (or a dry run); 409 while another purge is running."""
        outcome = purge_now(actor=g.client.name, dry_run=body["dry_run"])
        return run_report(outcome.run)

    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.arguments(PurgeListArgs, location="query", unknown=RAISE)
    @blp.response(200, PurgeListSchema, example=examples.PURGE_LIST)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Past runs, newest first, with their per-category reports."""
        return {"runs": recent_runs(args["limit"])}
