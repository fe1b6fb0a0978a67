"""Per-client rate limits (Flask-Limiter): 429 problem+json with Retry-After.

    GATEWAY_RATELIMIT_DEFAULT="600 per minute"           # per client, every route
    GATEWAY_RATELIMIT_STORAGE_URI="redis://host:6379"    # shared by all workers and hosts

With the default in-memory storage each gunicorn worker counts on its own, so the effective
limit is the configured one times the number of workers.
"""

from __future__ import annotations

from flask import Flask, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address


def client_or_address() -> str:
    """Limit an authenticated caller by its client, anything else by its address."""
    client = g.get("client")
    return f"client:{client.name}" if client is not None else f"address:{get_remote_address()}"


def init_app(app: Flask) -> None:
    # One limiter per app, so each app counts in its own storage. Initialised after the API's
    # before_request hooks, so the client is known when the limits are checked.
    app.extensions["gateway.limiter"] = Limiter(key_func=client_or_address, app=app)
