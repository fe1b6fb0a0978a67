"""The tamper-evident audit log: chain, checkpoints, verification, queries and exports.

    with write_transaction():
        audit(AuditRecord(actor=..., action=Action.DECISION, ...), now)

`audit()` is the app's way in: it appends with the app's keyring and checkpoint interval.
"""

from __future__ import annotations

from datetime import datetime

from flask import current_app

from gateway.audit.chain import AuditRecord, append
from gateway.observability import AUDIT_APPEND_SECONDS
from gateway.store.models import AuditEntry


def audit(record: AuditRecord, now: datetime) -> AuditEntry:
    """Append to the chain, signing a checkpoint every AUDIT_CHECKPOINT_EVERY entries."""
    from gateway import keyring

    every = int(current_app.config["AUDIT_CHECKPOINT_EVERY"])
    with AUDIT_APPEND_SECONDS.time():
        return append(record, now, keyring=keyring(), checkpoint_every=every)
