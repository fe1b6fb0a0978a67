"""One error family: every error the gateway defines carries its status, code and exit code, and
one mapping renders it for HTTP (problem+json) and one for the CLI (a line and an exit code)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

import gateway
from gateway.api.problems import PROBLEM_MIME
from gateway.errors import EXIT_TEMPFAIL, GatewayError
from gateway.retention import PurgeBusy
from gateway.store.db import database
from gateway.store.leases import acquire
from tests.conftest import Caller


def defined_exceptions() -> list[type[BaseException]]:
    """Every exception class defined anywhere in the gateway package."""
    found = []
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == info.name:
                found.append(value)
    return found


def hold_purge_lease() -> bool:
    """Another host's purge holds the lease for five minutes."""
    return acquire(
        "retention-purge", "elsewhere:1:x", ttl=timedelta(minutes=5), now=datetime.now(UTC)
    )


def test_every_exception_the_gateway_defines_belongs_to_the_family() -> None:
    found = defined_exceptions()

    # the family itself and the errors of the store, audit, crypto, policy and retention layers
    assert len(found) >= 15
    assert [cls.__qualname__ for cls in found if not issubclass(cls, GatewayError)] == []
    for cls in found:
        assert isinstance(cls.status, int) and 400 <= cls.status <= 599, cls
        assert cls.code and cls.code == cls.code.lower(), cls


def test_an_error_raised_deep_in_a_request_is_rendered_by_the_one_mapping(
    app: Flask, admin: Caller
) -> None:
    # another process holds the purge lease: the retention layer raises PurgeBusy
    with app.app_context(), database.connection_context():
        assert hold_purge_lease()

    response = admin.post("/v1/purges", {"dry_run": False})

    assert response.status_code == PurgeBusy.status == 409
    assert response.mimetype == PROBLEM_MIME
    body = response.get_json()
    assert (body["code"], body["detail"]) == ("purge_running", "Another purge is running.")
    # the holder's name is for operators, not for clients
    assert "elsewhere" not in response.get_data(as_text=True)


def test_an_unexpected_error_is_a_plain_500_without_its_text(app: Flask, admin: Caller) -> None:
    @app.get("/v1/explode")
    def explode() -> Any:
        raise RuntimeError("secret internals at /srv/gateway")

    response = admin.get("/v1/explode")

    assert response.status_code == 500
    assert response.mimetype == PROBLEM_MIME
    assert response.get_json()["code"] == "internal_error"
    assert "secret" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["clients", "revoke", "nobody"], 1, "Error: no client named 'nobody'"),
        (["clients", "add", "has space", "--role", "auditor"], 1, "Error: a client name is 1 to"),
    ],
)
def test_the_cli_prints_one_line_and_the_errors_exit_code(
    app: Flask, args: list[str], code: int, message: str
) -> None:
    result = app.test_cli_runner().invoke(args=args)

    assert result.exit_code == code, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(message), result.output
    assert "Traceback" not in result.output


def test_a_busy_purge_says_so_and_exits_zero_for_cron(app: Flask) -> None:
    with app.app_context(), database.connection_context():
        assert hold_purge_lease()

    result = app.test_cli_runner().invoke(args=["purge"])

    # a skip is not a failure; PurgeBusy's own exit code is for commands that must not skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("skipped: another purge is running")
    assert PurgeBusy.exit_code == EXIT_TEMPFAIL
