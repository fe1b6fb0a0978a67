"""The sequencer: pending audit entries move into the chain in order, batch by batch.

    with write_transaction(serialize=False):          # a request, on PostgreSQL
        change_state(...)
        write_pending(record, now, ring)               # committed with the change, or not at all
    drain(ring, every)                                 # after the commit (write_pending asks)

    with write_transaction():                          # SQLite, or a caller needing the seq
        entry = append_chained(record, now, ring, every)

A writer never waits for another's commit to append: it inserts its entry into `audit_pending`
with an HMAC under a key of the keyring, in its own transaction. Whoever then takes the
sequencer lock (a request after its commit, the sealer each second, any gateway process) reads
the oldest pending entries by id, checks each HMAC, appends them to the chain, signs the
checkpoints that fall due and deletes them from `audit_pending`, in one transaction. A writer
that finds the lock taken leaves: the holder looks again after its commit, and the sealer
sweeps anything left. SQLite's writers hold its one write lock anyway, so there an entry is
chained in the transaction that writes it.

Order. Entries are chained in id order of what is committed when a batch reads. A transaction
that must come after another one's entry in the log (a decision after the withdrawal it saw)
takes a lock that one held to its commit (`lock_subject`) before it inserts, so its id is
larger and, as it commits later, it is read in the same batch or a later one.

An entry whose HMAC does not verify, or that was chained already (a copied row), is not chained
as it stands: an `audit.rejected` entry keeping what was stored takes its place, which
verification reports.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from peewee import PeeweeException

from gateway.audit.chain import (
    GENESIS,
    PENDING_FIELDS,
    SCHEME,
    Action,
    AuditRecord,
    AuditUnavailable,
    body_hash,
    checkpoint_payload,
    next_required,
    pending_mac,
    pending_row,
    timestamp,
)
from gateway.crypto import Keyring
from gateway.errors import GatewayError
from gateway.store.db import (
    after_commit,
    database,
    serializes_writers,
    try_lock,
    write_transaction,
)
from gateway.store.models import AuditCheckpoint, AuditEntry, AuditPending
from gateway.store.statements import Statement

log = logging.getLogger("gateway.audit")

SEQUENCER_LOCK = 0x61756474  # with the schema: one sequencer at a time per chain
BATCH = 500
DRAIN_ROUNDS = 4  # a request chains at most this many batches for others, then leaves


@dataclass(frozen=True)
class Drain:
    """`drain(ring, every)` as an after-commit callback: equal ones run once per commit."""

    ring: Keyring
    every: int

    def __call__(self) -> None:
        drain(self.ring, self.every)


_PENDING_COLUMNS = ("id", *PENDING_FIELDS, "mac")
_ENTRY_COLUMNS = ("seq", *PENDING_FIELDS, "scheme", "prev_hash", "hash")

# Every append reads these, on SQLite holding the one write lock: their SQL is built once.
_ANY_PENDING = Statement(lambda: AuditPending.select(AuditPending.id).limit(1))
_HEAD = Statement(
    lambda: (
        AuditEntry.select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
    )
)
_LAST_CHECKPOINT = Statement(
    lambda: (
        AuditCheckpoint.select(AuditCheckpoint.seq, AuditCheckpoint.every)
        .order_by(AuditCheckpoint.seq.desc())
        .limit(1)
    )
)


def _next_pending_id(db: Any) -> int:
    """The id the new pending entry takes, known before its HMAC is computed: from the table's
    sequence (PostgreSQL), or after the largest (SQLite, whose writers hold its write lock)."""
    if serializes_writers():
        sql = 'SELECT COALESCE(MAX(id), 0) + 1 FROM "audit_pending"'
        return int(db.execute_sql(sql).fetchone()[0])
    sql = "SELECT nextval(pg_get_serial_sequence('audit_pending', 'id'))"
    return int(db.execute_sql(sql).fetchone()[0])


def write_pending(
    record: AuditRecord, now: datetime, ring: Keyring, every: int, *, drain_after: bool = True
) -> str:
    """Insert `record` as a pending entry in the current write transaction; returns its id.
    With `drain_after`, the entries pending are chained once the transaction commits."""
    db = database.obj
    row = {"id": _next_pending_id(db), **pending_row(record, now)}
    row["mac"] = pending_mac(row, ring)
    marks = ", ".join([db.param] * len(_PENDING_COLUMNS))
    sql = f'INSERT INTO "audit_pending" ({", ".join(_PENDING_COLUMNS)}) VALUES ({marks})'
    try:
        db.execute_sql(sql, [row[name] for name in _PENDING_COLUMNS])
    except PeeweeException as exc:
        raise AuditUnavailable("the audit entry could not be written") from exc
    if drain_after:
        after_commit(Drain(ring, every))
    return str(row["entry_id"])


def append_chained(record: AuditRecord, now: datetime, ring: Keyring, every: int) -> dict[str, Any]:
    """Chain `record` in the current write transaction, after every entry pending before it;
    returns the entry (with its seq). Waits for the sequencer lock on PostgreSQL."""
    try:
        try_lock(SEQUENCER_LOCK, wait=True)
        while _sequence_batch(ring, every, now) == BATCH:
            pass
        row = pending_row(record, now)
        return _chain([{**row, "mac": pending_mac(row, ring)}], ring, every, now)[0]
    except PeeweeException as exc:
        raise AuditUnavailable("the audit entry could not be written") from exc


def sequence(ring: Keyring, every: int, *, wait: bool = False) -> int | None:
    """Chain one batch of pending entries in a transaction of its own; returns how many, or
    None when another process holds the sequencer lock (and `wait` is false)."""
    with write_transaction(serialize=False):
        if not try_lock(SEQUENCER_LOCK, wait=wait):
            return None
        return _sequence_batch(ring, every, datetime.now(UTC))


def drain(ring: Keyring, every: int, *, rounds: int = DRAIN_ROUNDS, wait: bool = False) -> None:
    """Chain what is pending, batch by batch, unless another process holds the lock. After each
    batch the lock is free again: whoever failed to take it meanwhile had committed already, so
    the next look here finds its entry. Errors are logged: the entries stay pending, protected,
    for the next sequencer."""
    try:
        for _ in range(rounds):
            if sequence(ring, every, wait=wait) is None or not has_pending():
                return
    except (GatewayError, PeeweeException) as exc:
        log.warning("audit entries left pending: %s", exc)


def has_pending() -> bool:
    return bool(_ANY_PENDING.rows())


def _sequence_batch(ring: Keyring, every: int, now: datetime) -> int:
    """Under the sequencer lock: chain the oldest pending entries and delete them."""
    if not has_pending():
        return 0  # the common case, at every append on SQLite: one cheap look
    rows: list[dict[str, Any]] = list(
        AuditPending.select().order_by(AuditPending.id).limit(BATCH).dicts()  # type: ignore[arg-type]
    )
    if rows:
        _chain(rows, ring, every, now)
        AuditPending.delete().where(AuditPending.id.in_([r["id"] for r in rows])).execute()
    return len(rows)


def chain_head() -> tuple[int, str]:
    """The seq and hash of the last chained entry: (0, GENESIS) for an empty chain."""
    found = _HEAD.rows()
    return (int(found[0][0]), str(found[0][1])) if found else (0, GENESIS)


def required_after(before_seq: int | None, every: int) -> tuple[int, int]:
    """(interval, seq of the next required checkpoint) after the last checkpoint below
    `before_seq` (any, when None): a checkpoint's own interval places the next one."""
    if before_seq is None:
        found = _LAST_CHECKPOINT.rows()
        last = found[0] if found else None
    else:
        query = AuditCheckpoint.select(AuditCheckpoint.seq, AuditCheckpoint.every)
        query = query.where(AuditCheckpoint.seq < before_seq)
        last = query.order_by(AuditCheckpoint.seq.desc()).limit(1).tuples().first()
    if last is None:
        return every, every
    interval = int(last[1] or every)
    return interval, next_required(int(last[0]), interval)


def sign_checkpoint(
    seq: int, entry_hash: str, ring: Keyring, every: int, now: datetime
) -> dict[str, Any]:
    """A checkpoint row signing entry `seq` (not yet stored)."""
    at = timestamp(now)
    payload = checkpoint_payload(seq, entry_hash, at, ring.key_id, every)
    return {
        "seq": seq,
        "hash": entry_hash,
        "at": at,
        "key_id": ring.key_id,
        "signature": ring.sign(payload),
        "every": every,
    }


def _chain(
    rows: Sequence[Mapping[str, Any]], ring: Keyring, every: int, now: datetime
) -> list[dict[str, Any]]:
    """Append `rows` (pending entries with their HMAC) at the head, signing each required
    checkpoint on the way; call holding the sequencer lock. Returns the entries stored."""
    seq, prev = chain_head()
    _, due = required_after(None, every)
    seen = _chained_already([r["entry_id"] for r in rows])
    entries, checkpoints = [], []
    for row in rows:
        if pending_mac(row, ring) != row.get("mac"):
            content = _rejected(row, "mac_mismatch", now)
        elif row["entry_id"] in seen:
            content = _rejected(row, "already_chained", now)
        else:
            content = {name: row[name] for name in PENDING_FIELDS}
            seen.add(row["entry_id"])
        seq += 1
        entry = {**content, "seq": seq, "scheme": SCHEME, "prev_hash": prev}
        entry["hash"] = prev = body_hash(_parsed(entry))
        entries.append(entry)
        if seq >= due:
            checkpoints.append(sign_checkpoint(seq, prev, ring, every, now))
            due = next_required(seq, every)
    _insert_entries(entries)
    if checkpoints:
        AuditCheckpoint.insert_many(checkpoints).execute()
    return entries


def _chained_already(entry_ids: Sequence[str]) -> set[str]:
    """Which of these entry ids the chain holds already."""
    if not entry_ids:
        return set()
    db = database.obj
    marks = ", ".join([db.param] * len(entry_ids))
    sql = f'SELECT "entry_id" FROM "audit_entry" WHERE "entry_id" IN ({marks})'
    found = db.execute_sql(sql, list(entry_ids))
    return {str(AuditEntry.entry_id.python_value(row[0])) for row in found}


def _insert_entries(entries: Sequence[Mapping[str, Any]]) -> None:
    """Store chained entries in one statement, its SQL written here: peewee would take longer
    to build it than the database takes to run it, at every append."""
    db = database.obj
    row = "(" + ", ".join([db.param] * len(_ENTRY_COLUMNS)) + ")"
    columns = ", ".join(f'"{name}"' for name in _ENTRY_COLUMNS)
    sql = f'INSERT INTO "audit_entry" ({columns}) VALUES {", ".join([row] * len(entries))}'
    db.execute_sql(sql, [entry[name] for entry in entries for name in _ENTRY_COLUMNS])


def _parsed(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry as verification reads it back: its JSON columns parsed."""
    return {**entry, "reasons": json.loads(entry["reasons"]), "fields": json.loads(entry["fields"])}


def _rejected(row: Mapping[str, Any], why: str, now: datetime) -> dict[str, Any]:
    """The entry chained instead of a pending one that cannot be trusted: what was stored."""
    stored = {name: row.get(name) for name in PENDING_FIELDS}
    fields = {"pending_id": row.get("id"), "stored": stored}
    return {
        "entry_id": str(uuid.uuid4()),
        "at": timestamp(now),
        "actor": "gateway",
        "action": Action.AUDIT_REJECTED.value,
        "subject": None,
        "purpose": None,
        "outcome": why,
        "reasons": json.dumps([why]),
        "fields": json.dumps(fields, sort_keys=True, default=str),
        "policy_hash": str(row.get("policy_hash") or ""),
        "request_id": None,
        "decision_id": None,
    }
