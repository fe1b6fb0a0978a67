"""The sequencer: pending audit entries reach the chain whole, in order, exactly once.

A write transaction stores its audit entry as a pending row (`write_pending`, with an HMAC under
a key of the keyring) and the sequencer chains pending rows in id order, batch by batch. Pending
rows are made here with the real `write_pending` inside a real `write_transaction()`, so the
sequencer runs on both backends (on SQLite requests chain their own entries at once, after
whatever is pending). The tests check:

- an untouched pending entry is chained as itself (content and entry id), in id order, with the
  checkpoints that fall due;
- a pending entry edited behind the gateway's back is named by verification while it waits
  (HTTP and CLI), and is then chained as an `audit.rejected` entry (mac_mismatch) keeping what
  was stored, which verification names by its seq; a copy of a pending row re-inserted after
  its original was chained becomes an `audit.rejected` entry (already_chained) the same way;
- a decision or consent change whose audit entry cannot be stored answers 503 problem+json and
  stores nothing: `audit_unavailable` when the insert is refused (a trigger raising),
  `database_unavailable` when the COMMIT fails (a deferred constraint), as for erasures;
- a sequencer process killed with SIGKILL after chaining a batch, before its commit, leaves the
  batch pending and nothing half-chained; the next drain chains every entry exactly once;
- thousands of audited requests through a real multi-worker server are each chained exactly
  once, seqs 1..N without gaps, and the chain verifies;
- a copy of a chained entry is named by verification while it is still pending, and two
  pending rows whose ids are swapped (their order in the chain) do not verify.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from gateway import keyring
from gateway.audit import checkpoint_every, seal_now, verify_database
from gateway.audit.chain import PENDING_FIELDS, Action, AuditRecord
from gateway.audit.sequencer import BATCH, drain, write_pending
from gateway.audit.verification import Verification
from gateway.store.db import database, write_transaction
from tests.audit import register_callers
from tests.audit.chain.test_tampering import verify
from tests.conftest import Caller, gateway_environment, running_server
from tests.stores import Raw, raw

EVERY = 5  # a required checkpoint every 5 entries: chaining a few entries signs some
NOTICE = {"source": "cookie_banner", "notice_version": "2026-05"}
CANDIDATES = [{"id": "b-1", "category": "books"}, {"id": "s-1", "category": "shoes"}]

Json = dict[str, Any]


@pytest.fixture
def app(make_app: Any, documents: tuple[Path, Path]) -> Flask:
    """A fresh instance whose registrations stay active whatever today's date."""
    keep_registrations_active(documents[1])
    return make_app(AUDIT_CHECKPOINT_EVERY=EVERY)


def keep_registrations_active(registry: Path) -> None:
    """Move every review date of the test's copy of the registry far ahead, so that decisions
    with consent are `allow` in the test process and in the servers it starts alike."""
    path = registry / "databases.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    for registration in document["databases"].values():
        registration["review_by"] = "2099-12-31"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


@pytest.fixture
def callers(app: Flask) -> dict[str, Caller]:
    return register_callers(app)


# --- pending rows, the chain, verification ----------------------------------------------------


def decision(n: int, outcome: str = "fallback") -> AuditRecord:
    """A decision entry as /v1/personalize would write it (distinct per n)."""
    return AuditRecord(
        actor="shop",
        action=Action.DECISION,
        policy_hash="0" * 64,
        subject=f"pseudonym-{n}",
        purpose="recommendations",
        outcome=outcome,
        reasons=["no_consent"] if outcome != "allow" else ["consent_granted"],
        fields={"used": [], "dropped": [], "n": n},
        request_id=f"request-{n}",
        decision_id=str(uuid.uuid4()),
    )


def write_pending_entries(app: Flask, records: list[AuditRecord]) -> list[str]:
    """Store `records` as pending entries in one write transaction, with the real
    `write_pending`, leaving them unchained; returns their entry ids."""
    with app.app_context(), database.connection_context(), write_transaction():
        ring, every, now = keyring(), checkpoint_every(), datetime.now(UTC)
        return [write_pending(r, now, ring, every, drain_after=False) for r in records]


def drain_all(app: Flask) -> None:
    """What the sealer does first: chain everything pending, waiting for the lock."""
    with app.app_context(), database.connection_context():
        drain(keyring(), checkpoint_every(), rounds=1000, wait=True)


def pending_rows(app: Flask) -> list[Json]:
    with raw(app.config) as db:
        rows = db.execute("SELECT * FROM audit_pending ORDER BY id").fetchall()
        return [dict(zip(row.keys(), row, strict=True)) for row in rows]


def chained(app: Flask, after: int = 0) -> list[Json]:
    """Stored entries after seq `after`, in seq order, as stored (JSON columns as text)."""
    with raw(app.config) as db:
        rows = db.execute("SELECT * FROM audit_entry WHERE seq > ? ORDER BY seq", (after,))
        return [dict(zip(row.keys(), row, strict=True)) for row in rows.fetchall()]


def head(app: Flask) -> int:
    with raw(app.config) as db:
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_entry").fetchone()[0])


def content(row: Json) -> Json:
    """The columns an entry carries from its pending row to the chain."""
    return {name: row[name] for name in PENDING_FIELDS}


def verify_from(app: Flask, first_seq: int, anchor: str) -> Verification:
    with app.app_context(), database.connection_context():
        return verify_database(first_seq=first_seq, anchor=anchor)


def some_history(callers: dict[str, Caller]) -> None:
    """A few real requests, each appending one entry: the chain does not start empty."""
    shop = callers["shop"]
    path = "/v1/subjects/alice/consents/recommendations"
    assert shop.put(path, {"granted": True, **NOTICE}).status_code == 200
    body = {"subject_id": "alice", "purpose": "recommendations", "candidates": CANDIDATES}
    assert shop.post("/v1/personalize", body).status_code == 200


def test_untouched_pending_entries_are_chained_as_themselves_in_order(
    app: Flask, callers: dict[str, Caller], runner: Any
) -> None:
    some_history(callers)
    before = head(app)
    ids = write_pending_entries(app, [decision(n) for n in range(12)])
    stored = pending_rows(app)
    assert [row["entry_id"] for row in stored] == ids
    assert chained(app, before) == []  # pending, not chained: no request has run since

    # The next request chains them before its own entry (SQLite: in its transaction; PostgreSQL:
    # after its commit, in id order).
    path = "/v1/subjects/bob/consents/recommendations"
    assert callers["shop"].put(path, {"granted": True, **NOTICE}).status_code == 200

    assert pending_rows(app) == []
    found = chained(app, before)
    assert [e["seq"] for e in found] == list(range(before + 1, before + 14))
    assert [content(e) for e in found[:12]] == [content(row) for row in stored]
    assert (found[12]["action"], found[12]["purpose"]) == ("consent.grant", "recommendations")
    assert found[12]["entry_id"] not in ids
    assert all(e["scheme"] == 2 for e in found)
    with raw(app.config) as db:
        signed = [r[0] for r in db.execute("SELECT seq FROM audit_checkpoint ORDER BY seq")]
    assert signed == list(range(EVERY, before + 14, EVERY))
    report = verify(callers["auditor"], runner)
    assert (report["ok"], report["last_seq"]) == (True, before + 13), report


def edit_column(column: str, value: str) -> Any:
    def edit(db: Raw, row: Json) -> None:
        db.execute(f"UPDATE audit_pending SET {column} = ? WHERE id = ?", (value, row["id"]))

    return edit


def mac_of_another(db: Raw, row: Json) -> None:
    """Give the row the (valid) HMAC of another pending entry."""
    query = "SELECT mac FROM audit_pending WHERE id <> ? ORDER BY id LIMIT 1"
    (other,) = db.execute(query, (row["id"],)).fetchone()
    db.execute("UPDATE audit_pending SET mac = ? WHERE id = ?", (other, row["id"]))


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(edit_column("outcome", "allow"), id="outcome"),
        pytest.param(edit_column("subject", "pseudonym-someone-else"), id="subject"),
        pytest.param(edit_column("fields", '{"used": ["forged"]}'), id="fields"),
        pytest.param(edit_column("at", "2026-01-01T00:00:00.000000+00:00"), id="at"),
        pytest.param(mac_of_another, id="mac"),
    ],
)
def test_a_pending_entry_edited_before_it_is_chained_is_named_then_chained_as_rejected(
    app: Flask, callers: dict[str, Caller], runner: Any, edit: Any
) -> None:
    some_history(callers)
    before = head(app)
    first, target, last = write_pending_entries(app, [decision(n) for n in range(3)])
    original = {row["entry_id"]: row for row in pending_rows(app)}
    with raw(app.config) as db:
        edit(db, original[target])
    [edited] = [row for row in pending_rows(app) if row["entry_id"] == target]
    assert edited != original[target]

    # While it waits, verification names it (the chain itself is sound).
    waiting = verify(callers["auditor"], runner)
    assert (waiting["ok"], waiting["first_bad_seq"]) == (False, None), waiting
    assert f"pending entry {target} (id {edited['id']})" in waiting["problem"]
    assert "its HMAC does not verify" in waiting["problem"]

    drain_all(app)

    assert pending_rows(app) == []
    found = chained(app, before)
    assert [e["seq"] for e in found] == [before + 1, before + 2, before + 3]
    assert content(found[0]) == content(original[first])
    assert content(found[2]) == content(original[last])
    rejected = found[1]
    assert {k: rejected[k] for k in ("actor", "action", "outcome", "subject", "purpose")} == {
        "actor": "gateway",
        "action": "audit.rejected",
        "outcome": "mac_mismatch",
        "subject": None,
        "purpose": None,
    }
    assert json.loads(rejected["reasons"]) == ["mac_mismatch"]
    assert json.loads(rejected["fields"]) == {"pending_id": edited["id"], "stored": content(edited)}
    assert (rejected["request_id"], rejected["decision_id"]) == (None, None)
    assert rejected["policy_hash"] == edited["policy_hash"]
    assert rejected["entry_id"] not in (first, target, last)
    assert target not in [e["entry_id"] for e in chained(app)]

    report = verify(callers["auditor"], runner)
    assert (report["ok"], report["first_bad_seq"]) == (False, before + 2), report
    assert report["problem"] == (
        f"pending entry {target} was edited before it was chained: its HMAC does not verify"
    )
    # The rejection is the only problem: the chain after it links and verifies.
    after = verify_from(app, before + 3, rejected["hash"])
    assert (after.ok, after.entries, after.problem) == (True, 1, None)


def replay(app: Flask, row: Json) -> None:
    """Insert a copy of a pending row exactly as it was stored, row id and HMAC included (its
    original must no longer be pending)."""
    copy = {name: row[name] for name in ("id", *PENDING_FIELDS, "mac")}
    values = ", ".join(f":{name}" for name in copy)
    with raw(app.config) as db:
        db.execute(f"INSERT INTO audit_pending ({', '.join(copy)}) VALUES ({values})", copy)


def test_a_copy_of_a_chained_pending_entry_is_chained_as_rejected(
    app: Flask, callers: dict[str, Caller], runner: Any
) -> None:
    some_history(callers)
    [entry_id] = write_pending_entries(app, [decision(1, outcome="allow")])
    [row] = pending_rows(app)
    drain_all(app)
    original = head(app)
    assert content(chained(app, original - 1)[0]) == content(row)
    assert verify(callers["auditor"], runner)["ok"] is True

    replay(app, row)
    assert pending_rows(app) == [row]

    drain_all(app)

    assert pending_rows(app) == []
    [rejected] = chained(app, original)
    assert (rejected["action"], rejected["outcome"]) == ("audit.rejected", "already_chained")
    assert json.loads(rejected["reasons"]) == ["already_chained"]
    assert json.loads(rejected["fields"]) == {"pending_id": row["id"], "stored": content(row)}
    assert [e["entry_id"] for e in chained(app)].count(entry_id) == 1
    report = verify(callers["auditor"], runner)
    assert (report["ok"], report["first_bad_seq"]) == (False, original + 1), report
    assert report["problem"] == (
        f"pending entry {entry_id} was chained already: a copy was written to the pending entries"
    )


# --- a copy or a reordering, while pending ---------------------------------------------------


def test_verification_names_a_copy_of_a_chained_entry_while_it_waits(
    app: Flask, callers: dict[str, Caller], runner: Any
) -> None:
    """A replayed pending row (a copy of an entry already chained, its HMAC intact) is named by
    verification while it waits, as an edited one is, not only once the sequencer has chained
    it as `audit.rejected`: the database holds a forged entry either way."""
    some_history(callers)
    [entry_id] = write_pending_entries(app, [decision(1, outcome="allow")])
    [row] = pending_rows(app)
    drain_all(app)
    assert verify(callers["auditor"], runner)["ok"] is True
    replay(app, row)

    report = verify(callers["auditor"], runner)

    assert report["ok"] is False, report
    assert f"pending entry {entry_id}" in report["problem"]


def swap_ids(app: Flask, first: Json, second: Json) -> None:
    with raw(app.config) as db:
        for old, new in ((first["id"], -1), (second["id"], first["id"]), (-1, second["id"])):
            db.execute("UPDATE audit_pending SET id = ? WHERE id = ?", (new, old))


def test_pending_entries_reordered_behind_the_gateway_do_not_verify(
    app: Flask, callers: dict[str, Caller], runner: Any
) -> None:
    """Swapping the row ids of two pending entries (a decision that allowed, then the
    withdrawal that came after it) must not yield a log that verifies with the two in the
    other order, which would show a decision allowed after the withdrawal forbidding it. The
    sequencer chains in id order, so the id must be under the HMAC."""
    some_history(callers)
    before = head(app)
    allowed = write_pending_entries(app, [decision(1, outcome="allow")])
    withdrawal = AuditRecord(
        actor="shop",
        action=Action.CONSENT_WITHDRAW,
        policy_hash="0" * 64,
        subject="pseudonym-1",
        purpose="recommendations",
        outcome="recorded",
    )
    withdrawn = write_pending_entries(app, [withdrawal])
    first, second = pending_rows(app)
    swap_ids(app, first, second)

    waiting = verify(callers["auditor"], runner)
    drain_all(app)
    order = [e["entry_id"] for e in chained(app, before)]
    report = verify(callers["auditor"], runner)

    assert order == allowed + withdrawn or not report["ok"], (
        "chained in the swapped order, and the chain verifies",
        waiting,
        report,
    )


# --- fail closed ------------------------------------------------------------------------------

# Two ways an audit entry cannot be stored, on the backend under test, for both audit tables
# (SQLite chains a request's entry into audit_entry at once; PostgreSQL writes it to
# audit_pending): the insert itself is refused (a trigger raising, as a full disk or a lost
# replica would), or every statement succeeds and the COMMIT fails (SQLite: a row breaking a
# deferred foreign key; PostgreSQL: a deferred constraint trigger that raises).
AUDIT_TABLES = ("audit_entry", "audit_pending")
FAULTS: dict[str, dict[str, list[str]]] = {
    "insert": {
        "sqlite": [
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
            for table in AUDIT_TABLES
        ],
        "postgresql": [
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            *(
                f"CREATE TRIGGER refuse BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
                for table in AUDIT_TABLES
            ),
        ],
    },
    "commit": {
        "sqlite": [
            "CREATE TABLE commit_fault (subject_id INTEGER"
            " REFERENCES subject (id) DEFERRABLE INITIALLY DEFERRED)",
            *(
                f"CREATE TRIGGER commit_fault_{table} AFTER INSERT ON {table}"
                " BEGIN INSERT INTO commit_fault VALUES (-1); END"
                for table in AUDIT_TABLES
            ),
        ],
        "postgresql": [
            "CREATE FUNCTION commit_fault() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'fault at commit'; END $$",
            *(
                f"CREATE CONSTRAINT TRIGGER commit_fault AFTER INSERT ON {table}"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION commit_fault()"
                for table in AUDIT_TABLES
            ),
        ],
    },
}
REPAIRS: dict[str, dict[str, list[str]]] = {
    "insert": {
        "sqlite": [f"DROP TRIGGER refuse_{table}" for table in AUDIT_TABLES],
        "postgresql": [
            *(f"DROP TRIGGER refuse ON {table}" for table in AUDIT_TABLES),
            "DROP FUNCTION refuse()",
        ],
    },
    "commit": {
        "sqlite": [
            *(f"DROP TRIGGER commit_fault_{table}" for table in AUDIT_TABLES),
            "DROP TABLE commit_fault",
        ],
        "postgresql": [
            *(f"DROP TRIGGER commit_fault ON {table}" for table in AUDIT_TABLES),
            "DROP FUNCTION commit_fault()",
        ],
    },
}
# What the client is told: the audit entry was refused; or the COMMIT failed, which the gateway
# cannot tell from any other failed commit (as for erasures: tests/api/test_erasure_fail_closed.py).
CODES = {"insert": "audit_unavailable", "commit": "database_unavailable"}
# Every table a decision or a consent change writes to
WRITTEN = ("subject", "consent_record", "audit_entry", "audit_pending", "audit_checkpoint")


def run_sql(app: Flask, statements: dict[str, list[str]]) -> None:
    with raw(app.config) as db:
        for sql in statements["postgresql" if db.postgres else "sqlite"]:
            db.execute(sql)


@contextmanager
def audit_fault(app: Flask, fault: str) -> Iterator[None]:
    run_sql(app, FAULTS[fault])
    try:
        yield
    finally:
        run_sql(app, REPAIRS[fault])


def stored(app: Flask) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a decision or a consent change writes."""
    with raw(app.config) as db:
        return {
            table: [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()]
            for table in WRITTEN
        }


def consent_path(subject: str) -> str:
    return f"/v1/subjects/{subject}/consents/recommendations"


def personalize_alice(shop: Caller) -> Any:
    body = {"subject_id": "alice", "purpose": "recommendations", "candidates": CANDIDATES}
    return shop.post("/v1/personalize", body)


REQUESTS = {
    "personalize": personalize_alice,  # alice has consented: the decision would be `allow`
    "withdraw": lambda shop: shop.put(consent_path("alice"), {"granted": False, **NOTICE}),
    "grant-new-subject": lambda shop: shop.put(consent_path("carol"), {"granted": True, **NOTICE}),
}


@pytest.mark.parametrize("fault", ["insert", "commit"])
@pytest.mark.parametrize("kind", list(REQUESTS))
def test_nothing_is_decided_or_changed_when_the_audit_entry_cannot_be_stored(
    app: Flask, callers: dict[str, Caller], runner: Any, fault: str, kind: str
) -> None:
    shop = callers["shop"]
    some_history(callers)  # alice granted recommendations, one decision
    before = stored(app)

    with audit_fault(app, fault):
        response = REQUESTS[kind](shop)

        assert response.status_code == 503, response.get_json()
        assert response.mimetype == "application/problem+json"
        body = response.get_json()
        assert (body["status"], body["code"]) == (503, CODES[fault]), body
        assert set(body) == {"type", "title", "status", "code", "detail", "errors"}
        assert stored(app) == before

    # Nothing of it happened: alice's consent stands, carol is unknown, the chain verifies.
    states = {
        subject: shop.get(consent_path(subject)).get_json()["state"]
        for subject in ("alice", "carol")
    }
    assert states == {"alice": "granted", "carol": "never_asked"}
    assert verify(callers["auditor"], runner)["ok"] is True
    # ... and the same request succeeds once the audit can be written again.
    retried = REQUESTS[kind](shop)
    assert retried.status_code == 200, retried.get_json()
    assert len(chained(app)) == len(before["audit_entry"]) + 1


# --- crash safety -----------------------------------------------------------------------------

# A sequencer in a process of its own, using the gateway's own functions: it chains one batch
# and commits it, then takes the lock again, chains the next batch (entries and checkpoints
# written, pending rows deleted) and is killed with SIGKILL before that transaction commits.
KILLED_SEQUENCER = """
import os, signal
from datetime import UTC, datetime

from gateway import create_app, keyring
from gateway.audit import checkpoint_every
from gateway.audit.sequencer import SEQUENCER_LOCK, _sequence_batch, chain_head, sequence
from gateway.store.db import database, try_lock, write_transaction

app = create_app()
with app.app_context(), database.connection_context():
    ring, every = keyring(), checkpoint_every()
    print("committed", sequence(ring, every, wait=True), chain_head()[0], flush=True)
    with write_transaction(serialize=False):
        assert try_lock(SEQUENCER_LOCK, wait=True)
        chained = _sequence_batch(ring, every, datetime.now(UTC))
        print("uncommitted", chained, chain_head()[0], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
print("not killed", flush=True)
"""
PENDING = 2 * BATCH + 150  # the killed process commits one batch and chains a second


def checkpoint_seqs(app: Flask) -> list[int]:
    with raw(app.config) as db:
        return [r[0] for r in db.execute("SELECT seq FROM audit_checkpoint ORDER BY seq")]


def test_a_sequencer_killed_before_its_commit_leaves_its_batch_pending(
    app: Flask, callers: dict[str, Caller], runner: Any
) -> None:
    some_history(callers)
    base = head(app)
    ids = write_pending_entries(app, [decision(n) for n in range(PENDING)])
    rows = pending_rows(app)

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SEQUENCER],
        env=gateway_environment(app, AUDIT_CHECKPOINT_EVERY=str(EVERY)),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout.split("\n") == [
        f"committed {BATCH} {base + BATCH}",
        f"uncommitted {BATCH} {base + 2 * BATCH}",  # it had chained the second batch
        "",
    ], killed.stderr
    # Only the committed batch is chained, with its checkpoints; the rest is pending, untouched.
    assert [content(e) for e in chained(app, base)] == [content(r) for r in rows[:BATCH]]
    assert pending_rows(app) == rows[BATCH:]
    assert max(checkpoint_seqs(app)) <= base + BATCH
    report = verify(callers["auditor"], runner)
    assert (report["ok"], report["last_seq"]) == (True, base + BATCH), report

    drain_all(app)

    assert pending_rows(app) == []
    found = chained(app, base)
    assert [e["seq"] for e in found] == list(range(base + 1, base + PENDING + 1))
    assert [e["entry_id"] for e in found] == ids  # each exactly once, in id order
    assert [content(e) for e in found] == [content(r) for r in rows]
    assert checkpoint_seqs(app) == list(range(EVERY, base + PENDING + 1, EVERY))
    report = verify(callers["auditor"], runner)
    assert (report["ok"], report["last_seq"]) == (True, base + PENDING), report


# --- thousands of concurrent appends ----------------------------------------------------------

WORKERS = 3
THREADS = 8
REQUESTS_PER_THREAD = 256  # 2,048 audited requests in all
LOAD_SUBJECTS = [f"load-{n}" for n in range(16)]


def call(
    base: str, key: str, method: str, path: str, body: Any = None, request_id: str = ""
) -> tuple[int, Any]:
    """One real HTTP request; returns (status, JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if request_id:
        request.add_header("X-Request-Id", request_id)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def load_request(thread: int, n: int) -> tuple[str, str, str, Json]:
    """The n-th request of a thread: (request id, method, path, body). One in four changes a
    consent (grant and withdraw in turn), the others are decisions; subjects are shared."""
    subject = LOAD_SUBJECTS[(thread * 7 + n) % len(LOAD_SUBJECTS)]
    request_id = f"load-{thread}-{n}"
    if n % 4 == 0:
        body = {"granted": (n // 4) % 2 == 0, **NOTICE}
        return request_id, "PUT", consent_path(subject), body
    body = {"subject_id": subject, "purpose": "recommendations", "candidates": CANDIDATES}
    return request_id, "POST", "/v1/personalize", body


def test_thousands_of_concurrent_appends_are_each_chained_exactly_once(
    app: Flask, callers: dict[str, Caller]
) -> None:
    key = callers["shop"].key
    env = gateway_environment(
        app, RATELIMIT_DEFAULT="1000000 per minute", AUDIT_CHECKPOINT_EVERY=str(EVERY)
    )
    answers: dict[str, tuple[str, int, Json]] = {}  # request id -> (method, status, body)
    lock = threading.Lock()

    def client(thread: int) -> None:
        for n in range(REQUESTS_PER_THREAD):
            request_id, method, path, body = load_request(thread, n)
            status, answer = call(base, key, method, path, body, request_id)
            with lock:
                answers[request_id] = (method, status, answer)

    started = time.monotonic()
    with running_server(app, WORKERS, env) as (base, _process):
        threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(thread.is_alive() for thread in threads)
        # Sealed while the workers' own sealers still run: it waits for the sequencer lock.
        with app.app_context(), database.connection_context():
            seal_now(wait=True)
            assert pending_rows(app) == []
    elapsed = time.monotonic() - started

    assert len(answers) == THREADS * REQUESTS_PER_THREAD
    statuses = Counter((method, status) for method, status, _ in answers.values())
    # a decision on a consent that kept changing is refused (409) rather than made: no entry
    assert set(statuses) <= {("POST", 200), ("PUT", 200), ("POST", 409)}, statuses
    refused = {r for r, (_, status, _) in answers.items() if status == 409}
    assert {answers[r][2]["code"] for r in refused} <= {"consent_changing"}
    assert statuses[("POST", 200)] >= 1000 and statuses[("PUT", 200)] == len(answers) // 4

    log = chained(app)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    assert len({e["entry_id"] for e in log}) == len(log)
    by_request = Counter(e["request_id"] for e in log if e["request_id"] in answers)
    assert set(by_request) == set(answers) - refused
    assert set(by_request.values()) == {1}
    for e in log:
        if e["request_id"] not in answers:
            continue
        method, _, answer = answers[e["request_id"]]
        if method == "POST":
            assert (e["action"], e["decision_id"]) == ("decision", answer["decision_id"])
            assert e["outcome"] == answer["outcome"]
        else:
            granted = "consent.grant" if answer["granted"] else "consent.withdraw"
            assert (e["action"], json.loads(e["fields"])["receipt_id"]) == (
                granted,
                answer["receipt"]["payload"]["receipt_id"],
            )
    with app.app_context(), database.connection_context():
        result = verify_database()
    assert (result.ok, result.entries, result.problem) == (True, len(log), None)
    assert result.checkpoints >= len(log) // EVERY
    assert elapsed < 120, f"{len(answers)} requests took {elapsed:.0f} s"
