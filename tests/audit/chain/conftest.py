"""One chain written through the API per module (its TOTAL entries, a checkpoint every EVERY);
every test works on its own copy of that instance, as the callers who wrote it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient

from tests.audit import CALENDAR, Template, build_template, copy_template
from tests.conftest import Caller
from tests.stores import drop_store


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the date (the clock still ticks): the demo registrations' review dates hold."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


@pytest.fixture(scope="module")
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    module = request.module
    built = build_template(tmp_path_factory.mktemp("template"), module.TOTAL, module.EVERY)
    yield built
    drop_store(built.store)


@pytest.fixture
def app(request: pytest.FixtureRequest, make_app: Any, tmp_path: Path, template: Template) -> Flask:
    home = tmp_path / "instance"
    return copy_template(template, make_app, home, AUDIT_CHECKPOINT_EVERY=request.module.EVERY)


@pytest.fixture
def auditor(client: FlaskClient, template: Template) -> Caller:
    return Caller(client, template.keys["auditor"])


@pytest.fixture
def admin(client: FlaskClient, template: Template) -> Caller:
    return Caller(client, template.keys["admin"])


@pytest.fixture
def shop(client: FlaskClient, template: Template) -> Caller:
    return Caller(client, template.keys["shop"])


@pytest.fixture
def mailer(client: FlaskClient, template: Template) -> Caller:
    return Caller(client, template.keys["mailer"])
