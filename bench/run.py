"""Benchmarks, each figure a ratio against a baseline measured in the same run.

    make bench            # or: .venv/bin/python -m bench.run --subjects 1000000 --rows 1000000

(a) and (b): see bench/personalize.py; (b) runs twice, with 2 events per subject (the first
    measurements) and with a realistic history of 50;
(c) audit verification vs raw SHA-256 over the same canonical bytes (higher is better; 1 = as fast);
(d) a retention purge vs one raw SQL DELETE of the same rows (lower is better; 1 = as fast; the
    median of --repeat pairs, each arm on a fresh copy), and the worst latency of personalize
    requests served while the purge runs;
(e) `audit verify --resume` over the new entries of a large log vs a small log verified from
    scratch: see bench/resume.py;
(f) on PostgreSQL, with 10 ms commits (a synchronous standby, simulated) vs fast ones: personalize
    throughput, and audited vs plain transactions: see bench/commits.py. It runs when a PostgreSQL
    server is at hand: GATEWAY_BENCH_POSTGRES_URL, else the local one `scripts/postgres.sh start`
    starts; each run works in fresh schemas of that database;
(h) decision p50 for a subject with 10,000 events against one with 10: see bench/history.py;
(i) consent signals in and out: personalize with an unchanged TC string vs without, consent
    changes per second with two recipients vs none, and the delivery lag of `gateway scheduler`
    to local receivers: see bench/signals.py (asked for as (f), which was taken).
(g) belongs to the policy preview.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sqlite3
import statistics
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
from bench.signals import bench_signals, print_signals
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


def synced_copy(source: Path, target: Path) -> Path:
    """Copy a database file, or an instance's folder, and flush the copy to disk. Unflushed, the
    copy's 200 MB (for 1M rows) were written out by the first checkpoint in it: inside the raw
    DELETE's commit, or the commit of the busy run's first request that crossed the
    checkpoint threshold (86-113 ms)."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    for path in [target, *target.iterdir()] if target.is_dir() else [target]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def cpu_pressure() -> float | None:
    """Seconds that some task has waited for a CPU since boot (Linux PSI), None without PSI."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            return int(pressure.readline().split("total=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


class Timed:
    """The wall and CPU seconds of a block, and the share of it during which some task on the
    machine waited for a CPU (how busy the machine was, from this process or any other)."""

    def __enter__(self) -> Timed:
        self.waited, self.cpu = cpu_pressure(), time.process_time()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu = time.process_time() - self.cpu
        waited = cpu_pressure()
        self.pressure = (
            float("nan")
            if waited is None or self.waited is None
            else (waited - self.waited) / self.seconds
        )


def raw_delete(path: Path) -> Timed:
    cutoff = (datetime.now(UTC) - timedelta(days=90)).replace(tzinfo=None)
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA secure_delete = 1")
        with Timed() as timed:
            raw.execute(
                "DELETE FROM event WHERE type IN ('view','click','add_to_cart') AND at <= ?",
                (str(cutoff),),
            )
            raw.commit()
    return timed


def timed_purge(app: Any, rows: int) -> Timed:
    """One purge with the app's batch settings; asserts it deleted `rows`."""
    with app.app_context(), database.connection_context(), Timed() as timed:
        outcome = purge_expired(
            policies(),
            datetime.now(UTC),
            actor="bench",
            batch_size=app.config["PURGE_BATCH_SIZE"],
            batch_seconds=app.config["PURGE_BATCH_SECONDS"],
        )
    assert sum(r.deleted for r in outcome.results) == rows
    return timed


def raw_arm(home: Path, copy: Path) -> Timed:
    timed = raw_delete(synced_copy(home / "gateway.db", copy))
    copy.unlink()
    return timed


def purge_arm(home: Path, copy: Path, rows: int) -> Timed:
    timed = timed_purge(make_app(synced_copy(home, copy)), rows)
    shutil.rmtree(copy)
    return timed


def quiet_pairs(home: Path, rows: int, repeat: int) -> list[tuple[Timed, Timed]]:
    """(raw DELETE, purge) `repeat` times, each on a fresh copy of `home`, in turn first: one
    pair taken once is at the mercy of whatever else the machine does meanwhile."""
    pairs = []
    for n in range(repeat):
        raw, quiet = home.parent / f"raw-{n}.db", home.parent / f"quiet-{n}"
        if n % 2:
            purged = purge_arm(home, quiet, rows)
            pairs.append((raw_arm(home, raw), purged))
        else:
            deleted = raw_arm(home, raw)
            pairs.append((deleted, purge_arm(home, quiet, rows)))
    return pairs


def busy_purge(home: Path, rows: int) -> dict[str, Any]:
    """The purge on a copy of `home` while a real two-worker server answers personalize calls,
    each appending to the audit log: a write that must take the lock between the batches."""
    app = make_app(synced_copy(home, home.parent / "busy"))
    key, _events = seed_subject(app, "traffic", 5)
    profile = Path(app.config["HOME"]) / "profile.json"
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
    try:
        thread.start()
        time.sleep(1)
        began = time.perf_counter()
        timed = timed_purge(app, rows)
    finally:
        done.set()
        thread.join()
        server.stop()
    during = sorted(seconds for start, seconds in timings if start + seconds >= began)
    before = sorted(seconds for start, seconds in timings if start + seconds < began)
    return {"timed": timed, "during": during, "before": before}


def bench_purge(app: Any, home: Path, rows: int, repeat: int) -> dict[str, Any]:
    """The same expired rows over and over (copies of one instance): a raw DELETE and the
    purge in turn on a quiet database, for the ratio; then the purge under live requests."""
    seed_expired(app, rows)
    with sqlite3.connect(home / "gateway.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pairs = quiet_pairs(home, rows, repeat)
    busy = busy_purge(home, rows)
    ratios = sorted(purged.seconds / deleted.seconds for deleted, purged in pairs)
    during, before = busy["during"], busy["before"]
    return {
        "rows": rows,
        "purge_s": statistics.median(purged.seconds for _, purged in pairs),
        "raw_s": statistics.median(deleted.seconds for deleted, _ in pairs),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "cpu_ratio": statistics.median(p.cpu / d.cpu for d, p in pairs),
        "quiet_pressure": statistics.mean(t.pressure for pair in pairs for t in pair),
        "busy_s": busy["timed"].seconds,
        "busy_pressure": busy["timed"].pressure,
        "requests": len(during),
        "worst_ms": during[-1] * 1000 if during else float("nan"),
        "p99_ms": during[int(0.99 * len(during))] * 1000 if during else float("nan"),
        "p50_ms": during[len(during) // 2] * 1000 if during else float("nan"),
        "idle_p50_ms": before[len(before) // 2] * 1000 if before else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="(a) server workers")
    parser.add_argument("--seconds", type=float, default=10, help="(a), (f), (i) per arm")
    parser.add_argument("--samples", type=int, default=1000, help="(a), (i) latency samples")
    parser.add_argument("--subjects", type=int, default=1_000_000, help="(b) large store")
    parser.add_argument("--rounds", type=int, default=300, help="(h) calls per subject")
    parser.add_argument("--changes", type=int, default=600, help="(i) changes timed to delivery")
    parser.add_argument("--entries", type=int, default=20_000, help="(c) audit entries")
    parser.add_argument("--rows", type=int, default=1_000_000, help="(d) expired rows")
    parser.add_argument("--log", type=int, default=1_000_000, help="(e) entries in the log")
    parser.add_argument("--new", type=int, default=1000, help="(e) entries new since the last")
    parser.add_argument("--only", default=None, help="which benchmarks, e.g. --only bd")
    parser.add_argument("--batch-size", type=int, default=None, help="(d) purge batch size")
    parser.add_argument("--repeat", type=int, default=3, help="(d) raw/purge pairs")
    args = parser.parse_args()
    postgres = None
    if args.only is None or "f" in args.only:
        postgres = server_url()
        if postgres is None and args.only is not None:
            parser.error("(f) needs PostgreSQL: set GATEWAY_BENCH_POSTGRES_URL")
        if postgres is None:
            print("(f) skipped: no PostgreSQL (set GATEWAY_BENCH_POSTGRES_URL)")
    if args.only is None:
        args.only = "abcdefhi" if postgres else "abcdehi"
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
            purge = bench_purge(make_app(folder / "d"), folder / "d", args.rows, args.repeat)
        if "e" in args.only:
            resume = bench_resume(make_app, folder / "e", args.log, args.new)
        if "f" in args.only and postgres:
            commits = bench_commits(folder / "f", postgres, args.seconds)
        if "h" in args.only:
            history = bench_history(make_app, folder / "h", args.rounds)
        if "i" in args.only:
            signals = bench_signals(folder / "i", args.samples, args.seconds, args.changes)
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
    if "i" in args.only:
        print_signals(signals)


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


def print_purge(purge: dict[str, Any]) -> None:
    ratios = ", ".join(f"{r:.2f}" for r in purge["ratios"])
    print(
        f"| (d) purge, {purge['rows']:,} expired rows (median of {len(purge['ratios'])}: "
        f"{ratios}) | {purge['purge_s']:.3f} s | raw DELETE {purge['raw_s']:.3f} s | "
        f"{purge['ratio']:.2f} | <= 2.0 |"
    )
    print(
        f"| (d) request latency during the purge ({purge['requests']} requests) | "
        f"worst {purge['worst_ms']:.1f} ms, p99 {purge['p99_ms']:.1f} ms, p50 "
        f"{purge['p50_ms']:.1f} ms (purge took {purge['busy_s']:.1f} s) | "
        f"p50 before it {purge['idle_p50_ms']:.1f} ms | | < 50 ms |"
    )
    print(
        f"(d) CPU seconds, purge vs raw DELETE: {purge['cpu_ratio']:.2f}; some task waited for a "
        f"CPU {purge['quiet_pressure']:.0%} of the quiet arms' time, "
        f"{purge['busy_pressure']:.0%} of the busy purge's"
    )


if __name__ == "__main__":
    main()
