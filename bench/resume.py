"""(e) `gateway audit verify --resume`: 1,000 new entries on a 1,000,000-entry log, against a
1,000-entry log verified from scratch (lower is better; 1 = as fast).

    .venv/bin/python -m bench.run --only e

Both logs are seeded in bulk as valid chains (each entry's hash computed as `append` does, rows
written with executemany in one transaction), since appending a million entries one by one would
take far longer than the measurement.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import keyring, policies
from gateway.audit.chain import HASHED_FIELDS, body_hash, timestamp
from gateway.audit.resume import VerifiedHead, save_head, verify_recorded
from gateway.audit.sequencer import chain_head
from gateway.store.db import database, fold_wal, write_transaction

BATCH = 50_000  # rows built and written per executemany: bounded memory
COLUMNS = (*HASHED_FIELDS, "hash")


def _row(seq: int, at: str, policy_hash: str, prev_hash: str) -> tuple[Any, ...]:
    """One decision entry linked to `prev_hash`, as the columns store it."""
    body: dict[str, Any] = {
        "seq": seq,
        "at": at,
        "actor": "bench",
        "action": "decision",
        "subject": f"v1:bench:{seq % 10_000:064d}",
        "purpose": "recommendations",
        "outcome": "allow",
        "reasons": ["consent_granted"],
        "fields": {"dropped": [], "used": ["browsing"]},
        "policy_hash": policy_hash,
        "request_id": f"r{seq}",
        "decision_id": f"d{seq}",
        "prev_hash": prev_hash,
    }
    body["hash"] = body_hash(body)
    stored = {
        **body,
        "reasons": json.dumps(body["reasons"]),
        "fields": json.dumps(body["fields"], sort_keys=True),
    }
    return tuple(stored[name] for name in COLUMNS)


def seed_chain(count: int) -> tuple[int, str]:
    """Append `count` valid entries after the chain head in bulk; returns the new head."""
    columns = ", ".join(f'"{name}"' for name in COLUMNS)
    marks = ", ".join(database.param for _ in COLUMNS)
    sql = f'INSERT INTO "audit_entry" ({columns}) VALUES ({marks})'
    at, policy_hash = timestamp(datetime.now(UTC)), policies().hash
    with write_transaction():
        seq, prev = chain_head()
        end = seq + count
        cursor = database.cursor()
        while seq < end:
            rows = []
            for n in range(seq + 1, min(end, seq + BATCH) + 1):
                rows.append(_row(n, at, policy_hash, prev))
                prev = rows[-1][-1]
            cursor.executemany(sql, rows)
            seq += len(rows)
        cursor.close()
    fold_wal(database)  # both logs are read from the database file, none from the WAL
    return seq, prev


def _timed(path: Path, resume: bool, expected: int, state: bytes | None) -> float:
    """Seconds one `verify_recorded` takes, from a given state file (None: from scratch)."""
    if state is not None:
        path.write_bytes(state)
    ring = keyring()
    started = time.perf_counter()
    found = verify_recorded(path, ring, resume=resume, now=datetime.now(UTC))
    seconds = time.perf_counter() - started
    assert found.result.ok and found.result.entries == expected, found
    return seconds


def bench_resume(
    make_app: Callable[[Path], Any], folder: Path, total: int, new: int, runs: int = 7
) -> dict[str, float]:
    """Median of `runs` resumed verifications of `new` entries on a `total`-entry log, against
    the median of `runs` full verifications of a `new`-entry log."""
    # one app at a time: each binds the process's database when it is made
    large_app = make_app(folder / "large")
    state = Path(large_app.config["AUDIT_VERIFIED_STATE"])
    with large_app.app_context(), database.connection_context():
        started = time.perf_counter()
        seq, hash_ = seed_chain(total - new)
        # the state a verification of everything up to here would have left
        save_head(state, VerifiedHead(seq, hash_, keyring().key_id, "bench"), keyring())
        seed_chain(new)
        seed_seconds = time.perf_counter() - started
        recorded = state.read_bytes()
        resumed = [_timed(state, True, new, recorded) for _ in range(runs)]
    small_app = make_app(folder / "small")
    scratch_state = Path(small_app.config["AUDIT_VERIFIED_STATE"])
    with small_app.app_context(), database.connection_context():
        seed_chain(new)
        scratch = [_timed(scratch_state, False, new, None) for _ in range(runs)]
    resume_s, scratch_s = statistics.median(resumed), statistics.median(scratch)
    return {
        "total": total,
        "new": new,
        "seed_s": seed_seconds,
        "resume_s": resume_s,
        "scratch_s": scratch_s,
        "ratio": resume_s / scratch_s,
    }


def print_resume(result: dict[str, float]) -> None:
    print(
        f"| (e) audit verify --resume, {int(result['new']):,} new of {int(result['total']):,} "
        f"entries | {result['resume_s'] * 1000:.1f} ms | {int(result['new']):,}-entry log from "
        f"scratch {result['scratch_s'] * 1000:.1f} ms | {result['ratio']:.2f} | <= 2.0 |"
    )
    print(
        f"| (e) seeding the {int(result['total']):,}-entry log in bulk | "
        f"{result['seed_s']:.1f} s | | | |"
    )
