"""Benchmarks, each figure a ratio against a baseline measured in the same run.

    make bench            # or: .venv/bin/python -m bench.run --subjects 1000000 --rows 1000000

(a) and (b): see bench/personalize.py; (b) runs twice, with 2 events per subject (the first
    measurements) and with a realistic history of 50;
(c) audit verification vs raw SHA-256 over the same canonical bytes (higher is better; 1 = as fast);
(d) a retention purge vs one raw SQL DELETE of the same rows (lower is better; 1 = as fast), and
    the worst latency of personalize requests served while the purge runs;
(e) `audit verify --resume` over the new entries of a large log vs a small log verified from
    scratch: see bench/resume.py;
(f) on PostgreSQL, with 10 ms commits (a synchronous standby, simulated) vs fast ones: personalize
    throughput, and audited vs plain transactions: see bench/commits.py. It runs when a PostgreSQL
    server is at hand: GATEWAY_BENCH_POSTGRES_URL, else the local one `scripts/postgres.sh start`
    starts; each run works in fresh schemas of that database;
(h) decision p50 for a subject with 10,000 events against one with 10: see bench/history.py.
(g) belongs to the policy preview.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sqlite3
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.commits import bench_commits, print_commits, server_url
from bench.history import bench_history, print_history
from bench.personalize import CANDIDATES, Server, bench_overhead, bench_scale, seed_subject
from bench.resume import bench_resume, print_resume
from gateway import create_app, keyring, policies
from gateway.audit.chain import Action, AuditRecord, entry_body
from gateway.audit.sequencer import append_chained
from gateway.audit.verification import verify_stored
from gateway.cli import initialize
from gateway.crypto import canonical_json
from gateway.retention import purge_expired
from gateway.store.db import database, write_transaction
from gateway.store.models import AuditEntry, Event
from gateway.store.subjects import ensure_subject

ROOT = Path(__file__).resolve().parent.parent


def make_app(home: Path) -> Any:
    app = create_app(
        {
            "HOME": str(home),
            "POLICIES": str(ROOT / "policies"),
            "REGISTRY": str(ROOT / "registry"),
            "RATELIMIT_ENABLED": False,
        }
    )
    with app.app_context():
        initialize(app)
    return app


def bench_verify(app: Any, entries: int) -> dict[str, float]:
    with app.app_context(), database.connection_context(), write_transaction():
        now = datetime.now(UTC)
        for n in range(entries):
            record = AuditRecord(
                actor="bench",
                action=Action.DECISION,
                policy_hash=policies().hash,
                subject=f"v1:bench:{n:064d}",
                purpose="recommendations",
                outcome="allow",
                reasons=["consent_granted"],
                fields={"used": ["browsing"], "dropped": []},
                request_id=f"r{n}",
                decision_id=f"d{n}",
            )
            append_chained(record, now, keyring(), 100)
    with app.app_context(), database.connection_context():
        ring = keyring()
        started = time.perf_counter()
        result = verify_stored({ring.key_id: ring.public_key})
        verify_seconds = time.perf_counter() - started
        assert result.ok and result.entries == entries
        payloads = [
            canonical_json({k: v for k, v in entry_body(e).items() if k != "hash"})
            for e in AuditEntry.select().order_by(AuditEntry.seq).iterator()
        ]
    started = time.perf_counter()
    for payload in payloads:
        hashlib.sha256(payload).hexdigest()
    raw_seconds = time.perf_counter() - started
    return {
        "entries": entries,
        "verify_s": verify_seconds,
        "raw_s": raw_seconds,
        "ratio": raw_seconds / verify_seconds,
    }


def seed_expired(app: Any, rows: int) -> None:
    old = datetime.now(UTC) - timedelta(days=200)
    with app.app_context(), database.connection_context():
        with write_transaction():
            subject = ensure_subject(keyring(), keyring().pseudonym("bench"), datetime.now(UTC))
        batch = 10_000
        for start in range(0, rows, batch):
            with write_transaction():
                Event.insert_many(
                    [
                        {
                            "subject": subject,
                            "database": "shop_events",
                            "type": "view",
                            "item_id": f"i{n}",
                            "item_category": "shoes",
                            "sealed": False,
                            "at": old,
                            "received_at": old,
                        }
                        for n in range(start, min(rows, start + batch))
                    ]
                ).execute()


def bench_purge(app: Any, home: Path, rows: int) -> dict[str, float]:
    """The same expired rows three times over (copies of one instance): a raw DELETE and the
    purge, each on a quiet database, for the ratio; then the purge again under live requests."""
    seed_expired(app, rows)
    with sqlite3.connect(home / "gateway.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = home.parent / "raw.db"
    shutil.copy(home / "gateway.db", copy)
    busy = home.parent / "busy"
    shutil.copytree(home, busy)
    cutoff = (datetime.now(UTC) - timedelta(days=90)).replace(tzinfo=None)
    with sqlite3.connect(copy) as raw:
        raw.execute("PRAGMA secure_delete = 1")
        started = time.perf_counter()
        raw.execute(
            "DELETE FROM event WHERE type IN ('view','click','add_to_cart') AND at <= ?",
            (str(cutoff),),
        )
        raw.commit()
        raw_seconds = time.perf_counter() - started

    with app.app_context(), database.connection_context():
        started = time.perf_counter()
        quiet = purge_expired(
            policies(), datetime.now(UTC), actor="bench", batch_size=app.config["PURGE_BATCH_SIZE"]
        )
        purge_seconds = time.perf_counter() - started
    assert sum(r.deleted for r in quiet.results) == rows

    # Requests go to a real two-worker server while this process purges: each personalizes
    # (so appends to the audit log, a write that must wait for the purge's batches).
    app = make_app(busy)
    key, _events = seed_subject(app, "traffic", 5)
    profile = busy / "profile.json"
    profile.write_text("[]")
    server = Server(app, profile, workers=2)
    body = {"subject_id": "traffic", "purpose": "recommendations", "candidates": CANDIDATES}
    timings: list[tuple[float, float]] = []  # (start, seconds) of each request
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            began = time.perf_counter()
            seconds = server.request(
                "POST", "/v1/personalize", body, {"Authorization": f"Bearer {key}"}
            )
            timings.append((began, seconds))

    thread = threading.Thread(target=traffic)
    thread.start()
    time.sleep(1)
    with app.app_context(), database.connection_context():
        purge_began = time.perf_counter()
        busy_outcome = purge_expired(
            policies(), datetime.now(UTC), actor="bench", batch_size=app.config["PURGE_BATCH_SIZE"]
        )
        busy_seconds = time.perf_counter() - purge_began
    done.set()
    thread.join()
    server.stop()
    assert sum(r.deleted for r in busy_outcome.results) == rows
    during = [seconds for began, seconds in timings if began + seconds >= purge_began]
    before = [seconds for began, seconds in timings if began + seconds < purge_began]
    return {
        "rows": rows,
        "purge_s": purge_seconds,
        "raw_s": raw_seconds,
        "ratio": purge_seconds / raw_seconds,
        "busy_s": busy_seconds,
        "requests": len(during),
        "worst_ms": max(during) * 1000 if during else float("nan"),
        "p50_ms": sorted(during)[len(during) // 2] * 1000 if during else float("nan"),
        "idle_p50_ms": sorted(before)[len(before) // 2] * 1000 if before else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="(a) server workers")
    parser.add_argument("--seconds", type=float, default=10, help="(a), (f) per throughput arm")
    parser.add_argument("--samples", type=int, default=1000, help="(a) latency samples")
    parser.add_argument("--subjects", type=int, default=1_000_000, help="(b) large store")
    parser.add_argument("--rounds", type=int, default=300, help="(h) calls per subject")
    parser.add_argument("--entries", type=int, default=20_000, help="(c) audit entries")
    parser.add_argument("--rows", type=int, default=1_000_000, help="(d) expired rows")
    parser.add_argument("--log", type=int, default=1_000_000, help="(e) entries in the log")
    parser.add_argument("--new", type=int, default=1000, help="(e) entries new since the last")
    parser.add_argument("--only", default=None, help="which benchmarks, e.g. --only bd")
    parser.add_argument("--batch-size", type=int, default=None, help="(d) purge batch size")
    args = parser.parse_args()
    postgres = None
    if args.only is None or "f" in args.only:
        postgres = server_url()
        if postgres is None and args.only is not None:
            parser.error("(f) needs PostgreSQL: set GATEWAY_BENCH_POSTGRES_URL")
        if postgres is None:
            print("(f) skipped: no PostgreSQL (set GATEWAY_BENCH_POSTGRES_URL)")
    if args.only is None:
        args.only = "abcdefh" if postgres else "abcdeh"
    if args.batch_size:
        os.environ["GATEWAY_PURGE_BATCH_SIZE"] = str(args.batch_size)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if "a" in args.only:
            overhead = bench_overhead(
                make_app, folder / "a", args.workers, args.seconds, args.samples
            )
        if "b" in args.only:
            scales = [
                bench_scale(make_app, folder / f"b{events}", 1000, args.subjects, 2000, events)
                for events in (2, 50)
            ]
            for events in (2, 50):
                shutil.rmtree(folder / f"b{events}", ignore_errors=True)
        if "c" in args.only:
            verify = bench_verify(make_app(folder / "c"), args.entries)
        if "d" in args.only:
            purge = bench_purge(make_app(folder / "d"), folder / "d", args.rows)
        if "e" in args.only:
            resume = bench_resume(make_app, folder / "e", args.log, args.new)
        if "f" in args.only and postgres:
            commits = bench_commits(folder / "f", postgres, args.seconds)
        if "h" in args.only:
            history = bench_history(make_app, folder / "h", args.rounds)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()}, SQLite {sqlite3.sqlite_version}"
    )
    print("| benchmark | measured | baseline | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    if "a" in args.only:
        print_overhead(overhead)
    if "b" in args.only:
        for scale in scales:
            print(
                f"| (b) decision p50, {int(scale['large']):,} subjects, "
                f"{int(scale['events'])} events each | {scale['large_p50']:.2f} ms | "
                f"{int(scale['small']):,} subjects: {scale['small_p50']:.2f} ms | "
                f"{scale['ratio']:.2f} | <= 1.2 |"
            )
    if "c" in args.only:
        print(
            f"| (c) audit verify, {verify['entries']:,} entries | {verify['verify_s']:.3f} s | "
            f"raw sha256 {verify['raw_s']:.3f} s | {verify['ratio']:.3f} | >= 0.5 |"
        )
    if "d" in args.only:
        print_purge(purge)
    if "e" in args.only:
        print_resume(resume)
    if "f" in args.only:
        print_commits(commits)
    if "h" in args.only:
        print_history(history)


def print_overhead(overhead: dict[str, float]) -> None:
    print(
        f"| (a) throughput, {overhead['workers']} workers, {overhead['threads']} clients | "
        f"/v1/personalize {overhead['full_rps']:.0f} req/s | "
        f"bare scorer {overhead['bare_rps']:.0f} req/s | {overhead['ratio']:.2f} | >= 0.6 |"
    )
    print(
        f"| (a) added latency p50, one client | {overhead['added_p50']:.2f} ms "
        f"({overhead['full_p50']:.2f} vs {overhead['bare_p50']:.2f}) | | | <= 1 ms |"
    )
    print(f"| (a) added latency p99, one client | {overhead['added_p99']:.2f} ms | | | |")


def print_purge(purge: dict[str, float]) -> None:
    print(
        f"| (d) purge, {purge['rows']:,} expired rows | {purge['purge_s']:.3f} s | "
        f"raw DELETE {purge['raw_s']:.3f} s | {purge['ratio']:.2f} | <= 2.0 |"
    )
    print(
        f"| (d) request latency during the purge ({purge['requests']} requests) | "
        f"worst {purge['worst_ms']:.1f} ms, p50 {purge['p50_ms']:.1f} ms "
        f"(purge took {purge['busy_s']:.1f} s) | p50 before it {purge['idle_p50_ms']:.1f} ms | | "
        f"< 50 ms |"
    )


if __name__ == "__main__":
    main()
