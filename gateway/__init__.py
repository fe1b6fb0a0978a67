"""The consent-governed personalization gateway.

app = create_app({"HOME": "/tmp/gw"})   # no connection opened, no key generated
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from gateway.config import load_config
from gateway.crypto import Keyring
from gateway.policy.documents import load_policy_set
from gateway.policy.model import PolicySet


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: configuration, validated documents, database binding, API, console, CLI."""
    from gateway import api, cli, console, limits, observability
    from gateway.api import problems
    from gateway.store import db, keystore

    app = Flask(__name__)
    load_config(app, config)
    app.extensions["gateway.policies"] = load_policy_set(
        app.config["POLICIES"], app.config["REGISTRY"]
    )
    db.bind(app.config["DATABASE_URL"])
    db.init_app(app)
    keystore.init_app(app)
    problems.init_app(app)
    observability.init_app(app)
    api.init_app(app)
    limits.init_app(app)
    console.init_app(app)
    cli.init_app(app)
    return app


def policies() -> PolicySet:
    """The policy set the running app validated at start."""
    found: PolicySet = current_app.extensions["gateway.policies"]
    return found


def keyring() -> Keyring:
    """The app's keyring, read from disk on first use."""
    if "gateway.keyring" not in current_app.extensions:
        current_app.extensions["gateway.keyring"] = Keyring.load(
            Path(current_app.config["KEYRING"])
        )
    found: Keyring = current_app.extensions["gateway.keyring"]
    return found
