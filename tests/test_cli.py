"""The `gateway` command: init, clients, demo and policy check, against real files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result
from flask import Flask

from gateway import create_app
from gateway.audit.chain import Action
from gateway.cli import main
from gateway.store import close_connections
from gateway.store.db import database
from gateway.store.models import ApiClient, AuditEntry
from tests.conftest import GATEWAY, ROOT
from tests.stores import Settings, connect, drop_store, new_store

PURPOSES = ["--purpose", "recommendations", "--purpose", "ads_personalization"]
ADD_WEB = ["clients", "add", "web", "--role", "app", "--purpose", "recommendations"]


def _add(runner: Any, *args: str) -> str:
    """Run `clients add` and return the key from its last line."""
    result = runner.invoke(args=["clients", "add", *args])
    assert result.exit_code == 0, result.output
    return str(result.stdout.splitlines()[-1])


def _get_signing_key(app: Flask, key: str) -> int:
    response = app.test_client().get("/v1/keys/signing", headers={"Authorization": f"Bearer {key}"})
    return int(response.status_code)


def _db_files(db_path: Path) -> bytes:
    """The SQLite file with its WAL and shared-memory files, as bytes."""
    found = [db_path.with_name(db_path.name + s) for s in ("", "-wal", "-shm")]
    return b"".join(p.read_bytes() for p in found if p.exists())


def _checkpoint(db_path: Path) -> None:
    """Move the WAL's pages into the main file, so it alone holds every committed row."""
    with connect(f"sqlite:///{db_path}") as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _stored_text(app: Flask) -> dict[str, bytes]:
    """Every stored value of every table of both databases, one per line, by store:table."""
    found: dict[str, bytes] = {}
    for store in ("DATABASE_URL", "KEYSTORE_URL"):
        with connect(app.config[store]) as db:
            for table in db.tables():
                rows = db.execute(f"SELECT * FROM {table}").fetchall()
                values = [value for row in rows for value in row]
                found[f"{store}:{table}"] = b"\n".join(
                    bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
                    for v in values
                )
    return found


def _query(app: Flask, model: Any, *where: Any) -> list[Any]:
    with app.app_context(), database.connection_context():
        query = model.select()
        if where:
            query = query.where(*where)
        return list(query)


@pytest.fixture
def fresh_store(tmp_path: Path) -> Iterator[Settings]:
    """Fresh, empty databases for an instance no fixture initialised, dropped after."""
    store = new_store(tmp_path / "fresh")
    yield store
    close_connections()
    drop_store(store)


def test_init_creates_a_private_keyring_and_is_idempotent(
    tmp_path: Path, documents: tuple[Path, Path], fresh_store: Settings
) -> None:
    home = tmp_path / "fresh"
    fresh = create_app(
        {
            "TESTING": True,
            "HOME": str(home),
            "POLICIES": str(documents[0]),
            "REGISTRY": str(documents[1]),
            **fresh_store,
        }
    )
    runner = fresh.test_cli_runner()
    first = runner.invoke(args=["init"])
    assert first.exit_code == 0, first.output
    keyring = home / "keyring.json"
    assert "created keyring" in first.output
    assert "created schema version" in first.output
    assert f"ready: {fresh_store['DATABASE_URL']}" in first.output
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    content = keyring.read_bytes()

    again = runner.invoke(args=["init"])
    assert again.exit_code == 0, again.output
    assert "created keyring" not in again.output
    assert "created schema version" not in again.output
    assert keyring.read_bytes() == content
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    # the tables exist: a client can be created and listed
    _add(runner, "after-init", "--role", "auditor")
    assert "after-init" in runner.invoke(args=["clients", "list"]).output


def test_init_on_an_initialised_instance_changes_nothing(app: Flask, runner: Any) -> None:
    keyring = Path(app.config["KEYRING"])
    content = keyring.read_bytes()
    key = _add(runner, *ADD_WEB[2:])
    result = runner.invoke(args=["init"])
    assert result.exit_code == 0, result.output
    assert keyring.read_bytes() == content
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    assert _get_signing_key(app, key) == 200


def test_clients_add_prints_the_key_alone_on_the_last_line(app: Flask, runner: Any) -> None:
    result = runner.invoke(args=ADD_WEB)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    key = lines[-1]
    assert re.fullmatch(r"\S{32,}", key)
    assert all(key not in line for line in lines[:-1])
    assert _get_signing_key(app, key) == 200
    assert _get_signing_key(app, key[:-1] + ("A" if key[-1] != "A" else "B")) == 401


def test_only_the_key_digest_is_stored_in_any_row(app: Flask, runner: Any) -> None:
    key = _add(runner, *ADD_WEB[2:])
    digest = hashlib.sha256(key.encode()).hexdigest()
    stored = _stored_text(app)
    # the scan reads the row the client went into, and the audit entry of its creation
    assert [(c.name, c.key_hash) for c in _query(app, ApiClient)] == [("web", digest)]
    assert digest.encode() in stored["DATABASE_URL:api_client"]
    assert b"client.create" in stored["DATABASE_URL:audit_entry"]
    for where, text in stored.items():
        assert key.encode() not in text, where


@pytest.mark.sqlite
def test_only_the_key_digest_is_stored(app: Flask, runner: Any, db_path: Path) -> None:
    key = _add(runner, *ADD_WEB[2:])
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert key.encode() not in _db_files(db_path)
    _checkpoint(db_path)
    stored = db_path.read_bytes()
    assert digest.encode() in stored
    assert key.encode() not in stored
    assert b"web" in stored  # the file read is the one the client went into


def test_clients_list_shows_clients_and_never_a_key(runner: Any) -> None:
    keys = [
        _add(runner, "web", "--role", "app", *PURPOSES),
        _add(runner, "compliance", "--role", "auditor"),
        _add(runner, "ops", "--role", "admin"),
    ]
    result = runner.invoke(args=["clients", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split("\t")[0]: line.split("\t") for line in result.output.splitlines()}
    assert rows["web"][1:3] == ["app", "ads_personalization,recommendations"]
    assert rows["compliance"][1] == "auditor"
    assert rows["ops"][1] == "admin"
    assert all(key not in result.output for key in keys)
    assert "gwk_" not in result.output


def test_clients_revoke_takes_effect_at_once(app: Flask, runner: Any) -> None:
    key = _add(runner, *ADD_WEB[2:])
    assert _get_signing_key(app, key) == 200
    result = runner.invoke(args=["clients", "revoke", "web"])
    assert result.exit_code == 0, result.output
    assert _get_signing_key(app, key) == 401
    listed = runner.invoke(args=["clients", "list"]).output
    assert re.search(r"^web\t.*\trevoked ", listed, re.MULTILINE)


@pytest.mark.parametrize(
    ("before", "args", "message"),
    [
        ([], [*ADD_WEB[:-1], "telepathy"], "unknown purpose(s): telepathy"),
        ([], ["clients", "add", "web", "--role", "app"], "needs at least one purpose"),
        ([], ["clients", "add", "web", "--role", "root"], "'root' is not one of"),
        ([ADD_WEB], ADD_WEB, "a client named 'web' already exists"),
        ([], ["clients", "revoke", "ghost"], "no client named 'ghost'"),
    ],
    ids=["unknown-purpose", "app-without-purpose", "bad-role", "duplicate", "revoke-unknown"],
)
def test_client_commands_refuse_bad_requests_clearly(
    app: Flask, runner: Any, before: list[list[str]], args: list[str], message: str
) -> None:
    for setup in before:
        assert runner.invoke(args=setup).exit_code == 0
    clients = [(c.name, c.key_hash, c.revoked_at) for c in _query(app, ApiClient)]
    entries = len(_query(app, AuditEntry))
    result: Result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output and "gwk_" not in result.stdout
    assert [(c.name, c.key_hash, c.revoked_at) for c in _query(app, ApiClient)] == clients
    assert len(_query(app, AuditEntry)) == entries


def test_client_creation_and_revocation_are_audited(app: Flask, runner: Any) -> None:
    key = _add(runner, *ADD_WEB[2:])
    assert runner.invoke(args=["clients", "revoke", "web"]).exit_code == 0
    actions = (Action.CLIENT_CREATE.value, Action.CLIENT_REVOKE.value)
    entries = _query(app, AuditEntry, AuditEntry.action.in_(actions))
    entries.sort(key=lambda e: e.seq)
    assert [e.action for e in entries] == ["client.create", "client.revoke"]
    assert all(json.loads(e.fields)["client"] == "web" for e in entries)
    assert all(e.actor.startswith("cli:") for e in entries)
    created = json.loads(entries[0].fields)
    assert (created["role"], created["purposes"]) == ("app", ["recommendations"])
    assert all(key not in e.fields for e in entries)


def _curl(output: str) -> tuple[str, str, dict[str, Any]]:
    """(path with query, bearer key, JSON body) from the curl example `demo` prints."""
    url = re.search(r"curl .*?'(http://[^']+)'", output)
    key = re.search(r"Authorization: Bearer ([^'\s]+)'", output)
    body = re.search(r"-d '(\{.*\})'", output)
    assert url and key and body, output
    parts = urlsplit(url.group(1))
    return f"{parts.path}?{parts.query}", key.group(1), json.loads(body.group(1))


def test_demo_prints_a_curl_line_that_works(app: Flask, runner: Any) -> None:
    result = runner.invoke(args=["demo"])
    assert result.exit_code == 0, result.output
    path, key, body = _curl(result.stdout)
    response = app.test_client().post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    decision = response.get_json()
    assert body["subject_id"] == "alice"
    assert (decision["outcome"], decision["personalized"]) == ("allow", True)
    assert {item["id"] for item in decision["items"]} <= {c["id"] for c in body["candidates"]}


def test_demo_prints_the_address_it_is_told_the_gateway_serves_on(runner: Any) -> None:
    result = runner.invoke(args=["demo", "--host", "0.0.0.0", "--port", "8123"])

    assert result.exit_code == 0, result.output
    assert "curl -s -X POST 'http://0.0.0.0:8123/v1/personalize?explain=true'" in result.stdout


def test_demo_loads_only_once(app: Flask, runner: Any) -> None:
    first = runner.invoke(args=["demo"])
    assert first.exit_code == 0, first.output
    clients = sorted(c.name for c in _query(app, ApiClient))
    entries = len(_query(app, AuditEntry))
    assert len(clients) >= 4

    second = runner.invoke(args=["demo"])
    assert second.exit_code == 0, second.output
    assert "already loaded" in second.output
    assert sorted(c.name for c in _query(app, ApiClient)) == clients
    assert len(_query(app, AuditEntry)) == entries
    assert _curl(second.stdout) == _curl(first.stdout)


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner for the console script; FlaskGroup sets FLASK_RUN_FROM_CLI, restored after."""
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "false")
    return CliRunner()


def _policy_check(console: CliRunner, documents: tuple[Path, Path]) -> Result:
    policies, registry = documents
    args = ["policy", "check", "--policies", str(policies), "--registry", str(registry)]
    return console.invoke(main, args)


def test_policy_check_accepts_the_demo_documents(
    app: Flask, console: CliRunner, documents: tuple[Path, Path]
) -> None:
    result = _policy_check(console, documents)
    assert result.exit_code == 0, result.output
    assert f"policy_hash: {app.extensions['gateway.policies'].hash}" in result.stdout
    assert re.search(r"ok: \d+ categories, \d+ purposes, \d+ databases", result.stdout)


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "old", "new", "key"),
    [
        ("policies/purposes.yaml", "legal_basis: consent", "legal_basis: vibes", "legal_basis"),
        ("policies/categories.yaml", "retention: P365D", "retention: forever", "retention"),
        (
            "registry/databases.yaml",
            "purposes: [recommendations, ads",
            "purposes: [telly, ads",
            "telly",
        ),
        ("registry/databases.yaml", "review_by: 2027-06-30", "colour: blue", "colour"),
        ("policies/categories.yaml", "events: [purchase]", "events: [purchase", "not valid YAML"),
    ],
    ids=["bad-enum", "bad-duration", "unknown-reference", "unknown-key", "broken-yaml"],
)
def test_policy_check_names_the_invalid_file(
    console: CliRunner,
    documents: tuple[Path, Path],
    file: str,
    old: str,
    new: str,
    key: str,
) -> None:
    target = documents[0].parent / file
    _replace(target, old, new)
    result = _policy_check(console, documents)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert any(str(target) in line and key in line for line in problems), result.output
    assert "policy_hash" not in result.stdout


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "x" * 65, "ünïcode"])
def test_a_client_name_must_be_a_plain_identifier(app: Flask, runner: Any, name: str) -> None:
    result = runner.invoke(args=["clients", "add", name, "--role", "auditor"])

    assert result.exit_code != 0
    assert "client name" in result.output
    with app.app_context(), database.connection_context():
        assert ApiClient.select().count() == 0


def test_revoking_twice_audits_once(app: Flask, runner: Any) -> None:
    _add(runner, "web", "--role", "auditor")

    first = runner.invoke(args=["clients", "revoke", "web"])
    second = runner.invoke(args=["clients", "revoke", "web"])

    assert (first.exit_code, second.exit_code) == (0, 0)
    assert "already revoked" in second.output
    with app.app_context(), database.connection_context():
        revocations = AuditEntry.select().where(AuditEntry.action == Action.CLIENT_REVOKE.value)
        assert revocations.count() == 1


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("mysql://someone@somewhere/gateway", 2, "Error: unsupported database URL mysql://"),
        ("postgresql://nobody@127.0.0.1:1/gateway", 1, "Error: the database cannot be used: "),
    ],
)
def test_a_database_that_cannot_be_used_is_one_line_not_a_traceback(
    tmp_path: Path, url: str, code: int, message: str
) -> None:
    env = {
        **os.environ,
        "GATEWAY_HOME": str(tmp_path / "instance"),
        "GATEWAY_DATABASE_URL": url,
        "GATEWAY_POLICIES": str(ROOT / "policies"),
        "GATEWAY_REGISTRY": str(ROOT / "registry"),
    }
    done = subprocess.run(
        [str(GATEWAY), "init"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
