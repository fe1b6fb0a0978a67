"""The tamper-evident audit log: chain, checkpoints, verification, queries and exports.

    with write_transaction():
        audit(AuditRecord(actor=..., action=Action.DECISION, ...), now)

`audit()` is the app's way in: it appends with the app's keyring and checkpoint interval, as a
pending entry the sequencer chains after the commit (PostgreSQL), or chained at once where every
writer holds the one write lock anyway (SQLite). `audit_chained()` is for a caller that needs
the entry's seq in its own transaction (an erasure's order names it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from peewee import PeeweeException

from gateway.audit.chain import GENESIS, Action, AuditRecord, timestamp
from gateway.audit.export import export_lines
from gateway.audit.sealer import seal
from gateway.audit.sequencer import (
    Drain,
    append_chained,
    drain,
    has_pending,
    sign_checkpoint,
    write_pending,
)
from gateway.audit.verification import Outside, Verification, verify_stored
from gateway.audit.witness import Witness, open_witness
from gateway.errors import GatewayError
from gateway.observability import AUDIT_APPEND_SECONDS
from gateway.store.db import after_commit, serializes_writers, write_transaction
from gateway.store.models import AuditCheckpoint, KeyDestruction


def checkpoint_every() -> int:
    return int(current_app.config["AUDIT_CHECKPOINT_EVERY"])


def audit(record: AuditRecord, now: datetime) -> str:
    """Append `record` in the current write transaction; returns the entry's id."""
    from gateway import keyring

    with AUDIT_APPEND_SECONDS.time():
        if serializes_writers():
            entry_id = str(append_chained(record, now, keyring(), checkpoint_every())["entry_id"])
        else:
            entry_id = write_pending(record, now, keyring(), checkpoint_every(), drain_after=False)
            # A serving worker's sealer chains it off the request's path; elsewhere (tests,
            # commands) the writer chains it after its commit.
            sealer = current_app.extensions.get("gateway.sealer")
            after_commit(sealer.wake if sealer else Drain(keyring(), checkpoint_every()))
    if current_app.config["AUDIT_SEAL_AFTER_COMMIT"]:
        after_commit(_seal_waiting)  # once per transaction, however many entries it wrote
    return entry_id


def _seal_waiting() -> None:
    """After a command's write: seal, best effort. What was committed stands either way, and
    verification names the entries if no head ever covers them."""
    try:
        seal_now(wait=True)
    except (GatewayError, PeeweeException) as exc:
        print(f"Warning: the audit head was not sealed: {exc}", file=sys.stderr)


def chain_now(*, wait: bool = False) -> None:
    """Chain what is pending (reads of the log call it with `wait`, to see every committed
    entry in the chain)."""
    from gateway import keyring

    if has_pending():
        drain(keyring(), checkpoint_every(), rounds=1_000_000, wait=wait)


def witness() -> Witness:
    return open_witness(str(current_app.config["AUDIT_WITNESS"]))


def seal_now(*, wait: bool = False) -> dict[str, Any] | None:
    """Chain what is pending, sign the head, publish it to the configured witness."""
    from gateway import keyring

    return seal(keyring(), checkpoint_every(), witness(), wait=wait)


def verify_database(first_seq: int = 1, anchor: str = GENESIS) -> Verification:
    """Verify the stored chain (from `first_seq`, linking to `anchor`) with everything the app
    holds outside the database: the keyring, the interval, the witness's latest head."""
    from gateway import keyring

    ring = keyring()
    outside = Outside(
        ring=ring,
        witnessed=witness().recent(),
        now=datetime.now(UTC),
        unsigned_grace=float(current_app.config["AUDIT_UNSIGNED_GRACE"]),
    )
    return verify_stored(
        {ring.key_id: ring.public_key},
        first_seq=first_seq,
        anchor=anchor,
        every=checkpoint_every(),
        outside=outside,
    )


def audit_chained(record: AuditRecord, now: datetime) -> dict[str, Any]:
    """Append `record` to the chain itself in the current write transaction (waiting for the
    sequencer); returns the entry, seq included."""
    from gateway import keyring

    with AUDIT_APPEND_SECONDS.time():
        entry = append_chained(record, now, keyring(), checkpoint_every())
    if current_app.config["AUDIT_SEAL_AFTER_COMMIT"]:
        after_commit(_seal_waiting)  # once per transaction, however many entries it wrote
    return entry


def key_destroyed(
    order: KeyDestruction, actor: str, policy_hash: str, request_id: str | None = None
) -> AuditRecord:
    """The entry confirming that the key an erasure entry (`order.ordered_by`) ordered
    destroyed is gone."""
    return AuditRecord(
        actor=actor,
        action=Action.SUBJECT_ERASE,
        policy_hash=policy_hash,
        subject=order.pseudonym,
        outcome="key_destroyed",
        fields={"key": "destroyed", "ordered_by": order.ordered_by},
        request_id=request_id,
    )


def checkpoint_now(record: AuditRecord, now: datetime) -> dict[str, Any]:
    """Append `record` (the request for a checkpoint) and sign the chain up to it."""
    from gateway import keyring

    with write_transaction():
        entry = audit_chained(record, now)
        checkpoint = sign_checkpoint(
            entry["seq"], entry["hash"], keyring(), checkpoint_every(), now
        )
        AuditCheckpoint.insert(**checkpoint).execute()
        return checkpoint


def audited_export(
    record: AuditRecord, fmt: str, since: datetime | None, until: datetime | None, now: datetime
) -> Iterator[str]:
    """Record who pulls which export, then return its lines (streamed from the database)."""
    from gateway import keyring

    window = {
        "format": fmt,
        "since": since and timestamp(since),
        "until": until and timestamp(until),
    }
    with write_transaction():
        audit(replace(record, fields={**record.fields, **window}), now)
    chain_now(wait=True)
    return export_lines(
        fmt, since, until, keyring(), exported_at=timestamp(now), every=checkpoint_every()
    )
