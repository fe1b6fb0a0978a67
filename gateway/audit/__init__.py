"""The tamper-evident audit log: chain, checkpoints, verification, queries and exports.

    with write_transaction():
        audit(AuditRecord(actor=..., action=Action.DECISION, ...), now)

`audit()` is the app's way in: it appends with the app's keyring and checkpoint interval.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

from flask import current_app

from gateway.audit.chain import Action, AuditRecord, append, sign_checkpoint, timestamp
from gateway.audit.export import export_lines
from gateway.observability import AUDIT_APPEND_SECONDS
from gateway.store.db import write_transaction
from gateway.store.models import AuditCheckpoint, AuditEntry, KeyDestruction


def audit(record: AuditRecord, now: datetime) -> AuditEntry:
    """Append to the chain, signing a checkpoint every AUDIT_CHECKPOINT_EVERY entries."""
    from gateway import keyring

    every = int(current_app.config["AUDIT_CHECKPOINT_EVERY"])
    with AUDIT_APPEND_SECONDS.time():
        return append(record, now, keyring=keyring(), checkpoint_every=every)


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


def checkpoint_now(record: AuditRecord, now: datetime) -> AuditCheckpoint:
    """Append `record` (the request for a checkpoint) and sign the chain up to it."""
    from gateway import keyring

    with write_transaction():
        entry = audit(record, now)
        return sign_checkpoint(entry, keyring(), now)


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
    return export_lines(fmt, since, until, keyring(), exported_at=timestamp(now))
