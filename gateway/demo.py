"""Demo clients and data, loaded once through the real API so every step is checked and audited.

gateway demo      # keys go to HOME/demo-clients.json (mode 0600), never into the code
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from flask import Flask

from gateway.audit.chain import Action
from gateway.audit.clients import audit_client_change
from gateway.cli import operator
from gateway.store.clients import Role, client_purposes, create_client
from gateway.store.db import database, write_transaction

CLIENTS: dict[str, tuple[Role, list[str]]] = {
    "demo-shop": (Role.APP, ["recommendations", "ads_personalization"]),
    "demo-mailer": (Role.APP, ["email_marketing"]),
    "demo-auditor": (Role.AUDITOR, []),
    "demo-admin": (Role.ADMIN, []),
}


def _create_clients(path: Path) -> dict[str, str]:
    keys = {}
    with database.connection_context(), write_transaction():
        for name, (role, purposes) in CLIENTS.items():
            client, keys[name] = create_client(name, role, purposes, datetime.now(UTC))
            granted = {"role": role.value, "purposes": client_purposes(client)}
            audit_client_change(Action.CLIENT_CREATE, name, granted, actor=operator())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(keys, handle, indent=2)
    return keys


def _ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def _calls() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, body) of the demo story: three subjects, and some refusals."""
    consent = {"source": "web_banner", "notice_version": "2026-01"}
    events = [
        {"type": "view", "item_id": "sku-1", "category": "shoes", "at": _ago(2)},
        {"type": "view", "item_id": "sku-2", "category": "shoes", "at": _ago(1)},
        {"type": "add_to_cart", "item_id": "sku-2", "category": "shoes", "at": _ago(1)},
        {"type": "purchase", "item_id": "sku-9", "category": "socks", "at": _ago(3)},
        {"type": "click", "item_id": "sku-30", "category": "books", "at": _ago(40)},
        {"type": "view", "item_id": "sku-31", "category": "books", "at": _ago(200)},
    ]
    return [
        ("PUT", "/v1/subjects/alice/consents/recommendations", {"granted": True, **consent}),
        ("POST", "/v1/subjects/alice/events", {"database": "shop_events", "events": events}),
        (
            "PATCH",
            "/v1/subjects/alice/attributes",
            {
                "database": "crm",
                "attributes": {
                    "favorite_brand": "acme",
                    "shoe_size": 42,
                    "email": "alice@example.com",
                    "home_city": "Haifa",
                    "religion": "none",
                },
            },
        ),
        (
            "POST",
            "/v1/subjects/alice/events",
            {
                "database": "mobile_location",
                "events": [
                    {
                        "type": "store_visit",
                        "item_id": "store-7",
                        "category": "stores",
                        "at": _ago(1),
                    }
                ],
            },
        ),
        ("POST", "/v1/subjects/bob/events", {"database": "shop_events", "events": events[:3]}),
        ("PUT", "/v1/subjects/carol/consents/recommendations", {"granted": True, **consent}),
        ("POST", "/v1/subjects/carol/events", {"database": "shop_events", "events": events[3:5]}),
        ("PUT", "/v1/subjects/carol/consents/recommendations", {"granted": False, **consent}),
    ]


def _load_data(app: Flask, admin_key: str) -> None:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin_key}"}
    for method, path, body in _calls():
        response = client.open(path, method=method, json=body, headers=headers)
        if response.status_code != 200:
            raise click.ClickException(f"demo {method} {path}: {response.get_data(as_text=True)}")
        refused = (response.get_json() or {}).get("refused")
        note = f"  refused {refused}" if refused else ""
        click.echo(f"  {method} {path}: ok{note}")


def curl_example(key: str, host: str = "127.0.0.1", port: int = 8000) -> str:
    body = json.dumps(
        {
            "subject_id": "alice",
            "purpose": "recommendations",
            "candidates": [
                {"id": "sku-2", "category": "shoes", "features": {"brand": "acme"}},
                {"id": "sku-40", "category": "books", "popularity": 90},
                {"id": "sku-9", "category": "socks"},
                {"id": "sku-41", "category": "shoes", "features": {"brand": "other"}},
            ],
        }
    )
    return (
        f"curl -s -X POST 'http://{host}:{port}/v1/personalize?explain=true' \\\n"
        f"  -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
        f"  -d '{body}'"
    )


def load_demo(app: Flask, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Create the demo clients and data on first run; afterwards just show the keys' file."""
    path = Path(app.config["HOME"]) / "demo-clients.json"
    if path.exists():
        keys = json.loads(path.read_text(encoding="utf-8"))
        click.echo(f"demo already loaded; client keys are in {path}")
    else:
        keys = _create_clients(path)
        click.echo(f"created demo clients; their keys are in {path}")
        _load_data(app, keys["demo-admin"])
    click.echo("\nTry it (subject alice consented to recommendations; bob and carol did not):\n")
    click.echo(curl_example(keys["demo-shop"], host, port))
    click.echo()
