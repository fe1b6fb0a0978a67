"""API clients: random keys shown once, stored as SHA-256 digests.

client, key = create_client("web-shop", Role.APP, ["recommendations"], now)
authenticate(key)            # -> the ApiClient, or None when unknown or revoked
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime
from enum import StrEnum

from gateway.errors import Conflict
from gateway.store.models import ApiClient
from gateway.store.statements import Statement

KEY_PREFIX = "gwk_"
CLIENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Role(StrEnum):
    APP = "app"
    AUDITOR = "auditor"
    ADMIN = "admin"


class ClientError(Conflict):
    """A client command cannot be carried out (duplicate name, unknown client, ...)."""

    code = "client_error"


def key_digest(key: str) -> str:
    # The keys are 256-bit random secrets, so a fast hash is enough to make a stolen table useless.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def client_purposes(client: ApiClient) -> list[str]:
    return list(json.loads(client.purposes))


def create_client(
    name: str, role: Role, purposes: list[str], now: datetime
) -> tuple[ApiClient, str]:
    """Create a client and return it with its key; the key itself is never stored."""
    if not CLIENT_NAME.match(name):
        raise ClientError("a client name is 1 to 64 letters, digits, '.', '_' or '-'")
    if ApiClient.get_or_none(ApiClient.name == name) is not None:
        raise ClientError(f"a client named {name!r} already exists")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient.create(
        name=name,
        role=role.value,
        purposes=json.dumps(sorted(set(purposes))),
        key_hash=key_digest(key),
        created_at=now,
    )
    return client, key


# Every request looks its key up: read afresh each time, so that a revocation holds at once.
_BY_KEY_HASH = Statement(lambda digest: ApiClient.select().where(ApiClient.key_hash == digest))


def authenticate(key: str) -> ApiClient | None:
    if not key.startswith(KEY_PREFIX):
        return None
    client = _BY_KEY_HASH.first(key_digest(key))
    if client is None or client.revoked_at is not None:
        return None
    return client


def revoke_client(name: str, now: datetime) -> bool:
    """Revoke a client's key; False if it was revoked already."""
    client = ApiClient.get_or_none(ApiClient.name == name)
    if client is None:
        raise ClientError(f"no client named {name!r}")
    if client.revoked_at is not None:
        return False
    client.revoked_at = now
    client.save()
    return True


def list_clients() -> list[ApiClient]:
    return list(ApiClient.select().order_by(ApiClient.name))
