"""The instance's files are their owner's alone: 0600 files in a 0700 folder.

Real `gateway init`, `gateway demo` and `gateway serve` processes start on a fresh instance folder
under the usual umask 022 (which would leave files readable by everyone); the modes are read from
the folder, with serve's write-ahead logs and shared-memory files there while it serves requests.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import GATEWAY, running_server

OWNER_FILE, OWNER_FOLDER = 0o600, 0o700
DATABASES = {"gateway.db", "keys.db"}
INSTANCE = {"keyring.json", *DATABASES}
WAL = {f"{name}-{suffix}" for name in DATABASES for suffix in ("wal", "shm")}


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    """The common umask 022, inherited by the processes the tests start."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture
def fresh(tmp_path: Path, documents: tuple[Path, Path]) -> tuple[Path, dict[str, str]]:
    """A folder that does not exist yet, and the environment of a gateway using it."""
    home = tmp_path / "fresh" / "instance"
    env = {
        **os.environ,
        "GATEWAY_HOME": str(home),
        "GATEWAY_POLICIES": str(documents[0]),
        "GATEWAY_REGISTRY": str(documents[1]),
    }
    return home, env


def modes(home: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in home.iterdir()}


def assert_owner_only(home: Path, expected: set[str]) -> None:
    assert stat.S_IMODE(home.stat().st_mode) == OWNER_FOLDER
    found = modes(home)
    assert expected <= set(found)
    assert found == dict.fromkeys(found, OWNER_FILE)


def gateway(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(GATEWAY), *args], env=env, capture_output=True, check=True)
    return done.stdout.decode()


@pytest.mark.sqlite
@pytest.mark.parametrize(
    ("command", "expected"), [("init", INSTANCE), ("demo", {*INSTANCE, "demo-clients.json"})]
)
def test_init_and_demo_create_owner_only_files(
    fresh: tuple[Path, dict[str, str]], command: str, expected: set[str]
) -> None:
    home, env = fresh

    gateway(env, command)

    assert_owner_only(home, expected)


def call(base: str, key: str, method: str, path: str, body: object) -> None:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.sqlite
def test_serve_creates_owner_only_files_and_write_ahead_logs(
    app: Flask, fresh: tuple[Path, dict[str, str]]
) -> None:
    home, env = fresh
    with running_server(app, workers=1, env=env) as (base, _):
        key = gateway(env, "clients", "add", "ops", "--role", "admin").splitlines()[-1]
        consent = {"granted": True, "source": "web", "notice_version": "1"}
        call(base, key, "PUT", "/v1/subjects/sam/consents/recommendations", consent)
        attributes = {"database": "crm", "attributes": {"email": "sam@example.org"}}
        call(base, key, "PATCH", "/v1/subjects/sam/attributes", attributes)

        assert_owner_only(home, INSTANCE | WAL)


@pytest.mark.sqlite
def test_init_tightens_an_instance_made_before_its_files_were_private(
    fresh: tuple[Path, dict[str, str]],
) -> None:
    home, env = fresh
    gateway(env, "demo")
    # as an older version left them: readable by everyone
    home.chmod(0o755)
    for path in home.iterdir():
        path.chmod(0o644)

    said = gateway(env, "init")

    assert_owner_only(home, {*INSTANCE, "demo-clients.json"})
    assert "made owner-only:" in said and str(home / "keyring.json") in said
    assert "made owner-only:" not in gateway(env, "init")  # nothing left to tighten
