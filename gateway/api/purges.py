"""Retention purges on demand, and the history of every run."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import RAISE, fields, validate

from gateway.api.auth import roles
from gateway.api.strict import Blueprint, StrictBoolean, StrictSchema
from gateway.retention import purge_now, run_report
from gateway.store.clients import Role
from gateway.store.models import PurgeRun

blp = Blueprint("purges", __name__, url_prefix="/v1/purges", description="Retention purges")


class PurgeRequestSchema(StrictSchema):
    dry_run = StrictBoolean(load_default=False)


class CategoryResultSchema(StrictSchema):
    category = fields.String()
    kind = fields.String()
    found = fields.Integer()
    deleted = fields.Integer()
    seconds = fields.Float()


class PurgeRunSchema(StrictSchema):
    id = fields.Integer()
    started_at = fields.AwareDateTime()
    finished_at = fields.AwareDateTime(allow_none=True)
    status = fields.String()
    dry_run = StrictBoolean()
    policy_hash = fields.String()
    categories = fields.List(fields.Nested(CategoryResultSchema))


class PurgeListArgs(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class PurgeListSchema(StrictSchema):
    runs = fields.List(fields.Nested(PurgeRunSchema))


@blp.route("")
class Purges(MethodView):
    @roles(Role.ADMIN)
    @blp.arguments(PurgeRequestSchema)
    @blp.response(200, PurgeRunSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a purge now (or a dry run); 409 while another purge is running."""
        outcome = purge_now(actor=g.client.name, dry_run=body["dry_run"])
        return run_report(outcome.run)

    @roles(Role.AUDITOR, Role.ADMIN)
    @blp.arguments(PurgeListArgs, location="query", unknown=RAISE)
    @blp.response(200, PurgeListSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Past runs, newest first, with their per-category reports."""
        runs = PurgeRun.select().order_by(PurgeRun.id.desc()).limit(args["limit"])
        return {"runs": [run_report(run) for run in runs]}
