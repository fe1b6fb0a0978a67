"""Shared by the audit tests: a real history written through the API, and the raw stored rows.

template = build_template(home, 25, checkpoint_every=5)   # once per module: 25 entries
copy_template(template, make_app, home)                    # then a private copy per test
with raw(app.config) as connection:      # edit the stored log behind the gateway's back
    ...
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import time_machine
from flask import Flask

from gateway import create_app
from gateway.cli import initialize
from gateway.store import close_connections
from gateway.store.clients import Role, create_client
from gateway.store.db import database
from tests.conftest import ROOT, Caller
from tests.stores import Raw, Settings, copy_rows, new_store, raw

# The demo registrations have review dates: on this day shop_events and crm are active.
CALENDAR = datetime(2026, 6, 1, tzinfo=UTC)
CANDIDATES = [{"id": "b-1", "category": "books"}, {"id": "s-1", "category": "shoes"}]
NOTICE = {"source": "cookie_banner", "notice_version": "2026-05"}

Json = dict[str, Any]


def _ok(response: Any) -> None:
    assert response.status_code == 200, response.get_json()


def _consent(caller: Caller, subject: str, purpose: str, granted: bool) -> None:
    _ok(caller.put(f"/v1/subjects/{subject}/consents/{purpose}", {"granted": granted, **NOTICE}))


def _events(caller: Caller, subject: str) -> None:
    at = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    events = [
        {"type": "view", "item_id": "s-1", "category": "shoes", "at": at},
        {"type": "purchase", "item_id": "b-7", "category": "books", "at": at},
    ]
    body = {"database": "shop_events", "events": events}
    _ok(caller.post(f"/v1/subjects/{subject}/events", body))


def _attributes(caller: Caller, subject: str) -> None:
    body = {"database": "crm", "attributes": {"favorite_brand": "acme", "shoe_size": 42}}
    _ok(caller.patch(f"/v1/subjects/{subject}/attributes", body))


def _personalize(caller: Caller, subject: str, purpose: str) -> None:
    body = {"subject_id": subject, "purpose": purpose, "candidates": CANDIDATES}
    _ok(caller.post("/v1/personalize", body))


Step = Callable[[Caller, Caller, str], None]
STEPS: list[Step] = [
    lambda shop, mailer, s: _personalize(shop, s, "recommendations"),  # fallback: no consent
    lambda shop, mailer, s: _consent(shop, s, "recommendations", True),
    lambda shop, mailer, s: _events(shop, s),
    lambda shop, mailer, s: _attributes(shop, s),
    lambda shop, mailer, s: _personalize(shop, s, "recommendations"),  # allow
    lambda shop, mailer, s: _personalize(mailer, s, "email_marketing"),  # legitimate interest
    lambda shop, mailer, s: _consent(mailer, s, "email_marketing", False),
    lambda shop, mailer, s: _personalize(mailer, s, "email_marketing"),  # deny: objection
    lambda shop, mailer, s: _personalize(shop, s, "ads_personalization"),  # fallback
]


def build_history(shop: Caller, mailer: Caller, count: int, prefix: str = "subject") -> None:
    """Make `count` requests through the API, each of which appends exactly one audit entry."""
    for n in range(count):
        STEPS[n % len(STEPS)](shop, mailer, f"{prefix}-{n // len(STEPS)}")


CALLERS = {
    "shop": (Role.APP, ["recommendations", "ads_personalization"]),
    "mailer": (Role.APP, ["email_marketing"]),
    "auditor": (Role.AUDITOR, []),
    "admin": (Role.ADMIN, []),
}


def register_callers(app: Flask) -> dict[str, Caller]:
    """Create the shop, mailer, auditor and admin clients of an app, speaking through it."""
    keys: dict[str, str] = {}
    with app.app_context(), database.connection_context():
        for name, (role, purposes) in CALLERS.items():
            _, keys[name] = create_client(name, role, purposes, datetime.now(UTC))
    http = app.test_client()
    return {name: Caller(http, key) for name, key in keys.items()}


@dataclass(frozen=True)
class Template:
    """An instance folder and databases holding a history, and the keys of its clients."""

    home: Path
    store: Settings
    keys: dict[str, str]


def build_template(home: Path, count: int, checkpoint_every: int) -> Template:
    """Write a history of `count` entries through the API once, for tests to copy."""
    store = new_store(home)
    config = {
        "TESTING": True,
        "HOME": str(home),
        "POLICIES": str(ROOT / "policies"),
        "REGISTRY": str(ROOT / "registry"),
        "AUDIT_CHECKPOINT_EVERY": checkpoint_every,
        **store,
    }
    app = create_app(config)
    with time_machine.travel(CALENDAR, tick=True):
        with app.app_context():
            initialize(app)
        callers = register_callers(app)
        build_history(callers["shop"], callers["mailer"], count)
    close_connections()
    return Template(home, store, {name: caller.key for name, caller in callers.items()})


def copy_template(
    template: Template, make_app: Callable[..., Flask], home: Path, **settings: Any
) -> Flask:
    """A new app in `home` over a private copy of the template: its keyring and every row."""
    home.mkdir(parents=True)
    shutil.copy(template.home / "keyring.json", home / "keyring.json")
    app = make_app(HOME=str(home), **settings)
    copy_rows(template.store, app.config)
    return app


def entry(connection: Raw, seq: int) -> Json:
    """One stored entry as the body its hash covers (reasons and fields parsed)."""
    row = connection.execute("SELECT * FROM audit_entry WHERE seq = ?", (seq,)).fetchone()
    assert row is not None, f"no entry {seq}"
    body = dict(row)
    body["reasons"], body["fields"] = json.loads(body["reasons"]), json.loads(body["fields"])
    return body


def entries(app: Flask) -> list[Json]:
    with raw(app.config) as connection:
        seqs = [row[0] for row in connection.execute("SELECT seq FROM audit_entry ORDER BY seq")]
        return [entry(connection, seq) for seq in seqs]


def checkpoints(app: Flask) -> list[Json]:
    with raw(app.config) as connection:
        rows = connection.execute("SELECT * FROM audit_checkpoint ORDER BY seq").fetchall()
        return [{k: row[k] for k in row.keys() if k != "id"} for row in rows]
