"""Benchmarks (a) and (b): what governance costs per request, and whether it grows with data.

(a) /v1/personalize against the bare /bench/score endpoint (bench/server.py): the same body,
    scorer, rules and profile, on one gunicorn server with the same workers. Throughput under
    concurrent clients, and the latency added at p50 and p99 with one client at a time.
(b) the p50 of a personalize decision with 1M subjects stored against 1k.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway import keyring
from gateway.store import tallies
from gateway.store.clients import Role, create_client
from gateway.store.db import database, write_transaction
from gateway.store.models import ConsentRecord, Subject
from tests.stores import insert_events

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = [
    {"id": f"item-{n}", "category": ["shoes", "books", "garden", "toys"][n % 4]} for n in range(20)
]
CONSENT = {"granted": True, "source": "bench", "notice_version": "2026-05"}


def _ok(response: Any) -> Any:
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def seed_subject(app: Any, subject: str, events: int) -> tuple[str, list[dict[str, str]]]:
    """An app client, one consenting subject with `events` recent events; returns the key and
    the events (the bare endpoint's profile)."""
    with app.app_context(), database.connection_context():
        _, key = create_client("bench-app", Role.APP, ["recommendations"], datetime.now(UTC))
    http = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    _ok(http.put(f"/v1/subjects/{subject}/consents/recommendations", json=CONSENT, headers=headers))
    now = datetime.now(UTC)
    stored = [
        {
            "type": ["view", "click", "add_to_cart"][n % 3],
            "item_id": f"seen-{n}",
            "category": ["shoes", "books", "garden"][n % 3],
            "at": (now - timedelta(hours=n + 1)).isoformat(),
        }
        for n in range(events)
    ]
    body = {"database": "shop_events", "events": stored}
    _ok(http.post(f"/v1/subjects/{subject}/events", json=body, headers=headers))
    return key, stored


class Server:
    """bench/server.py in a process of its own, on a free port; `settings` (GATEWAY_* names)
    override the app's."""

    def __init__(
        self, app: Any, profile: Path, workers: int, settings: dict[str, str] | None = None
    ) -> None:
        import socket

        env = {
            **os.environ,
            "GATEWAY_HOME": app.config["HOME"],
            "GATEWAY_DATABASE_URL": app.config["DATABASE_URL"],
            "GATEWAY_KEYSTORE_URL": app.config["KEYSTORE_URL"],
            "GATEWAY_POLICIES": app.config["POLICIES"],
            "GATEWAY_REGISTRY": app.config["REGISTRY"],
            **(settings or {}),
        }
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "server.py"), str(profile)]
            + ["--port", str(self.port), "--workers", str(workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.request("GET", "/healthz", None, {})
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.2)

    def request(self, method: str, path: str, body: Any, headers: dict[str, str]) -> float:
        """One request on a new connection (gunicorn's sync workers close each); its seconds."""
        data = None if body is None else json.dumps(body)
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, data, {"Content-Type": "application/json", **headers})
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        seconds = time.perf_counter() - started
        assert response.status == 200, payload[:300]
        return seconds

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def throughput(call: Callable[[], float], threads: int, seconds: float) -> float:
    """Requests per second that `threads` clients complete in `seconds`."""
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < stop:
            call()
            counts[index] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def bench_overhead(
    make_app: Callable[[Path], Any], home: Path, workers: int, seconds: float, samples: int
) -> dict[str, float]:
    app = make_app(home)
    key, events = seed_subject(app, "bench-subject", 30)
    profile = home / "profile.json"
    profile.write_text(json.dumps(events))
    body = {"subject_id": "bench-subject", "purpose": "recommendations", "candidates": CANDIDATES}
    headers = {"Authorization": f"Bearer {key}"}
    server = Server(app, profile, workers)
    try:

        def full() -> float:
            return server.request("POST", "/v1/personalize", body, headers)

        def bare() -> float:
            return server.request("POST", "/bench/score", body, headers)

        for call in (full, bare):  # warm both up
            for _ in range(50):
                call()
        # Latency with one client at a time, interleaved so drift hits both alike.
        full_ms, bare_ms = [], []
        for _ in range(samples):
            full_ms.append(full() * 1000)
            bare_ms.append(bare() * 1000)
        threads = 2 * workers
        full_rps = throughput(full, threads, seconds)
        bare_rps = throughput(bare, threads, seconds)
    finally:
        server.stop()
    return {
        "workers": workers,
        "threads": threads,
        "full_rps": full_rps,
        "bare_rps": bare_rps,
        "ratio": full_rps / bare_rps,
        "full_p50": percentile(full_ms, 0.5),
        "bare_p50": percentile(bare_ms, 0.5),
        "added_p50": percentile(full_ms, 0.5) - percentile(bare_ms, 0.5),
        "added_p99": percentile(full_ms, 0.99) - percentile(bare_ms, 0.99),
    }


# A realistic history for (b): 50 events in five visits (days) of the last three weeks, three
# event types, three item categories.
VISITS = (1, 4, 9, 15, 20)  # days ago


def _events(subject: int, per_subject: int, now: datetime) -> list[tuple[Any, ...]]:
    """Event rows of one subject as `insert_events` takes them: two recent views (the store of
    the first measurements) or a history of `per_subject` events in five visits."""
    if per_subject == 2:
        at = now - timedelta(hours=1)
        return [
            (subject, "shop_events", k, f"i-{subject}", "shoes", False, at, now)
            for k in ("view", "click")
        ]
    rows = []
    for n in range(per_subject):
        day = VISITS[n % len(VISITS)]
        at = now - timedelta(days=day, minutes=n)
        kind = ("view", "click", "add_to_cart")[n % 3]
        category = ("shoes", "books", "garden")[n % 7 % 3]
        rows.append((subject, "shop_events", kind, f"i-{n}", category, False, at, now))
    return rows


def seed_subjects(app: Any, count: int, per_subject: int = 2) -> list[str]:
    """`count` subjects, each with a granted consent and `per_subject` events, written in bulk;
    returns the raw ids of a sample of them."""
    ring = keyring()
    now = datetime.now(UTC)
    batch = 5000
    # The triggers count row by row; in bulk, counting once at the end (as the migration that
    # adds the tallies does) takes a fraction of the time.
    with write_transaction():
        tallies.uninstall()
    for start in range(0, count, batch):
        ids = [f"subject-{n}" for n in range(start, min(count, start + batch))]
        with write_transaction():
            Subject.insert_many(
                [{"pseudonym": ring.pseudonym(i), "created_at": now} for i in ids]
            ).execute()
            found = dict(
                Subject.select(Subject.pseudonym, Subject.id)
                .where(Subject.pseudonym.in_([ring.pseudonym(i) for i in ids]))
                .tuples()
            )
            rows = [found[ring.pseudonym(i)] for i in ids]
            ConsentRecord.insert_many(
                [
                    {
                        "subject": s,
                        "receipt_id": f"r-{s}",
                        "purpose": "recommendations",
                        "granted": True,
                        "source": "bench",
                        "notice_version": "2026-05",
                        "recorded_at": now,
                        "client": "bench",
                        "policy_hash": "bench",
                        "key_id": ring.key_id,
                        "signature": "bench",
                    }
                    for s in rows
                ]
            ).execute()
            insert_events([row for s in rows for row in _events(s, per_subject, now)])
    with write_transaction():
        tallies.rebuild()
        tallies.install()
    return [f"subject-{n}" for n in random.Random(7).sample(range(count), min(count, 500))]


def decision_p50(app: Any, subjects: list[str], key: str, rounds: int) -> float:
    http = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    timings = []
    for n in range(rounds):
        body = {
            "subject_id": subjects[n % len(subjects)],
            "purpose": "recommendations",
            "candidates": CANDIDATES,
        }
        started = time.perf_counter()
        decision = _ok(http.post("/v1/personalize", json=body, headers=headers))
        timings.append(time.perf_counter() - started)
        assert decision["personalized"] is True, decision
    return statistics.median(timings[rounds // 10 :]) * 1000


def bench_scale(
    make_app: Callable[[Path], Any],
    folder: Path,
    small: int,
    large: int,
    rounds: int,
    per_subject: int = 2,
) -> dict[str, float]:
    """Seed both stores, then time small, large, small again: the baseline is the mean of the
    two small runs, so warm-up and drift do not favour either side."""
    results: dict[str, float] = {"small": small, "large": large, "events": per_subject}
    seeded: dict[str, tuple[list[str], str]] = {}
    for name, count in (("small", small), ("large", large)):
        app = make_app(folder / name)
        with app.app_context(), database.connection_context():
            _, key = create_client("bench-app", Role.APP, ["recommendations"], datetime.now(UTC))
            started = time.perf_counter()
            seeded[name] = (seed_subjects(app, count, per_subject), key)
            results[f"{name}_seed_s"] = time.perf_counter() - started
    timings = []
    for name in ("small", "large", "small"):
        app = make_app(folder / name)  # binds this process to that store again
        timings.append(decision_p50(app, *seeded[name], rounds))
    results["small_p50"] = (timings[0] + timings[2]) / 2
    results["large_p50"] = timings[1]
    results["ratio"] = results["large_p50"] / results["small_p50"]
    return results
