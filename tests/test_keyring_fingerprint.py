"""A keyring that did not write the database is refused, never silently replaced.

The database records a fingerprint of the keyring that writes it. `gateway init` and `gateway
serve` (real processes here) refuse any other keyring, and leave no new keyring file behind; an
older schema without a fingerprint is upgraded only by a keyring its data does not contradict.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask

from gateway import keyring
from gateway.crypto import Keyring
from gateway.store.db import database
from gateway.store.migrations import LATEST, current_version
from tests.conftest import GATEWAY, Caller, free_port, gateway_environment
from tests.store.test_migrations import NOTICE, as_scheme_1, rebuild_as, write_history
from tests.stores import count_rows, raw


@pytest.fixture
def documents(documents: tuple[Path, Path]) -> tuple[Path, Path]:
    """The demo documents without recipients: the histories rebuilt here in schema version 2
    predate the outbox, which holds no message of them."""
    (documents[1] / "recipients.yaml").unlink()
    return documents


def run_gateway(app: Flask, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS` as a process of its own on the app's instance; settings drop GATEWAY_."""
    return subprocess.run(
        [str(GATEWAY), *args],
        env=gateway_environment(app, **settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *because: str) -> None:
    """Exit 2 with one error line that says what to do, and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "did not write this database" in errors[0]
    assert "restore the keyring that wrote it" in errors[0]
    assert "GATEWAY_KEYRING" in errors[0]
    for words in because:
        assert words in errors[0]


def recorded_fingerprints(app: Flask) -> list[str]:
    with raw(app.config) as db:
        return [row[0] for row in db.execute("SELECT fingerprint FROM keyring_fingerprint")]


def key_material(ring: Keyring) -> list[str]:
    """Every secret of the keyring, in the text forms it could leak in."""
    signing = ring.signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return [
        text
        for secret in (ring.kek, ring.hmac_key, signing)
        for text in (
            secret.hex(),
            base64.urlsafe_b64encode(secret).decode().rstrip("="),
            base64.b64encode(secret).decode().rstrip("="),
        )
    ]


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


CHANGES = {
    "key_id": lambda ring: replace(ring, key_id=f"{int(ring.key_id, 16) ^ 1:08x}"),
    "kek": lambda ring: replace(ring, kek=_flip(ring.kek)),
    "hmac_key": lambda ring: replace(ring, hmac_key=_flip(ring.hmac_key)),
    "signing_key": lambda ring: replace(ring, signing_key=Ed25519PrivateKey.generate()),
}


@pytest.mark.parametrize("part", sorted(CHANGES))
def test_the_fingerprint_changes_with_every_key_and_the_key_id(part: str) -> None:
    ring = Keyring.generate()
    other = CHANGES[part](ring)

    assert other.fingerprint() != ring.fingerprint()
    assert not ring.matches_fingerprint(other.fingerprint())
    assert not other.matches_fingerprint(ring.fingerprint())


def test_the_fingerprint_is_stable_and_reveals_no_key(tmp_path: Path) -> None:
    ring = Keyring.generate()
    ring.save(tmp_path / "keyring.json")
    loaded = Keyring.load(tmp_path / "keyring.json")

    assert loaded.fingerprint() == ring.fingerprint()
    assert loaded.matches_fingerprint(ring.fingerprint())
    assert not loaded.matches_fingerprint("v1:" + ring.key_id + ":" + "0" * 64)
    for secret in key_material(ring):
        assert secret not in ring.fingerprint()


def test_a_new_database_records_the_fingerprint_of_its_keyring(app: Flask) -> None:
    with app.app_context():
        ring = keyring()

    assert recorded_fingerprints(app) == [ring.fingerprint()]


def test_init_with_a_fresh_home_is_refused_and_leaves_no_keyring(
    app: Flask, admin: Caller, tmp_path: Path
) -> None:
    body = {"granted": True, **NOTICE}
    assert admin.put("/v1/subjects/alice/consents/recommendations", body).status_code == 200
    entries = count_rows(app.config, "SELECT count(*) FROM audit_entry")
    home = tmp_path / "fresh-home"

    result = run_gateway(app, "init", HOME=str(home))

    assert_refused(result, f"no keyring at {home / 'keyring.json'}")
    assert not (home / "keyring.json").exists()
    assert count_rows(app.config, "SELECT count(*) FROM audit_entry") == entries
    # the keyring that wrote the database still reads it
    consent = admin.get("/v1/subjects/alice/consents/recommendations").get_json()
    assert consent["state"] == "granted"
    assert admin.get("/readyz").status_code == 200


@pytest.mark.parametrize("command", ["init", "serve"])
def test_init_and_serve_refuse_a_keyring_file_that_did_not_write_the_database(
    app: Flask, tmp_path: Path, command: str
) -> None:
    other = tmp_path / "other-keyring.json"
    Keyring.generate().save(other)
    content = other.read_bytes()
    with app.app_context():
        written_by = keyring().key_id
    entries = count_rows(app.config, "SELECT count(*) FROM audit_entry")
    args: list[str] = ["serve", "--port", str(free_port())] if command == "serve" else ["init"]

    result = run_gateway(app, *args, KEYRING=str(other))

    assert_refused(result, f"keyring {written_by} did")
    assert other.read_bytes() == content
    assert count_rows(app.config, "SELECT count(*) FROM audit_entry") == entries


def test_init_upgrades_version_2_and_records_the_fingerprint(
    app: Flask, admin: Caller, shop: Caller, runner: Any, tmp_path: Path
) -> None:
    write_history(admin, shop)
    assert runner.invoke(args=["audit", "checkpoint"]).exit_code == 0
    as_scheme_1(app)  # as the gateway of version 2 wrote it
    rebuild_as(app, 2)
    assert admin.get("/readyz").get_json()["code"] == "schema_outdated"

    result = run_gateway(app, "init")

    assert result.returncode == 0, result.stderr
    assert f"upgraded schema version 2 -> {LATEST}" in result.stdout
    with app.app_context():
        ring = keyring()
    assert recorded_fingerprints(app) == [ring.fingerprint()]
    assert admin.get("/readyz").status_code == 200
    assert_refused(run_gateway(app, "init", HOME=str(tmp_path / "fresh-home")))


# What tells that a database of schema version 2 (no fingerprint) was written by another keyring.
EVIDENCE = {
    # its latest checkpoint is signed by another key (of another key id)
    "checkpoint": "audit checkpoint",
    # ... or by a key of the same key id that is not this keyring's
    "checkpoint_of_the_same_key_id": "audit checkpoint",
    # no checkpoint yet: its pseudonyms are keyed under another key id
    "pseudonym": "pseudonyms",
}


@pytest.mark.parametrize("evidence", sorted(EVIDENCE))
def test_init_refuses_to_upgrade_version_2_with_a_keyring_that_did_not_write_it(
    app: Flask, admin: Caller, shop: Caller, runner: Any, tmp_path: Path, evidence: str
) -> None:
    write_history(admin, shop)
    if evidence != "pseudonym":
        assert runner.invoke(args=["audit", "checkpoint"]).exit_code == 0
    assert (count_rows(app.config, "SELECT count(*) FROM audit_checkpoint") == 0) == (
        evidence == "pseudonym"
    )
    as_scheme_1(app)  # as the gateway of version 2 wrote it
    rebuild_as(app, 2)
    home = tmp_path / "fresh-home"
    settings = {"HOME": str(home)}
    if evidence == "checkpoint_of_the_same_key_id":
        with app.app_context():
            impostor = replace(Keyring.generate(), key_id=keyring().key_id)
        settings["KEYRING"] = str(tmp_path / "impostor.json")
        impostor.save(Path(settings["KEYRING"]))

    result = run_gateway(app, "init", **settings)

    assert_refused(result, EVIDENCE[evidence])
    assert not (home / "keyring.json").exists()
    with app.app_context(), database.connection_context():
        assert current_version() == 2
    # the keyring that wrote it upgrades it
    upgraded = run_gateway(app, "init")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded schema version 2 -> {LATEST}" in upgraded.stdout
