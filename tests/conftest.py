"""Fixtures: a fresh instance folder, databases and keyring per test; HTTP via the test client.

The databases are SQLite files, or schemas on PostgreSQL when GATEWAY_DATABASE_URL names one
(see tests/stores.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app, keyring
from gateway.audit.verification import Verification, verify_stored
from gateway.cli import initialize
from gateway.store import close_connections
from gateway.store.clients import Role, create_client
from gateway.store.db import database
from tests.stores import BACKEND, Settings, drop_store, new_store, prepare_server

ROOT = Path(__file__).resolve().parent.parent
DEMO_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def pytest_report_header() -> str:
    return f"databases: {BACKEND}"


@pytest.fixture(scope="session", autouse=True)
def _database_server() -> None:
    prepare_server()


@pytest.fixture(autouse=True)
def _no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own GATEWAY_* settings must not leak into tests."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    # the demo registry's recipient: its secret, as an operator would set it
    monkeypatch.setenv("DEMO_MAIL_WEBHOOK_SECRET", DEMO_WEBHOOK_SECRET)


@pytest.fixture
def documents(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the demo policies/ and registry/ that a test may edit."""
    policies, registry = tmp_path / "policies", tmp_path / "registry"
    shutil.copytree(ROOT / "policies", policies)
    shutil.copytree(ROOT / "registry", registry)
    return policies, registry


@pytest.fixture
def make_app(
    request: pytest.FixtureRequest, tmp_path: Path, documents: tuple[Path, Path]
) -> Iterator[Any]:
    """Build an initialised app over the test's documents; extra settings override.

    Each instance folder (HOME) has its own fresh databases, as with SQLite files in it. A test
    marked `sqlite` (it reads SQLite's files or relies on SQLite's behaviour) always gets SQLite.
    """
    stores: dict[str, Settings] = {}
    sqlite = request.node.get_closest_marker("sqlite") is not None

    def build(**overrides: Any) -> Flask:
        home = str(overrides.get("HOME", tmp_path / "instance"))
        if home not in stores:
            stores[home] = new_store(Path(home), sqlite)
        config = {
            "TESTING": True,
            "HOME": home,
            "POLICIES": str(documents[0]),
            "REGISTRY": str(documents[1]),
            **stores[home],
            **overrides,
        }
        app = create_app(config)
        with app.app_context():
            initialize(app)
        return app

    yield build
    close_connections()
    for store in stores.values():
        drop_store(store)


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def db_path(app: Flask) -> Path:
    """The SQLite file of a test marked `sqlite`."""
    assert app.config["DATABASE_URL"].startswith("sqlite"), "mark the test: pytest.mark.sqlite"
    return Path(app.config["HOME"]) / "gateway.db"


class Caller:
    """An API client with its bearer key, speaking JSON over the Flask test client."""

    def __init__(self, http: FlaskClient, key: str) -> None:
        self.http, self.key = http, key

    def request(self, method: str, path: str, json: Any = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        if json is not None:
            kwargs["json"] = json
        return self.http.open(path, method=method, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json, **kwargs)

    def put(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("PUT", path, json, **kwargs)

    def patch(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("PATCH", path, json, **kwargs)


@pytest.fixture
def new_caller(app: Flask, client: FlaskClient) -> Any:
    """Create an API client in the database and return a Caller holding its key."""
    count = 0

    def make(role: str = "app", purposes: tuple[str, ...] = ()) -> Caller:
        nonlocal count
        count += 1
        with app.app_context(), database.connection_context():
            _, key = create_client(
                f"test-{role}-{count}", Role(role), list(purposes), datetime.now(UTC)
            )
        return Caller(client, key)

    return make


@pytest.fixture
def shop(new_caller: Any) -> Caller:
    """An app client for recommendations and ads_personalization, like the demo web shop."""
    return new_caller("app", ("recommendations", "ads_personalization"))


@pytest.fixture
def mailer(new_caller: Any) -> Caller:
    return new_caller("app", ("email_marketing",))


@pytest.fixture
def auditor(new_caller: Any) -> Caller:
    return new_caller("auditor")


@pytest.fixture
def admin(new_caller: Any) -> Caller:
    return new_caller("admin")


def verify_audit(app: Flask) -> Verification:
    """Verify the app's stored audit chain with its own public key."""
    with app.app_context(), database.connection_context():
        ring = keyring()
        return verify_stored({ring.key_id: ring.public_key})


# The `gateway` console script of this environment, for tests that run it as a real process.
GATEWAY = Path(sys.executable).parent / "gateway"


def gateway_environment(app: Flask, **settings: str) -> dict[str, str]:
    """The environment of a `gateway` process on the app's files; settings drop the prefix."""
    return {
        **os.environ,
        "GATEWAY_HOME": app.config["HOME"],
        "GATEWAY_DATABASE_URL": app.config["DATABASE_URL"],
        "GATEWAY_KEYSTORE_URL": app.config["KEYSTORE_URL"],
        "GATEWAY_POLICIES": app.config["POLICIES"],
        "GATEWAY_REGISTRY": app.config["REGISTRY"],
        **{f"GATEWAY_{name}": value for name, value in settings.items()},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    app: Flask, workers: int, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`gateway serve --workers N` on the app's instance until the block ends; yields its base
    URL and process (stopped with SIGTERM, as an operator would). `log` receives its stderr."""
    port = free_port()
    with ExitStack() as files:
        stderr = files.enter_context(log.open("wb")) if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(
            [str(GATEWAY), "serve", "--port", str(port), "--workers", str(workers)],
            env=env or gateway_environment(app),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        files.callback(_stop, process)
        base = f"http://127.0.0.1:{port}"
        _wait_until_serving(base, process)
        yield base, process


def _wait_until_serving(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the server did not start") from None
            time.sleep(0.1)


def stop_all(processes: list[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """SIGTERM each, then SIGKILL whatever is still there after `timeout`; every wait is
    bounded."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_all([process])
