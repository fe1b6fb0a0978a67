"""A real multi-worker server: withdrawals take effect at once, and one audit chain holds.

Many threads personalize while another withdraws consents one subject at a time. Once a
withdrawal's response has returned, no request for that subject started later is personalized.
Afterwards the audit chain, appended to by every worker, verifies.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from gateway.store.clients import Role, create_client
from gateway.store.db import database
from tests.conftest import gateway_environment, running_server

SUBJECTS = [f"subject-{n}" for n in range(12)]
WORKERS = 3
REQUESTS_PER_THREAD = 250
THREADS = 8


def call(base: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def server(app: Flask) -> Iterator[tuple[str, str]]:
    """`gateway serve --workers 3` on the test's instance; yields (base URL, admin key)."""
    with app.app_context(), database.connection_context():
        _, key = create_client("load", Role.ADMIN, [], datetime.now(UTC))
    env = gateway_environment(app, RATELIMIT_DEFAULT="100000 per minute")
    with running_server(app, WORKERS, env) as (base, _process):
        yield base, key


@dataclass(frozen=True)
class Observation:
    subject: str
    started: float
    personalized: bool


def test_withdrawals_hold_under_load_and_the_chain_verifies(server: tuple[str, str]) -> None:
    base, key = server
    consent = {"granted": True, "source": "load", "notice_version": "1"}
    now = datetime.now(UTC).isoformat()
    events = [{"type": "view", "item_id": "i1", "category": "shoes", "at": now}]
    for subject in SUBJECTS:
        assert (
            call(base, key, "PUT", f"/v1/subjects/{subject}/consents/recommendations", consent)[0]
            == 200
        )
        body = {"database": "shop_events", "events": events}
        assert call(base, key, "POST", f"/v1/subjects/{subject}/events", body)[0] == 200

    withdrawn_at: dict[str, float] = {}
    observations: list[Observation] = []
    lock = threading.Lock()
    failures: list[Any] = []

    def personalize(offset: int) -> None:
        for n in range(REQUESTS_PER_THREAD):
            subject = SUBJECTS[(offset + n) % len(SUBJECTS)]
            body = {
                "subject_id": subject,
                "purpose": "recommendations",
                "candidates": [{"id": "a", "category": "shoes"}, {"id": "b", "category": "books"}],
            }
            started = time.monotonic()
            status, answer = call(base, key, "POST", "/v1/personalize", body)
            with lock:
                if status != 200:
                    failures.append((status, answer))
                else:
                    observations.append(Observation(subject, started, answer["personalized"]))

    def withdraw() -> None:
        withdrawal = {**consent, "granted": False}
        for subject in SUBJECTS:
            time.sleep(0.05)
            path = f"/v1/subjects/{subject}/consents/recommendations"
            status, answer = call(base, key, "PUT", path, withdrawal)
            with lock:
                if status != 200:
                    failures.append((status, answer))
                withdrawn_at[subject] = time.monotonic()

    threads = [threading.Thread(target=personalize, args=(n,)) for n in range(THREADS)]
    threads.append(threading.Thread(target=withdraw))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert failures == []
    assert set(withdrawn_at) == set(SUBJECTS)
    assert len(observations) == THREADS * REQUESTS_PER_THREAD
    late = [o for o in observations if o.personalized and o.started > withdrawn_at[o.subject]]
    assert late == []
    # both sides happened: personalized before the withdrawal, refused after it
    assert any(o.personalized for o in observations)
    assert any(not o.personalized and o.started > withdrawn_at[o.subject] for o in observations)

    # A read of the log chains every committed entry first (verification checks those still
    # pending, but counts the chain).
    assert call(base, key, "GET", "/v1/audit/entries?limit=1")[0] == 200
    status, verification = call(base, key, "GET", "/v1/audit/verify")
    assert status == 200
    assert verification["ok"] is True, verification
    appended = 2 * len(SUBJECTS) + len(SUBJECTS) + len(observations)
    assert verification["entries"] >= appended
