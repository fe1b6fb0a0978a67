"""Who is calling: bearer keys, roles and the purposes a client was granted.

Every /v1 request is authenticated before its handler runs (401); each handler then states
which roles and which purpose it needs (403).
"""

from __future__ import annotations

from flask import g, request

from gateway.errors import GatewayError
from gateway.store.clients import Role, authenticate, client_purposes
from gateway.store.models import ApiClient

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="gateway"'}


def authenticate_request() -> None:
    """Attach the calling client to `g`, or refuse with 401."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    client = authenticate(key.strip()) if scheme.lower() == "bearer" else None
    if client is None:
        raise GatewayError(
            401,
            "unauthorized",
            "A valid API key is required (Authorization: Bearer <key>).",
            headers=CHALLENGE,
        )
    g.client = client


def authorize(*roles: Role, purpose: str | None = None) -> ApiClient:
    """The calling client, if it has one of `roles` and, for apps, was granted `purpose`."""
    client: ApiClient = g.client
    role = Role(client.role)
    if role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise GatewayError(
            403, "forbidden", f"This needs the role {allowed}; the client is {role}."
        )
    if purpose is not None and not may_use(client, purpose):
        raise GatewayError(
            403,
            "purpose_not_granted",
            f"The client was not granted the purpose '{purpose}'.",
            {"purpose": [f"Not granted to this client: '{purpose}'."]},
        )
    return client


def may_use(client: ApiClient, purpose: str) -> bool:
    return Role(client.role) is not Role.APP or purpose in client_purposes(client)
