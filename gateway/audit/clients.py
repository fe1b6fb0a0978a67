"""Client changes with their audit entries, written in one transaction; the CLI and the console
create and revoke clients through these, so their entries have one shape whoever acts.

    with write_transaction():
        client, key = create_client("web-shop", Role.APP, ["recommendations"], now)
        audit_client_change(Action.CLIENT_CREATE, "web-shop", {...}, actor="cli:ops")
    revoke_audited("web-shop", actor="officer", request_id=g.request_id)   # False: was revoked
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.store.clients import revoke_client
from gateway.store.db import write_transaction


def audit_client_change(
    action: Action,
    name: str,
    fields: dict[str, Any],
    *,
    actor: str,
    request_id: str | None = None,
) -> None:
    """Append a client.create or client.revoke entry (call inside the write transaction)."""
    from gateway import policies

    audit(
        AuditRecord(
            actor=actor,
            action=action,
            policy_hash=policies().hash,
            outcome="recorded",
            fields={"client": name, **fields},
            request_id=request_id,
        ),
        datetime.now(UTC),
    )


def revoke_audited(name: str, *, actor: str, request_id: str | None = None) -> bool:
    """Revoke the client `name` and audit it, in one write; False if it was revoked already
    (nothing is written then). An unknown name raises ClientError."""
    with write_transaction():
        changed = revoke_client(name, datetime.now(UTC))
        if changed:
            audit_client_change(Action.CLIENT_REVOKE, name, {}, actor=actor, request_id=request_id)
    return changed
