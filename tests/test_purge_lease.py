"""A purge that lost its lease stops, and writes nothing more: no batch, no progress, no finish,
no audit entry. The run it leaves is the new holder's to close as `interrupted`.

In process: a purge runs in a thread while the test lets its lease expire and takes it over, in
one write transaction: between two of the purge's batches, or after its last one (while it counts
what else it would delete, before it finishes). As real processes: `gateway purge` is paused
with SIGSTOP between two batches, its lease expires, a second `gateway purge` takes over and
finishes the job, more expired rows arrive, and the first is let go with SIGCONT.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from gateway import keyring
from gateway.policy.model import PolicySet
from gateway.retention import LEASE, LeaseLost, purge_expired
from gateway.store.db import WRITER_LOCK, database, write_transaction
from gateway.store.leases import acquire
from gateway.store.models import Lease
from gateway.store.subjects import ensure_subject
from tests.conftest import GATEWAY, gateway_environment, verify_audit
from tests.stores import insert_events, raw
from tests.test_purge_crash import audit_entries, event, expired_left, leases, runs

OTHER_HOST = "otherhost:1:abcd"
DEADLINE = 60.0  # seconds for any one wait on a purge

Snapshot = dict[str, Any]


def seed(app: Flask, expired: int, fresh: int, prefix: str = "expired") -> None:
    """Browsing events 200 days old (retention P90D), and fresh ones that no purge may touch."""
    now = datetime.now(UTC)
    with app.app_context(), database.connection_context(), write_transaction():
        ring = keyring()
        subjects = [ensure_subject(ring, ring.pseudonym(f"subject-{i}"), now) for i in range(5)]
        rows = [
            event(subjects[i % 5], "view", f"{prefix}-{i}", now - timedelta(days=200))
            for i in range(expired)
        ]
        rows += [
            event(subjects[i % 5], "view", f"fresh-{prefix}-{i}", now - timedelta(days=1))
            for i in range(fresh)
        ]
        insert_events(rows)


def snapshot(app: Flask) -> Snapshot:
    """Everything a purge writes but its lease: events left, runs, audit entries (read on a
    connection of its own, so also while the test holds a write transaction open)."""
    queries = {
        "events": "SELECT id FROM event ORDER BY id",
        "runs": "SELECT * FROM purge_run ORDER BY id",
        "audit": "SELECT * FROM audit_entry ORDER BY seq",
    }
    with raw(app.config) as db:
        return {
            name: [tuple(r) for r in db.execute(sql).fetchall()] for name, sql in queries.items()
        }


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Poll `check` every millisecond until it holds."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def batch_committed(app: Flask) -> bool:
    """Whether a running purge has committed at least one batch."""
    with raw(app.config) as db:
        row = db.execute("SELECT progress FROM purge_run WHERE status = 'running'").fetchone()
    return row is not None and row[0] != "{}"


# -- in process --------------------------------------------------------------------------------


def purge_in_thread(
    app: Flask, policies: PolicySet, failures: list[BaseException]
) -> threading.Thread:
    """A purge in batches of 5, in its own thread; what it raises goes to `failures`."""

    def work() -> None:
        with app.app_context(), database.connection_context():
            try:
                purge_expired(policies, datetime.now(UTC), actor="test", batch_size=5)
            except BaseException as exc:
                failures.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def with_many_purposes(policies: PolicySet, count: int) -> PolicySet:
    """The same policies with `count` more purposes (copies of the first). After its event
    batches a run counts each purpose's expired consents: this gives it a while between its
    last batch and its finish."""
    model = next(iter(policies.purposes.values()))
    copies = {f"copy-{i}": replace(model, id=f"copy-{i}") for i in range(count)}
    return replace(policies, purposes={**policies.purposes, **copies})


def take_over_expired_lease(app: Flask) -> Snapshot:
    """As after a long pause of the purge: its lease expires and another purger takes it, in one
    write transaction, so between two of its own; returns what the purge had written by then.
    The new lease expires at once, so that the next purge may take it over in turn."""
    now = datetime.now(UTC)
    with app.app_context(), database.connection_context(), write_transaction():
        Lease.update(expires_at=now - timedelta(seconds=1)).where(Lease.name == LEASE).execute()
        assert acquire(LEASE, OTHER_HOST, ttl=timedelta(0), now=now)
        return snapshot(app)


# when the lease is lost: expired events, purposes added, the moment to take the lease over
LOST_AT = {
    "between_batches": (2_000, 0, batch_committed),
    "after_the_last_batch": (200, 300, lambda app: expired_left(app) == 0),
}


@pytest.mark.parametrize(
    ("expired", "purposes", "moment"), list(LOST_AT.values()), ids=list(LOST_AT)
)
def test_a_purge_whose_lease_is_taken_over_writes_nothing_more(
    make_app: Any, expired: int, purposes: int, moment: Callable[[Flask], bool]
) -> None:
    app = make_app()
    seed(app, expired=expired, fresh=50)
    policies = with_many_purposes(app.extensions["gateway.policies"], purposes)
    failures: list[BaseException] = []
    thread = purge_in_thread(app, policies, failures)
    try:
        wait_for(lambda: moment(app), "the moment to take the lease over")
        after_takeover = take_over_expired_lease(app)
    finally:
        thread.join(timeout=DEADLINE)
    assert not thread.is_alive()

    assert [type(f) for f in failures] == [LeaseLost], failures
    assert snapshot(app) == after_takeover
    assert leases(app) == [(LEASE, OTHER_HOST)]
    (run,) = runs(app)
    assert (run.status, run.finished_at) == ("running", None)
    deleted = expired - expired_left(app)
    assert deleted > 0
    assert run.progress == f'{{"events:browsing": {deleted}}}'
    assert [e for e in audit_entries(app) if e["action"] == "purge"] == []

    # The next purge takes the lease over, closes the cut-off run and finishes the job.
    with app.app_context(), database.connection_context():
        purge_expired(app.extensions["gateway.policies"], datetime.now(UTC), actor="test")
    assert [(r.id, r.status) for r in runs(app)] == [
        (run.id, "interrupted"),
        (run.id + 1, "finished"),
    ]
    rest = {"events:browsing": expired - deleted} if deleted < expired else {}
    outcomes = [(e["outcome"], e["fields"]["deleted"]) for e in audit_entries(app)[-2:]]
    assert outcomes == [("interrupted", {"events:browsing": deleted}), ("finished", rest)]
    assert expired_left(app) == 0
    assert verify_audit(app).ok


# -- real processes ----------------------------------------------------------------------------

EXPIRED, BATCH, LEASE_SECONDS = 20_000, 200, 1
LOST = "the purge lost its lease to another purge and stopped; the next run finishes the job"


def writer_lock_free(app: Flask) -> bool:
    """Whether no transaction holds the writers' lock (SQLite's write lock; on PostgreSQL the
    writers' advisory lock), tried without waiting."""
    with raw(app.config) as db:
        if db.postgres:
            sql = "SELECT pg_try_advisory_xact_lock(?, hashtext(current_schema()))"
            return bool(db.execute(sql, [WRITER_LOCK]).fetchone()[0])
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        return True


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rpartition(")")[2].split()[0] == "T"


def pause_between_batches(app: Flask, process: subprocess.Popen[bytes]) -> None:
    """SIGSTOP the purge at a moment when it holds no write transaction open."""
    deadline = time.monotonic() + DEADLINE
    while True:
        assert process.poll() is None, process.communicate()
        os.kill(process.pid, signal.SIGSTOP)
        wait_for(lambda: stopped(process.pid), "the purge to stop")
        if writer_lock_free(app):
            return
        assert time.monotonic() < deadline, "the purge never paused between batches"
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.002)


def lease_expired(app: Flask) -> bool:
    with app.app_context(), database.connection_context():
        lease = Lease.get_or_none(Lease.name == LEASE)
        return lease is not None and lease.expires_at < datetime.now(UTC)


def test_a_purge_paused_past_its_lease_stops_when_resumed_and_writes_nothing(
    make_app: Any,
) -> None:
    app = make_app()
    seed(app, expired=EXPIRED, fresh=500)
    environment = gateway_environment(
        app, PURGE_BATCH_SIZE=str(BATCH), PURGE_LEASE_SECONDS=str(LEASE_SECONDS)
    )
    first = subprocess.Popen(
        [str(GATEWAY), "purge"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: batch_committed(app), "a first batch")
        pause_between_batches(app, first)
        paused_after = EXPIRED - expired_left(app)
        wait_for(lambda: lease_expired(app), "the lease to expire")
        second = subprocess.run(
            [str(GATEWAY), "purge"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines()[-1] == f"total deleted: {EXPIRED - paused_after}"
        # Rows the first purge would delete, had it gone on.
        seed(app, expired=BATCH * 3, fresh=0, prefix="late")
        before_resuming = snapshot(app)
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=DEADLINE)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.communicate(timeout=DEADLINE)

    assert snapshot(app) == before_resuming
    assert leases(app) == []
    assert (first.returncode, out) == (1, b""), err
    assert err.decode().splitlines() == [f"Error: {LOST}"]
    cut_off, finished = runs(app)
    assert (cut_off.status, finished.status) == ("interrupted", "finished")
    entries = [e for e in audit_entries(app) if e["action"] == "purge"]
    assert [(e["outcome"], e["fields"]["run"]) for e in entries] == [
        ("interrupted", cut_off.id),
        ("finished", finished.id),
    ]
    assert entries[0]["fields"]["deleted"] == {"events:browsing": paused_after}
    assert verify_audit(app).ok
