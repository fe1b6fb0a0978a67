"""Liveness and readiness, without authentication."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields

from gateway import keyring
from gateway.api.strict import StrictSchema
from gateway.store.db import database

blp = Blueprint("health", __name__, description="Health")


class StatusSchema(StrictSchema):
    status = fields.String()


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(security=[])
    @blp.response(200, StatusSchema)
    def get(self) -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.doc(security=[])
    @blp.response(200, StatusSchema)
    def get(self) -> dict[str, Any]:
        """The database answers and the keyring is readable."""
        database.execute_sql("SELECT 1")
        keyring()
        return {"status": "ready"}
