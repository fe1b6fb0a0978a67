"""The keyring and every cryptographic operation the gateway performs.

Each output is tagged with its scheme version and key id so keys can rotate::

    keyring = Keyring.generate()
    keyring.save(Path("instance/keyring.json"))          # mode 0600, never overwritten
    data_key, wrapped = keyring.new_data_key()           # per-subject key, stored wrapped
    token = encrypt_field(data_key, "a@example.com", context="attr:crm:email")
    label = encrypt_label(data_key, "books", context="event:shop:purchase")   # same in, same out
    keyring.pseudonym("user-42")                         # HMAC, stable, not reversible
    signature = keyring.sign(canonical_json({"hello": "world"}))
    keyring.matches_fingerprint(recorded)                # is this the keyring that wrote it?
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import EXIT_USAGE, Unavailable

SCHEME = "v1"
FIELD_TAG = "dk"  # the tag of `encrypt_field`'s tokens
LABEL_TAG = "dl"  # the tag of `encrypt_label`'s tokens
SIGNATURE_ALGORITHM = "Ed25519"


class KeyringError(Unavailable):
    """The keyring is missing, unreadable or does not match the data."""

    code = "keyring_unavailable"
    client_message = "The keyring is unavailable."


class KeyringMismatch(KeyringError):
    """The keyring is not the one that wrote the database: it would read none of its data."""

    code, exit_code = "keyring_mismatch", EXIT_USAGE
    client_message = "The keyring does not match the database."


# What to do about a keyring that is missing or not the database's own.
RESTORE_KEYRING = "restore the keyring that wrote it, or point GATEWAY_KEYRING at it"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode("ascii"))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not serializable: {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """The one canonical byte form used for every hash and signature."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)


def encrypt_field(data_key: bytes, plaintext: str, context: str) -> str:
    """Encrypt one value with a subject's data key, bound to `context` (where it is stored)."""
    sealed = _seal(data_key, plaintext.encode("utf-8"), context.encode("utf-8"))
    return f"{SCHEME}:{FIELD_TAG}:{_b64(sealed)}"


def _label_key(data_key: bytes) -> bytes:
    """The AES-SIV key of a subject's labels, derived from its data key (gone with it)."""
    return HKDF(SHA256(), length=64, salt=None, info=b"gateway label").derive(data_key)


def encrypt_label(data_key: bytes, plaintext: str, context: str) -> str:
    """Encrypt a value that rows are grouped or looked up by (an event's item category or id):
    deterministic, so one subject's equal labels in one context encrypt alike and a database
    can count and find them, and authenticated like `encrypt_field`. It shows which of the
    subject's labels are equal, no more; destroying the data key makes it unreadable like every
    other field."""
    return encrypt_labels(data_key, [plaintext], context)[0]


def encrypt_labels(data_key: bytes, plaintexts: Iterable[str], context: str) -> list[str]:
    """`encrypt_label` of many values, deriving the key once."""
    cipher, aad = AESSIV(_label_key(data_key)), [context.encode("utf-8")]
    return [
        f"{SCHEME}:{LABEL_TAG}:{_b64(cipher.encrypt(text.encode('utf-8'), aad))}"
        for text in plaintexts
    ]


def _parse(token: str) -> tuple[str, str, bytes]:
    """Split a `scheme:key-id:base64` token; a malformed one is a KeyringError like a bad key."""
    try:
        scheme, key_id, body = token.split(":", 2)
        return scheme, key_id, _unb64(body)
    except ValueError as exc:  # binascii.Error is a ValueError too
        raise KeyringError("malformed encrypted token") from exc


def decrypt_field(data_key: bytes, token: str, context: str) -> str:
    """Decrypt a token of `encrypt_field` or `encrypt_label`."""
    scheme, tag, sealed = _parse(token)
    if scheme != SCHEME or tag not in (FIELD_TAG, LABEL_TAG):
        raise KeyringError(f"unknown field encryption scheme {scheme}:{tag}")
    try:
        if tag == LABEL_TAG:
            opened = AESSIV(_label_key(data_key)).decrypt(sealed, [context.encode("utf-8")])
        else:
            opened = _open(data_key, sealed, context.encode("utf-8"))
        return opened.decode("utf-8")
    except InvalidTag as exc:
        raise KeyringError("field does not decrypt with this subject's key") from exc


def key_id_of(token: str) -> str:
    """The key id a tagged output (pseudonym, wrapped key, fingerprint) names; "" if none."""
    parts = token.split(":", 2)
    return parts[1] if len(parts) == 3 else ""


def verify_signature(public_key: str, signature: str, payload: bytes) -> bool:
    """Check an Ed25519 signature made by `Keyring.sign` against a published public key."""
    try:
        raw = _unb64(signature)
        # One signature, one text: base64 padding bits and "+/" for "-_" must not slip through.
        if _b64(raw) != signature:
            return False
        Ed25519PublicKey.from_public_bytes(_unb64(public_key)).verify(raw, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=32)
def _derived(hmac_key: bytes, use: str) -> bytes:
    """HKDF of the HMAC key for one use, derived once per process (every outbox message and
    console request needs one)."""
    info = f"gateway derived secret: {use}".encode()
    return HKDF(SHA256(), length=32, salt=None, info=info).derive(hmac_key)


@dataclass(frozen=True)
class Keyring:
    """Key-encryption key, pseudonym HMAC key and Ed25519 signing key, under one key id."""

    key_id: str
    kek: bytes
    hmac_key: bytes
    signing_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Keyring:
        return cls(
            key_id=secrets.token_hex(4),
            kek=AESGCM.generate_key(bit_length=256),
            hmac_key=secrets.token_bytes(32),
            signing_key=Ed25519PrivateKey.generate(),
        )

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            signing = _unb64(data["signing_key"])
            return cls(
                key_id=data["key_id"],
                kek=_unb64(data["kek"]),
                hmac_key=_unb64(data["hmac_key"]),
                signing_key=Ed25519PrivateKey.from_private_bytes(signing),
            )
        except FileNotFoundError as exc:
            raise KeyringError(
                f"{path}: no keyring; for a database that has data, {RESTORE_KEYRING}; "
                "for a new one, run `gateway init`"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyringError(
                f"{path}: unreadable keyring ({exc.__class__.__name__}); {RESTORE_KEYRING}"
            ) from exc

    def save(self, path: Path) -> None:
        """Write the keyring readable by its owner only; refuse to overwrite an existing one."""
        raw = self.signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        data = {
            "scheme": SCHEME,
            "key_id": self.key_id,
            "kek": _b64(self.kek),
            "hmac_key": _b64(self.hmac_key),
            "signing_key": _b64(raw),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)

    def pseudonym(self, subject_id: str) -> str:
        """A stable, keyed pseudonym of a subject id; the raw id is never stored in clear."""
        digest = hmac.new(self.hmac_key, subject_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{SCHEME}:{self.key_id}:{digest}"

    def new_data_key(self) -> tuple[bytes, str]:
        """A fresh per-subject AES-256 key and its wrapped (storable) form."""
        data_key = AESGCM.generate_key(bit_length=256)
        return data_key, self.wrap_key(data_key)

    def wrap_key(self, data_key: bytes) -> str:
        return f"{SCHEME}:{self.key_id}:{_b64(_seal(self.kek, data_key, b'data-key'))}"

    def unwrap_key(self, wrapped: str) -> bytes:
        scheme, key_id, sealed = _parse(wrapped)
        if scheme != SCHEME or key_id != self.key_id:
            raise KeyringError(f"data key wrapped by unknown key {scheme}:{key_id}")
        try:
            return _open(self.kek, sealed, b"data-key")
        except InvalidTag as exc:
            raise KeyringError("data key does not unwrap with this keyring") from exc

    def audit_mac(self, payload: bytes) -> str:
        """An HMAC of a pending audit entry, under a key derived for that use alone."""
        key = hmac.new(self.hmac_key, b"audit-pending-entry", hashlib.sha256).digest()
        return hmac.new(key, payload, hashlib.sha256).hexdigest()

    def seal_message(self, plaintext: str, context: str) -> str:
        """Encrypt an outgoing message while it waits in the outbox, under a key derived from
        the keyring for that use alone: no subject's data key, so an erasure leaves its own
        pending messages readable until they are delivered and dropped."""
        sealed = _seal(self.derived_secret("outbox"), plaintext.encode("utf-8"), context.encode())
        return f"{SCHEME}:{self.key_id}:{_b64(sealed)}"

    def open_message(self, token: str, context: str) -> str:
        """Decrypt a token of `seal_message` made for the same `context`."""
        scheme, key_id, sealed = _parse(token)
        if scheme != SCHEME or key_id != self.key_id:
            raise KeyringError(f"message sealed by unknown key {scheme}:{key_id}")
        try:
            return _open(self.derived_secret("outbox"), sealed, context.encode()).decode("utf-8")
        except InvalidTag as exc:
            raise KeyringError("message does not decrypt with this keyring") from exc

    def sign(self, payload: bytes) -> str:
        return _b64(self.signing_key.sign(payload))

    def derived_secret(self, use: str) -> bytes:
        """A 256-bit secret for one named use (such as signing the console's session cookies),
        derived from the HMAC key with HKDF: every process holding this keyring derives the
        same one, and it reveals neither the key nor another use's secret."""
        return _derived(self.hmac_key, use)

    def fingerprint(self) -> str:
        """A one-way value naming this keyring: its key id and every key, revealing none.

        An HMAC under the two secret keys of the key id and the public key (which the signing
        key determines), so a keyring that differs in any key or in its key id differs here.
        """
        message = canonical_json(
            {"use": "keyring-fingerprint", "key_id": self.key_id, "public_key": self.public_key}
        )
        digest = hmac.new(self.kek + self.hmac_key, message, hashlib.sha256).hexdigest()
        return f"{SCHEME}:{self.key_id}:{digest}"

    def matches_fingerprint(self, recorded: str) -> bool:
        """Whether `recorded` is this keyring's fingerprint (compared in constant time)."""
        return hmac.compare_digest(self.fingerprint().encode(), recorded.encode())

    @property
    def public_key(self) -> str:
        raw = self.signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return _b64(raw)

    @property
    def public_key_pem(self) -> str:
        return (
            self.signing_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )
