"""Per-client rate limits (Flask-Limiter): 429 problem+json with Retry-After.

    GATEWAY_RATELIMIT_DEFAULT="600 per minute"           # per client, every route
    GATEWAY_RATELIMIT_STORAGE_URI="redis://host:6379"    # shared by all workers and hosts

With the default in-memory storage each gunicorn worker counts on its own, so the effective
limit is the configured one times the number of workers.

    count_attempt("console-sign-in", "10 per minute")   # per address; 429 beyond
"""

from __future__ import annotations

import time

from flask import Flask, current_app, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse

from gateway.errors import GatewayError


def client_or_address() -> str:
    """Limit an authenticated caller by its client, anything else by its address."""
    client = g.get("client")
    return f"client:{client.name}" if client is not None else f"address:{get_remote_address()}"


def count_attempt(scope: str, rate: str) -> None:
    """Count one attempt at `scope` (such as signing in) from the caller's address, in the
    limiter's storage; beyond `rate` ("10 per minute") refuse it with 429 and Retry-After."""
    limiter: Limiter = current_app.extensions["gateway.limiter"]
    if not limiter.enabled:
        return
    limit, address = parse(rate), get_remote_address()
    if limiter.limiter.hit(limit, scope, address):
        return
    reset_at, _ = limiter.limiter.get_window_stats(limit, scope, address)
    retry = max(1, int(reset_at - time.time()) + 1)
    raise GatewayError(
        f"Too many attempts from this address; try again in {retry} seconds.",
        status=429,
        code="too_many_requests",
        headers={"Retry-After": str(retry)},
    )


def init_app(app: Flask) -> None:
    # One limiter per app, so each app counts in its own storage. Initialised after the API's
    # before_request hooks, so the client is known when the limits are checked.
    app.extensions["gateway.limiter"] = Limiter(key_func=client_or_address, app=app)
