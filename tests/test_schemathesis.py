"""The server keeps the contract /openapi.json states: schemathesis sends every operation valid
and invalid requests through the Flask app (WSGI, no network), as an admin and, where the
document lets apps call, as an app; every answer must be a declared status (declared on the
operation itself, not only by `default`), of a declared media type, with a body and headers
that match the document, and never a server error. A seeded, derandomized run of a bounded
number of cases, so CI sees the same cases every time.

Where a request is refused for what no JSON schema can say (below: CONTEXT_RULES), only the
check that valid data is accepted is skipped for that case.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import positive_data_acceptance
from schemathesis.schemas import BaseSchema

from gateway import create_app
from gateway.tcf import TCStringError, decode_tc_string
from tests.conftest import ROOT, Caller

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261203,
        "generation": {
            "max-examples": 60,
            "database": "none",
            # The server refuses NUL in every string (PostgreSQL text cannot hold it), which
            # the document's info says once rather than as a pattern on every string.
            "allow-x00": False,
        },
    }
)
SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    # One app (and its database) serves all the cases of an operation; the cases are slow
    # because each is a real request that writes audit entries.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


def _served_schema() -> BaseSchema:
    """/openapi.json as an app with the demo documents and default settings serves it.

    Read at collection, since its operations become the tests. Every test's app has the same
    documents and settings, so it serves the same document; each case is sent to the test's
    own app (`call_and_validate(app=...)`), never to this one.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with tempfile.TemporaryDirectory() as home, mock.patch.dict(os.environ, clean, clear=True):
        app = create_app(
            {
                "HOME": home,
                "DATABASE_URL": f"sqlite:///{home}/gateway.db",
                "KEYSTORE_URL": f"sqlite:///{home}/keys.db",
                "POLICIES": str(ROOT / "policies"),
                "REGISTRY": str(ROOT / "registry"),
            }
        )
        return schemathesis.openapi.from_wsgi("/openapi.json", app, config=CONFIG)


schema = _served_schema()


def _apps_may_call(ctx: Any) -> bool:
    return "app" in ctx.operation.definition.raw.get("x-roles", [])


# Cases are made at collection, before any test's client exists: they carry this stand-in,
# which `check` replaces with the key of the test's client.
STAND_IN = "Bearer the-test-client-key"


@schema.auth(refresh_interval=None)
class ClientKey:
    """Schemathesis' way to authenticate: every case carries the stand-in but those made to test
    a missing or a wrong Authorization header."""

    def get(self, case: Case, context: Any) -> str:
        return STAND_IN

    def set(self, case: Case, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": data}


def check(case: Case, app: Flask, caller: Caller) -> None:
    """Send the case to the app and validate the answer against the document."""
    if case.headers and case.headers.get("Authorization") == STAND_IN:
        case.headers["Authorization"] = f"Bearer {caller.key}"
    excluded = [positive_data_acceptance] if _refused_for_context(case) else []
    response = case.call_and_validate(app=app, excluded_checks=excluded)
    if case.method.upper() != case.operation.method.upper():
        return  # a method the path does not have: 405 with Allow, which a check verifies
    declared = case.operation.definition.raw["responses"]
    assert str(response.status_code) in declared, (
        f"{case.operation.label} answered {response.status_code}, which it does not declare"
    )


# Documented false positives of positive_data_acceptance: requests that each value alone makes
# valid by the document, which the server refuses (422) for what a JSON schema cannot say.
# Only that check is skipped for them; every other check still applies to the answer.


def _repeats_candidate_ids(case: Case) -> bool:
    """Candidates must have unique ids; uniqueItems only compares whole candidates."""
    candidates = _body(case).get("candidates") if case.path == "/v1/personalize" else None
    if not isinstance(candidates, list):
        return False
    ids = [repr(c.get("id")) for c in candidates if isinstance(c, dict)]
    return len(ids) != len(set(ids))


def _expiry_not_in_the_future(case: Case) -> bool:
    """A consent's expires_at must be later than the moment the request arrives."""
    if case.method.upper() != "PUT" or not case.operation.path.endswith("/{purpose}"):
        return False
    expires = _moment(_body(case).get("expires_at"))
    return expires is not None and expires <= datetime.now(UTC)


def _window_not_ordered(case: Case) -> bool:
    """until must be later than since."""
    query = case.query or {}
    since, until = _moment(query.get("since")), _moment(query.get("until"))
    return since is not None and until is not None and since >= until


def _cursor_not_issued(case: Case) -> bool:
    """A cursor is valid only as the `next_cursor` of an earlier page."""
    return "cursor" in (case.query or {})


def _tc_string_not_decodable(case: Case) -> bool:
    """A TC string's bits must make a TCF v2.2 or v2.3 string: a pattern says only which
    characters it has."""
    text = _body(case).get("tcf")
    if not isinstance(text, str):
        return False
    try:
        decode_tc_string(text, now=datetime.now(UTC))
    except TCStringError:
        return True
    return False


CONTEXT_RULES = (
    _tc_string_not_decodable,
    _repeats_candidate_ids,
    _expiry_not_in_the_future,
    _window_not_ordered,
    _cursor_not_issued,
)


def _refused_for_context(case: Case) -> bool:
    return any(rule(case) for rule in CONTEXT_RULES)


def _body(case: Case) -> dict[str, Any]:
    return case.body if isinstance(case.body, dict) else {}


def _moment(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else None


@schema.parametrize()
@SETTINGS
def test_every_operation_keeps_the_contract_for_an_admin(
    case: Case, app: Flask, admin: Caller
) -> None:
    check(case, app, admin)


@schema.include(_apps_may_call).parametrize()
@SETTINGS
def test_every_operation_an_app_may_call_keeps_the_contract(
    case: Case, app: Flask, shop: Caller
) -> None:
    check(case, app, shop)
