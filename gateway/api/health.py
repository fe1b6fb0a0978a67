"""Liveness and readiness, without authentication."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields

from gateway import keyring
from gateway.api.strict import Blueprint, StrictSchema
from gateway.errors import Unavailable
from gateway.store.db import check_writable
from gateway.store.migrations import LATEST, check_keyring, current_version

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
        """The schema is current, the keyring is the database's own, and writes are taken."""
        if current_version() != LATEST:
            raise Unavailable("The schema needs `gateway init`.", code="schema_outdated")
        check_keyring(keyring())
        # reads a setting or checks files: a probe never queues behind a writer
        check_writable()
        return {"status": "ready"}
