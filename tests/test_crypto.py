"""The keyring: field encryption, pseudonyms, data-key wrapping, signatures, the key file."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.crypto import (
    Keyring,
    KeyringError,
    canonical_json,
    decrypt_field,
    encrypt_field,
    verify_signature,
)

CONTEXT = "attr:crm:email"


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def data_key(keyring: Keyring) -> bytes:
    return keyring.new_data_key()[0]


# --- field encryption -----------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", ["a@example.com", "", "Zoë 🥾 שלום", "x" * 10_000])
def test_field_roundtrip(data_key: bytes, plaintext: str) -> None:
    token = encrypt_field(data_key, plaintext, CONTEXT)

    assert token.startswith("v1:dk:")
    assert decrypt_field(data_key, token, CONTEXT) == plaintext


def test_ciphertexts_differ_for_the_same_plaintext(data_key: bytes) -> None:
    first = encrypt_field(data_key, "a@example.com", CONTEXT)
    second = encrypt_field(data_key, "a@example.com", CONTEXT)

    assert first != second
    assert "a@example.com" not in first
    assert decrypt_field(data_key, first, CONTEXT) == decrypt_field(data_key, second, CONTEXT)


def test_wrong_context_fails(data_key: bytes) -> None:
    token = encrypt_field(data_key, "a@example.com", CONTEXT)

    with pytest.raises(KeyringError):
        decrypt_field(data_key, token, "attr:crm:phone")


def test_wrong_key_fails(keyring: Keyring, data_key: bytes) -> None:
    token = encrypt_field(data_key, "a@example.com", CONTEXT)
    other_key, _ = keyring.new_data_key()

    with pytest.raises(KeyringError):
        decrypt_field(other_key, token, CONTEXT)


def test_tampered_token_fails(data_key: bytes) -> None:
    token = encrypt_field(data_key, "a@example.com", CONTEXT)
    sealed = bytearray(base64.urlsafe_b64decode(token.removeprefix("v1:dk:")))
    sealed[20] ^= 0x01
    flipped = "v1:dk:" + base64.urlsafe_b64encode(bytes(sealed)).decode("ascii")

    with pytest.raises(KeyringError):
        decrypt_field(data_key, flipped, CONTEXT)


@pytest.mark.parametrize("prefix", ["v2:dk:", "v1:kek:"])
def test_unknown_scheme_fails(data_key: bytes, prefix: str) -> None:
    body = encrypt_field(data_key, "a@example.com", CONTEXT).removeprefix("v1:dk:")

    with pytest.raises(KeyringError):
        decrypt_field(data_key, prefix + body, CONTEXT)


# --- pseudonyms -----------------------------------------------------------------------------------


def test_pseudonym_is_stable_for_one_keyring(keyring: Keyring) -> None:
    assert keyring.pseudonym("user-42") == keyring.pseudonym("user-42")
    assert keyring.pseudonym("user-42") != keyring.pseudonym("user-43")


def test_pseudonym_differs_between_keyrings(keyring: Keyring) -> None:
    assert Keyring.generate().pseudonym("user-42") != keyring.pseudonym("user-42")


def test_pseudonym_differs_with_only_the_hmac_key_changed(keyring: Keyring) -> None:
    other = dataclasses.replace(keyring, hmac_key=bytes(32))

    assert other.pseudonym("user-42") != keyring.pseudonym("user-42")


@pytest.mark.parametrize("subject_id", ["user-42", "a@example.com", "42", "v1"])
def test_pseudonym_is_the_keyed_hmac_of_the_raw_id(keyring: Keyring, subject_id: str) -> None:
    pseudonym = keyring.pseudonym(subject_id)

    # Only the HMAC digest is kept: a short id can occur in hex by chance, so compare the digest.
    expected = hmac.new(keyring.hmac_key, subject_id.encode(), hashlib.sha256).hexdigest()
    assert pseudonym == f"v1:{keyring.key_id}:{expected}"


# --- data keys ------------------------------------------------------------------------------------


def test_wrapped_data_key_unwraps(keyring: Keyring) -> None:
    data_key, wrapped = keyring.new_data_key()

    assert len(data_key) == 32
    assert wrapped.startswith(f"v1:{keyring.key_id}:")
    assert keyring.unwrap_key(wrapped) == data_key
    assert keyring.unwrap_key(keyring.wrap_key(data_key)) == data_key


def test_data_keys_are_fresh(keyring: Keyring) -> None:
    assert keyring.new_data_key()[0] != keyring.new_data_key()[0]


def test_unwrap_with_another_keyring_fails(keyring: Keyring) -> None:
    _, wrapped = keyring.new_data_key()

    with pytest.raises(KeyringError):
        Keyring.generate().unwrap_key(wrapped)


def test_unwrap_with_another_kek_under_the_same_key_id_fails(keyring: Keyring) -> None:
    _, wrapped = keyring.new_data_key()
    impostor = dataclasses.replace(keyring, kek=Keyring.generate().kek)

    with pytest.raises(KeyringError):
        impostor.unwrap_key(wrapped)


# --- signatures -----------------------------------------------------------------------------------

PAYLOAD = canonical_json({"seq": 7, "hash": "abc", "at": "2026-03-01T12:00:00+00:00"})


def test_signature_verifies_with_the_public_key(keyring: Keyring) -> None:
    signature = keyring.sign(PAYLOAD)

    assert verify_signature(keyring.public_key, signature, PAYLOAD) is True


def test_tampered_payload_fails(keyring: Keyring) -> None:
    signature = keyring.sign(PAYLOAD)
    tampered = PAYLOAD.replace(b'"seq":7', b'"seq":8')

    assert tampered != PAYLOAD
    assert verify_signature(keyring.public_key, signature, tampered) is False


def test_tampered_signature_fails(keyring: Keyring) -> None:
    raw = bytearray(base64.urlsafe_b64decode(keyring.sign(PAYLOAD)))
    raw[5] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode("ascii")

    assert verify_signature(keyring.public_key, tampered, PAYLOAD) is False


def test_signature_of_another_keyring_fails(keyring: Keyring) -> None:
    signature = Keyring.generate().sign(PAYLOAD)

    assert verify_signature(keyring.public_key, signature, PAYLOAD) is False


@pytest.mark.parametrize("signature", ["", "not base64!", "AAAA"])
def test_malformed_signature_fails(keyring: Keyring, signature: str) -> None:
    assert verify_signature(keyring.public_key, signature, PAYLOAD) is False


def test_malformed_public_key_fails(keyring: Keyring) -> None:
    assert verify_signature("AAAA", keyring.sign(PAYLOAD), PAYLOAD) is False


def test_public_key_pem(keyring: Keyring) -> None:
    loaded = serialization.load_pem_public_key(keyring.public_key_pem.encode("ascii"))
    raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    assert base64.urlsafe_b64encode(raw).decode("ascii") == keyring.public_key


# --- the keyring file -----------------------------------------------------------------------------


def test_save_writes_owner_only_file(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "instance" / "keyring.json"

    keyring.save(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text(encoding="utf-8"))["key_id"] == keyring.key_id


def test_save_refuses_to_overwrite(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(path)
    before = path.read_bytes()

    with pytest.raises(FileExistsError):
        Keyring.generate().save(path)

    assert path.read_bytes() == before


def test_load_roundtrips(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring.save(path)
    _, wrapped = keyring.new_data_key()

    loaded = Keyring.load(path)

    assert (loaded.key_id, loaded.kek, loaded.hmac_key) == (
        keyring.key_id,
        keyring.kek,
        keyring.hmac_key,
    )
    assert loaded.public_key == keyring.public_key
    assert loaded.pseudonym("user-42") == keyring.pseudonym("user-42")
    assert loaded.unwrap_key(wrapped) == keyring.unwrap_key(wrapped)
    assert verify_signature(keyring.public_key, loaded.sign(PAYLOAD), PAYLOAD) is True


def test_load_of_a_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="no keyring"):
        Keyring.load(tmp_path / "keyring.json")


def _saved(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "good.json"
    Keyring.generate().save(path)
    data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda good: "", id="empty"),
        pytest.param(lambda good: "not json {", id="not-json"),
        pytest.param(lambda good: "[]", id="a-list"),
        pytest.param(lambda good: "{}", id="empty-map"),
        pytest.param(
            lambda good: json.dumps({k: v for k, v in good.items() if k != "kek"}), id="no-kek"
        ),
        pytest.param(
            lambda good: json.dumps({**good, "signing_key": good["signing_key"][:10]}),
            id="short-signing-key",
        ),
        pytest.param(lambda good: json.dumps({**good, "kek": 42}), id="kek-not-text"),
    ],
)
def test_load_of_a_corrupt_file_fails(
    tmp_path: Path, corrupt: Callable[[dict[str, str]], str]
) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(corrupt(_saved(tmp_path)), encoding="utf-8")

    with pytest.raises(KeyringError, match="unreadable keyring"):
        Keyring.load(path)


def test_load_of_a_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(KeyringError):
        Keyring.load(tmp_path)
