"""Who is calling: bearer keys, roles and the purposes a client was granted.

Every /v1 request is authenticated before its handler runs (401); each handler then states
which roles and which purpose it needs (403).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import g, request
from flask_smorest import Blueprint

from gateway.errors import Forbidden, Unauthorized
from gateway.store.clients import Role, authenticate, client_purposes
from gateway.store.models import ApiClient

View = TypeVar("View", bound=Callable[..., Any])

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="gateway"'}


def authenticate_request() -> None:
    """Attach the calling client to `g`, or refuse with 401."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    client = authenticate(key.strip()) if scheme.lower() == "bearer" else None
    if client is None:
        raise Unauthorized(
            "A valid API key is required (Authorization: Bearer <key>).", headers=CHALLENGE
        )
    g.client = client


def roles(*allowed: Role) -> Callable[[View], View]:
    """Admit only clients with one of `allowed` roles (else 403), before any body is parsed;
    the OpenAPI document lists them as the operation's `x-roles`."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            role = Role(g.client.role)
            if role not in allowed:
                names = ", ".join(r.value for r in allowed)
                message = f"This needs the role {names}; the client is {role}."
                raise Forbidden(message)
            return view(*args, **kwargs)

        documented = Blueprint.doc(**{"x-roles": [r.value for r in allowed]})(checked)
        return cast(View, documented)

    return decorate


def caller(purpose: str | None = None) -> ApiClient:
    """The calling client; an app client must have been granted `purpose` (else 403)."""
    client: ApiClient = g.client
    if purpose is not None and not may_use(client, purpose):
        raise Forbidden(
            f"The client was not granted the purpose '{purpose}'.",
            {"purpose": [f"Not granted to this client: '{purpose}'."]},
            code="purpose_not_granted",
        )
    return client


def may_use(client: ApiClient, purpose: str) -> bool:
    return Role(client.role) is not Role.APP or purpose in client_purposes(client)
