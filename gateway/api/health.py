"""Liveness and readiness, without authentication."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields

from gateway import keyring
from gateway.api.contract import problem, vocabulary
from gateway.api.strict import Blueprint, StrictSchema
from gateway.errors import Unavailable
from gateway.store.db import check_writable
from gateway.store.migrations import LATEST, check_keyring, current_version

blp = Blueprint("health", __name__, description="Health")


class StatusSchema(StrictSchema):
    status = fields.String(
        required=True,
        validate=vocabulary(["ok", "ready"]),
        metadata={"description": "ok: the process is up; ready: it takes requests"},
    )


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(security=[])
    @blp.response(200, StatusSchema, example={"status": "ok"})
    def get(self) -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.doc(security=[])
    @blp.response(200, StatusSchema, example={"status": "ready"})
    @blp.alt_response(
        **problem(
            503,
            "schema_outdated",
            "Not ready: the schema needs `gateway init`, the keyring is not the database's own,"
            " or the database takes no writes.",
            detail="A service the gateway depends on is unavailable.",
        )
    )
    def get(self) -> dict[str, Any]:
        """The schema is current, the keyring is the database's own, and writes are taken."""
        if current_version() != LATEST:
            raise Unavailable("The schema needs `gateway init`.", code="schema_outdated")
        check_keyring(keyring())
        # reads a setting or checks files: a probe never queues behind a writer
        check_writable()
        return {"status": "ready"}
