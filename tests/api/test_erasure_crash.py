"""Erasure killed with SIGKILL between its steps leaves a state that repeating it completes.

A real `gateway serve` process erases a subject while the test holds one database's own write
lock, so that the process stops at a known step: after the deletion and the ordering audit entry
committed, either before the key is destroyed in the keystore (the keystore's write lock held) or
after it was destroyed and before the confirmation commits (the main database's write lock held).
The process and its worker are then killed with SIGKILL. Whatever the step, the committed log
says the key is to be destroyed and no more, the order is pending, and the repeated request
destroys the key (if it is still there) and confirms it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import pytest
from flask import Flask

from gateway.store.db import WRITER_LOCK
from tests.api.test_erasure_fail_closed import (
    DELETED,
    assert_completed_by,
    entries_after,
    erase_erin,
    erin_key,
    erin_pseudonym,
    last_seq,
    pending_destructions,
    seed_erin,
)
from tests.conftest import Caller, running_server, verify_audit
from tests.stores import Raw, raw

DEADLINE = 30.0  # seconds for any one wait on the server


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def write_lock(app: Flask, store: str) -> Iterator[Raw]:
    """Hold the write lock of the app's main database or keystore until the block ends, as
    another writer would: SQLite's file lock; on PostgreSQL the gateway's advisory writer lock
    (main) or an EXCLUSIVE lock on the key table, which lets reads through (keystore)."""
    with raw(app.config, store) as db:
        if not db.postgres:
            db.connection.isolation_level = None  # BEGIN IMMEDIATE by hand, COMMIT on exit
            db.execute("BEGIN IMMEDIATE")
        elif store == "DATABASE_URL":
            db.execute("SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))", [WRITER_LOCK])
        else:
            db.execute("LOCK TABLE subject_key IN EXCLUSIVE MODE")
        yield db
        if not db.postgres:
            db.execute("COMMIT")


def end_orphans(lock: Raw) -> None:
    """On PostgreSQL, end the sessions of a killed process that wait for `lock`.

    The server does not notice a dead client while its statement waits for a lock, and would
    run the statement once the lock is free; the dead process's sessions end here instead, as
    they would have had the process died before sending it. SQLite needs nothing: the waiting
    was in the process.
    """
    if lock.postgres:
        lock.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )


def dead(pid: int) -> bool:
    """Whether a process no longer runs: gone, or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def kill_server(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the gunicorn master (so it starts no new worker), then its workers, which serve
    the request; return once none of them runs."""
    workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    process.kill()
    process.wait(timeout=DEADLINE)
    for pid in map(int, workers):
        os.kill(pid, signal.SIGKILL)
        wait_for(partial(dead, pid), f"worker {pid} to die")


def send_erasure(base: str, key: str) -> None:
    """DELETE erin on the server from a thread of its own: it will never be answered."""

    def send() -> None:
        request = urllib.request.Request(
            f"{base}/v1/subjects/erin", method="DELETE", headers={"Authorization": f"Bearer {key}"}
        )
        try:
            urllib.request.urlopen(request, timeout=DEADLINE).close()
        except OSError:
            pass  # the server was killed mid-request

    threading.Thread(target=send, daemon=True).start()


def crash_erasure(app: Flask, admin: Caller, after_destroying: bool) -> int:
    """Kill a served erasure of erin once its first transaction committed, before the key is
    destroyed or (`after_destroying`) after it was and before the confirmation commits; returns
    the last audit seq before the erasure (the server's start may append a policy.load)."""
    # Two stacks: the main database's lock is taken before the keystore's is released.
    with running_server(app, workers=1) as (base, process), ExitStack() as main_held:
        since = last_seq(app)
        with ExitStack() as keystore_held:
            keys = keystore_held.enter_context(write_lock(app, "KEYSTORE_URL"))
            send_erasure(base, admin.key)
            wait_for(lambda: bool(pending_destructions(app)), "the order to destroy the key")
            if not after_destroying:
                kill_server(process)
                end_orphans(keys)
                return since
            main = main_held.enter_context(write_lock(app, "DATABASE_URL"))
        wait_for(lambda: erin_key(app) is None, "the key's destruction")
        kill_server(process)
        end_orphans(main)
    return since


@pytest.mark.parametrize("after_destroying", [False, True], ids=["key_ordered", "key_destroyed"])
def test_an_erasure_killed_between_its_steps_is_completed_by_repeating_it(
    app: Flask, admin: Caller, after_destroying: bool
) -> None:
    seed_erin(admin)

    since = crash_erasure(app, admin, after_destroying)

    # Committed: the data's deletion and the entry ordering the key's destruction, nothing more.
    [(action, subject, outcome, fields)] = entries_after(app, since)
    assert (action, subject, outcome) == ("subject.erase", erin_pseudonym(app), "erased")
    assert fields == {"deleted": DELETED, "key": "destroy_pending"}
    assert pending_destructions(app) == [(erin_pseudonym(app), since + 1)]
    assert (erin_key(app) is None) is after_destroying
    assert verify_audit(app).ok

    retried = erase_erin(admin)

    assert_completed_by(app, retried, since + 1, since + 1)


def test_data_collected_before_a_pending_destruction_finishes_gets_a_fresh_key(
    app: Flask, admin: Caller
) -> None:
    seed_erin(admin)
    ordered_key = erin_key(app)
    since = crash_erasure(app, admin, after_destroying=False)
    pseudonym = erin_pseudonym(app)
    assert (erin_key(app), pending_destructions(app)) == (ordered_key, [(pseudonym, since + 1)])

    body = {"database": "crm", "attributes": {"email": "erin.new@example.org"}}
    assert admin.patch("/v1/subjects/erin/attributes", body).status_code == 200

    # The ordered key was destroyed, not reused: the new data has a key of its own.
    fresh_key = erin_key(app)
    assert fresh_key is not None and fresh_key != ordered_key
    assert pending_destructions(app) == [(pseudonym, since + 1)]
    seq = last_seq(app)

    # Any later erasure finishes the pending order: it confirms the ordered key's destruction
    # and leaves the fresh key, and with it the new data, alone.
    other = admin.request("DELETE", "/v1/subjects/someone-else")

    assert other.status_code == 200
    assert entries_after(app, seq)[1:] == [
        ("subject.erase", pseudonym, "key_destroyed", {"key": "destroyed", "ordered_by": since + 1})
    ]
    assert (erin_key(app), pending_destructions(app)) == (fresh_key, [])
    export = admin.get("/v1/subjects/erin/export").get_json()
    assert [(a["name"], a["value"]) for a in export["attributes"]] == [
        ("email", "erin.new@example.org")
    ]
    assert verify_audit(app).ok
