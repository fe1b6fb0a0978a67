"""(h) A decision for a subject with a long history against one with a short history.

    .venv/bin/python -m bench.run --only h

One store, one real server (bench/server.py, two workers), the same candidates. Subjects hold 10,
1,000, 10,000 and 50,000 events over the last 60 days: views, clicks, carts and purchases in four
item categories, collected with their times spread evenly. One client sends personalize calls
for each subject in turn, round after round, so drift hits every subject alike; the figure is
the p50 per subject, and the ratio compares 10,000 events with 10.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.personalize import CANDIDATES, CONSENT, Server, _ok
from gateway import keyring
from gateway.store.clients import Role, create_client
from gateway.store.db import database, write_transaction
from gateway.store.profiles import NewEvent, add_events
from gateway.store.subjects import ensure_subject

SIZES = (10, 1_000, 10_000, 50_000)
SPAN = timedelta(days=60)
KINDS = ("view", "view", "click", "view", "add_to_cart", "view", "click", "purchase")
CATEGORIES = ("shoes", "books", "garden", "toys")


def history(count: int, now: datetime) -> list[tuple[str, NewEvent]]:
    """`count` events over the last 60 days, oldest first, with the database each goes to."""
    found = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        at = now - SPAN + (n + 1) * SPAN / (count + 1)
        event = NewEvent(kind, f"item-{n % 97}", CATEGORIES[n % 7 % 4], at, False)
        found.append(("crm" if kind == "purchase" else "shop_events", event))
    return found


def seed(app: Any, sizes: tuple[int, ...]) -> str:
    """A consenting subject per size, its events stored in bulk; returns an app key."""
    now = datetime.now(UTC)
    with app.app_context(), database.connection_context():
        _, key = create_client("bench-app", Role.APP, ["recommendations"], now)
    http = app.test_client()
    for size in sizes:
        subject = f"history-{size}"
        headers = {"Authorization": f"Bearer {key}"}
        _ok(
            http.put(
                f"/v1/subjects/{subject}/consents/recommendations", json=CONSENT, headers=headers
            )
        )
        events = history(size, now)
        with app.app_context(), database.connection_context():
            for start in range(0, size, 1000):
                with write_transaction():
                    found = ensure_subject(keyring(), keyring().pseudonym(subject), now)
                    for name in ("shop_events", "crm"):
                        batch = [e for db, e in events[start : start + 1000] if db == name]
                        add_events(found, name, batch, keyring(), now)
    return key


def bench_history(
    make_app: Callable[[Path], Any], home: Path, rounds: int, sizes: tuple[int, ...] = SIZES
) -> dict[str, Any]:
    app = make_app(home)
    key = seed(app, sizes)
    profile = home / "profile.json"
    profile.write_text("[]")
    server = Server(app, profile, workers=2)
    headers = {"Authorization": f"Bearer {key}"}
    timings: dict[int, list[float]] = {size: [] for size in sizes}
    try:
        for round_ in range(rounds + 20):  # the first 20 rounds warm up
            for size in sizes:
                body = {
                    "subject_id": f"history-{size}",
                    "purpose": "recommendations",
                    "candidates": CANDIDATES,
                }
                seconds = server.request("POST", "/v1/personalize", body, headers)
                if round_ >= 20:
                    timings[size].append(seconds * 1000)
    finally:
        server.stop()
    p50 = {size: statistics.median(found) for size, found in timings.items()}
    return {"p50": p50, "rounds": rounds, "ratio": p50[10_000] / p50[10]}


def print_history(result: dict[str, Any]) -> None:
    p50 = result["p50"]
    print(
        f"| (h) decision p50, 10,000 events | {p50[10_000]:.2f} ms | 10 events: {p50[10]:.2f} ms "
        f"| {result['ratio']:.2f} | <= 1.5 |"
    )
    others = ", ".join(f"{size:,} events {ms:.2f} ms" for size, ms in p50.items())
    print(f"| (h) p50 by history ({result['rounds']} calls each) | {others} | | | |")
