"""Tampering with the stored audit log is named at the exact seq, over HTTP and by the CLI.

Each test writes a real chain through the API (a checkpoint every 5 entries), then edits the
stored rows directly (SQLite or PostgreSQL), the way someone with access to the database but not
the signing key could.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gateway import keyring
from gateway.audit.chain import GENESIS, body_hash, checkpoint_payload
from gateway.crypto import verify_signature
from tests.audit import (
    CALENDAR,
    build_history,
    checkpoints,
    entries,
    entry,
    register_callers,
)
from tests.conftest import Caller
from tests.stores import Raw, raw

EVERY = 5
TOTAL = 25  # the last entry carries a checkpoint too
CHECKPOINTS = [5, 10, 15, 20, 25]
FIRST, MIDDLE, LAST = 1, 12, TOTAL

Json = dict[str, Any]
Tamper = Callable[[Raw], None]


@pytest.fixture
def chain(app: Flask) -> Flask:
    """The copied chain of TOTAL entries, written through the API; returns its app."""
    assert [e["seq"] for e in entries(app)] == list(range(1, TOTAL + 1))
    assert [c["seq"] for c in checkpoints(app)] == CHECKPOINTS
    return app


def verify(auditor: Caller, runner: Any) -> Json:
    """`GET /v1/audit/verify` and `gateway audit verify` must agree; returns the report."""
    response = auditor.get("/v1/audit/verify")
    assert response.status_code == 200, response.get_json()
    report: Json = response.get_json()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == (0 if report["ok"] else 1), result.output
    assert json.loads(result.stdout) == {**report, "from_seq": 1}
    return report


# --- the ways to tamper, each a plain edit of the stored rows -----------------------------------


def set_column(seq: int, column: str, value: Any) -> Tamper:
    def tamper(db: Raw) -> None:
        db.execute(f"UPDATE audit_entry SET {column} = ? WHERE seq = ?", (value, seq))

    return tamper


def as_row(body: Json) -> Json:
    return {**body, "reasons": json.dumps(body["reasons"]), "fields": json.dumps(body["fields"])}


def store(db: Raw, body: Json) -> None:
    """Write `body` over the stored entry of the same seq."""
    row = as_row(body)
    assignments = ", ".join(f"{name} = :{name}" for name in row)
    db.execute(f"UPDATE audit_entry SET {assignments} WHERE seq = :seq", row)


def edit_and_rehash(seq: int) -> Tamper:
    """Edit an entry and give it the hash of its new content."""

    def tamper(db: Raw) -> None:
        body = entry(db, seq)
        body["outcome"], body["reasons"] = "allow", ["consent_granted"]
        body["hash"] = body_hash(body)
        store(db, body)

    return tamper


def rechain_from(seq: int) -> Tamper:
    """Edit an entry, then recompute every hash and link after it: only a checkpoint tells."""

    def tamper(db: Raw) -> None:
        (last,) = db.execute("SELECT MAX(seq) FROM audit_entry").fetchone()
        previous = entry(db, seq - 1)["hash"] if seq > 1 else GENESIS
        for current in range(seq, last + 1):
            body = entry(db, current)
            if current == seq:
                body["actor"] = "someone-else"
            body["prev_hash"] = previous
            body["hash"] = previous = body_hash(body)
            store(db, body)

    return tamper


def delete(seq: int) -> Tamper:
    def tamper(db: Raw) -> None:
        assert db.execute("DELETE FROM audit_entry WHERE seq = ?", (seq,)).rowcount == 1

    return tamper


def delete_and_renumber(seq: int) -> Tamper:
    def tamper(db: Raw) -> None:
        delete(seq)(db)
        (last,) = db.execute("SELECT MAX(seq) FROM audit_entry").fetchone()
        for current in range(seq + 1, (last or 0) + 1):
            db.execute("UPDATE audit_entry SET seq = ? WHERE seq = ?", (current - 1, current))

    return tamper


def insert(seq: int) -> Tamper:
    """Move entries >= seq up by one and insert a well-formed, correctly linked forgery."""

    def tamper(db: Raw) -> None:
        (last,) = db.execute("SELECT MAX(seq) FROM audit_entry").fetchone()
        for current in range(last, seq - 1, -1):
            db.execute("UPDATE audit_entry SET seq = ? WHERE seq = ?", (current + 1, current))
        forged = entry(db, seq + 1)
        forged.update(seq=seq, actor="forger", outcome="allow", reasons=["consent_granted"])
        forged["entry_id"] = str(uuid.uuid4())  # ids are unique: a forgery needs its own
        forged["prev_hash"] = entry(db, seq - 1)["hash"] if seq > 1 else GENESIS
        forged["hash"] = body_hash(forged)
        row = as_row(forged)
        names = ", ".join(row)
        values = ", ".join(f":{name}" for name in row)
        db.execute(f"INSERT INTO audit_entry ({names}) VALUES ({values})", row)

    return tamper


def swap(first: int, second: int) -> Tamper:
    def tamper(db: Raw) -> None:
        for old, new in ((first, -1), (second, first), (-1, second)):
            db.execute("UPDATE audit_entry SET seq = ? WHERE seq = ?", (new, old))

    return tamper


def truncate_after(seq: int) -> Tamper:
    def tamper(db: Raw) -> None:
        assert db.execute("DELETE FROM audit_entry WHERE seq > ?", (seq,)).rowcount == TOTAL - seq

    return tamper


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def flip_signature(seq: int, position: int) -> Tamper:
    """Change one character of a checkpoint's signature text.

    At position 85 of the 88 characters only the top 2 of 6 bits are data: flipping the lowest
    bit leaves the decoded signature as it was, and the text must still be refused.
    """

    def tamper(db: Raw) -> None:
        query = "SELECT signature FROM audit_checkpoint WHERE seq = ?"
        (signature,) = db.execute(query, (seq,)).fetchone()
        flipped = BASE64URL[BASE64URL.index(signature[position]) ^ 1]
        signature = signature[:position] + flipped + signature[position + 1 :]
        db.execute("UPDATE audit_checkpoint SET signature = ? WHERE seq = ?", (signature, seq))

    return tamper


def set_checkpoint(seq: int, column: str, value: Any) -> Tamper:
    def tamper(db: Raw) -> None:
        chosen = entry(db, seq + 1)["hash"] if value == "the next entry's hash" else value
        db.execute(f"UPDATE audit_checkpoint SET {column} = ? WHERE seq = ?", (chosen, seq))

    return tamper


EDITED = "the entry was edited"
UNLINKED = "does not link to the entry before it"
REWRITTEN = "does not match its signed checkpoint: the chain was rewritten"
MISSING = "missing"
MOVED = "reordered or one deleted"
INSERTED = "was inserted; the entries after it renumbered"
BAD_SIGNATURE = "checkpoint signature does not verify"

CASES = [
    *[
        pytest.param(set_column(k, "outcome", "allow"), k, EDITED, id=f"edit-outcome-{k}")
        for k in (FIRST, MIDDLE, LAST)
    ],
    *[
        pytest.param(set_column(k, "reasons", '["forged"]'), k, EDITED, id=f"edit-reasons-{k}")
        for k in (FIRST, MIDDLE, LAST)
    ],
    *[
        pytest.param(set_column(MIDDLE, column, value), MIDDLE, EDITED, id=name)
        for name, column, value in [
            ("edit-actor", "actor", "someone-else"),
            ("edit-at", "at", "2026-05-31T23:00:00.000000+00:00"),
            ("edit-action", "action", "consent.grant"),
            ("edit-subject", "subject", None),
            ("edit-purpose", "purpose", "email_marketing"),
            ("edit-fields", "fields", '{"forged": true}'),
            ("edit-fields-not-json", "fields", "not json"),
            ("edit-reasons-not-json", "reasons", "[not json"),
            ("edit-policy-hash", "policy_hash", "0" * 64),
            ("edit-request-id", "request_id", "forged"),
            ("edit-prev-hash", "prev_hash", "0" * 64),
            ("edit-hash", "hash", "f" * 64),
        ]
    ],
    pytest.param(edit_and_rehash(FIRST), FIRST + 1, UNLINKED, id="rehash-first"),
    pytest.param(edit_and_rehash(MIDDLE), MIDDLE + 1, UNLINKED, id="rehash-middle"),
    pytest.param(edit_and_rehash(LAST - 1), LAST, UNLINKED, id="rehash-before-last"),
    pytest.param(edit_and_rehash(10), 10, REWRITTEN, id="rehash-checkpointed"),
    pytest.param(edit_and_rehash(LAST), LAST, REWRITTEN, id="rehash-last-checkpointed"),
    *[
        pytest.param(delete(k), k, MISSING, id=f"gap-{k}")
        for k in (FIRST, MIDDLE, 15, LAST - 1, LAST)
    ],
    *[
        pytest.param(delete_and_renumber(k), k, MOVED, id=f"delete-renumber-{k}")
        for k in (FIRST, 2, MIDDLE, 15, LAST - 1)
    ],
    pytest.param(delete_and_renumber(LAST), LAST, MISSING, id=f"delete-renumber-{LAST}"),
    *[pytest.param(insert(k), k, INSERTED, id=f"insert-{k}") for k in (FIRST, 2, MIDDLE, LAST - 1)],
    # a forgery put where a checkpoint signs the entry it displaced
    *[pytest.param(insert(k), k, REWRITTEN, id=f"insert-{k}") for k in (15, LAST)],
    *[
        pytest.param(swap(a, a + 1), a, MOVED, id=f"swap-{a}-{a + 1}")
        for a in (FIRST, MIDDLE, LAST - 1)
    ],
    *[pytest.param(swap(a, b), a, EDITED, id=f"swap-{a}-{b}") for a, b in [(3, 20), (1, LAST)]],
    *[
        pytest.param(truncate_after(m), m + 1, MISSING, id=f"truncate-after-{m}")
        for m in (0, 1, MIDDLE, 20, LAST - 1)
    ],
    *[
        pytest.param(flip_signature(c, p), c, BAD_SIGNATURE, id=f"signature-{c}-at-{p}")
        for c in (5, 15, LAST)
        for p in (0, 43, 84, 85)
    ],
    *[
        pytest.param(set_checkpoint(10, column, value), seq, BAD_SIGNATURE, id=f"cp-{column}")
        for column, value, seq in [
            ("hash", "the next entry's hash", 10),
            ("at", CALENDAR.isoformat(), 10),
            ("key_id", "0badc0de", 10),
        ]
    ],
    # the checkpoint required at 10 is gone from there (and does not sign 11)
    pytest.param(set_checkpoint(10, "seq", 11), 10, MISSING, id="cp-seq"),
    *[
        pytest.param(rechain_from(k), signed, REWRITTEN, id=f"rechain-from-{k}")
        for k, signed in [(FIRST, 5), (MIDDLE, 15), (15, 15), (21, LAST), (LAST, LAST)]
    ],
]


@pytest.mark.parametrize(("tamper", "first_bad_seq", "problem"), CASES)
def test_tampering_is_named_at_the_exact_seq(
    chain: Flask, auditor: Caller, runner: Any, tamper: Tamper, first_bad_seq: int, problem: str
) -> None:
    assert verify(auditor, runner)["ok"] is True
    with raw(chain.config) as db:
        tamper(db)

    report = verify(auditor, runner)

    assert report["ok"] is False
    assert report["first_bad_seq"] == first_bad_seq, report["problem"]
    assert problem in report["problem"]


def test_an_untouched_chain_verifies(chain: Flask, auditor: Caller, runner: Any) -> None:
    report = verify(auditor, runner)
    assert report == {
        "ok": True,
        "entries": TOTAL,
        "first_bad_seq": None,
        "problem": None,
        "checkpoints": len(CHECKPOINTS),
        "last_seq": TOTAL,
    }


@pytest.mark.parametrize("checkpoint_every", [1, 3, 7])
def test_a_checkpoint_signs_every_nth_entry(
    make_app: Any, tmp_path: Path, checkpoint_every: int
) -> None:
    home = tmp_path / "fresh"
    app = make_app(HOME=str(home), AUDIT_CHECKPOINT_EVERY=checkpoint_every)
    callers = register_callers(app)
    build_history(callers["shop"], callers["mailer"], 15)

    found = checkpoints(app)
    hashes = {e["seq"]: e["hash"] for e in entries(app)}
    assert [c["seq"] for c in found] == list(range(checkpoint_every, 16, checkpoint_every))
    with app.app_context():
        ring = keyring()
    for checkpoint in found:
        assert checkpoint["hash"] == hashes[checkpoint["seq"]]
        assert checkpoint["key_id"] == ring.key_id
        assert checkpoint["every"] == checkpoint_every
        payload = checkpoint_payload(
            checkpoint["seq"],
            checkpoint["hash"],
            checkpoint["at"],
            checkpoint["key_id"],
            checkpoint["every"],
        )
        assert verify_signature(ring.public_key, checkpoint["signature"], payload)


@pytest.mark.parametrize("caller_name", ["auditor", "admin"])
def test_a_checkpoint_on_demand_signs_the_head(
    request: pytest.FixtureRequest, chain: Flask, runner: Any, caller_name: str
) -> None:
    caller: Caller = request.getfixturevalue(caller_name)
    key = caller.get("/v1/keys/signing").get_json()

    response = caller.post("/v1/audit/checkpoints")

    assert response.status_code == 201, response.get_json()
    signed = response.get_json()
    head = entries(chain)[-1]
    assert head["seq"] == TOTAL + 1
    assert head["action"] == "audit.checkpoint"
    assert signed["seq"] == head["seq"] and signed["hash"] == head["hash"]
    assert signed["key_id"] == key["key_id"]
    signed_fields = (signed["hash"], signed["at"], signed["key_id"], signed["every"])
    payload = checkpoint_payload(signed["seq"], *signed_fields)
    assert verify_signature(key["public_key"], signed["signature"], payload)
    forged = checkpoint_payload(signed["seq"] - 1, *signed_fields)
    assert not verify_signature(key["public_key"], signed["signature"], forged)
    assert checkpoints(chain)[-1] == signed
    report = verify(caller, runner)
    assert (report["ok"], report["checkpoints"]) == (True, len(CHECKPOINTS) + 1)


def test_an_app_client_cannot_sign_a_checkpoint(chain: Flask, shop: Caller) -> None:
    assert shop.post("/v1/audit/checkpoints").status_code == 403
    assert shop.get("/v1/audit/verify").status_code == 403
    assert len(checkpoints(chain)) == len(CHECKPOINTS)
