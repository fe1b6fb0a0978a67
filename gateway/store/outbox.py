"""The outbox: messages for the recipients, written in the transaction of the change they report.

    with write_transaction():
        record = record_consent(...)                         # enqueues `consent.changed`
    claimed = claim_due(holder, now=now, lease=timedelta(seconds=60), limit=20)
    with write_transaction():                                 # after sending one of them
        record_attempt(message, holder, delivered=True, error=None, retries=[...], now=now)

A message commits or rolls back with its change, so a committed change is delivered at least once
and a rolled-back one never is. For one recipient and subject only the earliest pending message
is ever claimed, so they arrive in the order of the changes. A claim is a lease on the row: a
process that dies mid-delivery leaves it to be claimed again once the lease expires.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from peewee import fn

from gateway.crypto import Keyring
from gateway.policy.model import Recipient
from gateway.store.db import write_transaction
from gateway.store.models import Delivery
from gateway.store.statements import Statement


class MessageType(StrEnum):
    CONSENT_CHANGED = "consent.changed"
    SUBJECT_ERASED = "subject.erased"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def _context(message_id: str) -> str:
    """What a sealed payload is bound to: the message it belongs to, so none can be swapped."""
    return f"outbox:{message_id}"


def message_body(message_type: MessageType, data: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The Standard Webhooks body: the type, when the change happened, and its data."""
    return {"type": message_type.value, "timestamp": at.isoformat(), "data": data}


# One row per recipient: the columns written, in the model's order (the statement's own).
_COLUMNS = (
    Delivery.message_id,
    Delivery.recipient,
    Delivery.type,
    Delivery.subject,
    Delivery.purpose,
    Delivery.payload,
    Delivery.status,
    Delivery.attempts,
    Delivery.created_at,
    Delivery.next_attempt_at,
)
_INSERT = Statement(lambda *values: Delivery.insert(dict(zip(_COLUMNS, values, strict=True))))


def enqueue(
    recipients: Iterable[Recipient],
    *,
    message_type: MessageType,
    pseudonym: str,
    data: dict[str, Any],
    keyring: Keyring,
    now: datetime,
    happened_at: datetime | None = None,
) -> list[str]:
    """Queue one message per recipient, due now (call inside the change's write transaction);
    the body's timestamp is `happened_at` if given (a grant found lapsed after its time), else
    `now`. Returns the message ids."""
    body = json.dumps(message_body(message_type, data, happened_at or now), sort_keys=True)
    written = Delivery.created_at.db_value(now)
    ids = []
    for recipient in recipients:
        message_id = f"msg_{uuid.uuid4().hex}"
        _INSERT.execute(
            message_id,
            recipient.id,
            message_type.value,
            pseudonym,
            data.get("purpose"),
            keyring.seal_message(body, _context(message_id)),
            DeliveryStatus.PENDING.value,
            0,
            written,
            written,
        )
        ids.append(message_id)
    return ids


def consent_recipients(recipients: Iterable[Recipient], purpose: str) -> list[Recipient]:
    """The recipients told of a purpose's consent changes."""
    return [r for r in recipients if purpose in r.purposes]


def opened_body(message: Delivery, keyring: Keyring) -> str:
    """The JSON body of a waiting message, decrypted."""
    return keyring.open_message(str(message.payload), _context(str(message.message_id)))


def _due(now: datetime) -> Any:
    earlier = Delivery.alias()
    blocked = earlier.select(fn.COUNT(earlier.id)).where(
        (earlier.recipient == Delivery.recipient)
        & (earlier.subject == Delivery.subject)
        & (earlier.status == DeliveryStatus.PENDING.value)
        & (earlier.id < Delivery.id)
    )
    unclaimed = Delivery.claim_expires_at.is_null() | (Delivery.claim_expires_at <= now)
    return (
        Delivery.select()
        .where(
            (Delivery.status == DeliveryStatus.PENDING.value)
            & (Delivery.next_attempt_at <= now)
            & unclaimed
            & (blocked == 0)
        )
        .order_by(Delivery.id)
    )


def claim_due(holder: str, *, now: datetime, lease: timedelta, limit: int) -> list[Delivery]:
    """Claim up to `limit` due messages for `holder` until `now + lease`, the earliest pending
    one of each recipient and subject only. Claims are taken under the write lock, so two
    processes never claim one message at once."""
    if not _due(now).exists():  # most rounds: no write lock taken for nothing
        return []
    with write_transaction():
        claimed = list(_due(now).limit(limit))
        if claimed:
            Delivery.update(claimed_by=holder, claim_expires_at=now + lease).where(
                Delivery.id.in_([m.id for m in claimed])
            ).execute()
    for message in claimed:
        message.claimed_by, message.claim_expires_at = holder, now + lease
    return claimed


def record_attempt(
    message: Delivery,
    holder: str,
    *,
    delivered: bool,
    error: str | None,
    retries: Sequence[timedelta],
    now: datetime,
) -> DeliveryStatus | None:
    """Record one attempt of a message we claimed (call inside a write transaction): delivered
    drops the payload; a failure schedules the next retry, or fails the message once the
    retries are spent. Returns the new status, or None if the claim was lost meanwhile."""
    attempts = int(message.attempts) + 1
    changes: dict[Any, Any] = {
        Delivery.attempts: attempts,
        Delivery.claimed_by: None,
        Delivery.claim_expires_at: None,
        Delivery.last_error: error,
    }
    if delivered:
        status = DeliveryStatus.DELIVERED
        changes.update({Delivery.payload: None, Delivery.finished_at: now})
    elif attempts > len(retries):
        status = DeliveryStatus.FAILED
        changes[Delivery.finished_at] = now
    else:
        status = DeliveryStatus.PENDING
        changes[Delivery.next_attempt_at] = now + retries[attempts - 1]
    changes[Delivery.status] = status.value
    updated = (
        Delivery.update(changes)
        .where(
            (Delivery.id == message.id)
            & (Delivery.claimed_by == holder)
            & (Delivery.status == DeliveryStatus.PENDING.value)
        )
        .execute()
    )
    message.attempts = attempts
    return status if updated == 1 else None


def find_delivery(message_id: str) -> Delivery | None:
    return Delivery.get_or_none(Delivery.message_id == message_id)


def retry(message: Delivery, now: datetime) -> Delivery:
    """Put a failed message back in the queue, due now, its attempts counted afresh (call
    inside a write transaction)."""
    Delivery.update(
        status=DeliveryStatus.PENDING.value,
        next_attempt_at=now,
        attempts=0,
        finished_at=None,
    ).where(Delivery.id == message.id).execute()
    return Delivery.get_by_id(message.id)


def drop_finished(before: datetime) -> int:
    """Delete the messages finished (delivered or failed) before `before`, payload and all."""
    deleted: int = (
        Delivery.delete()
        .where(Delivery.finished_at.is_null(False) & (Delivery.finished_at < before))
        .execute()
    )
    return deleted


def list_deliveries(
    recipient: str | None = None, status: str | None = None, limit: int = 100
) -> list[Delivery]:
    """The latest messages, newest first, optionally of one recipient and one status."""
    query = Delivery.select(
        Delivery.id,
        Delivery.message_id,
        Delivery.recipient,
        Delivery.type,
        Delivery.subject,
        Delivery.status,
        Delivery.attempts,
        Delivery.created_at,
        Delivery.next_attempt_at,
        Delivery.last_error,
        Delivery.finished_at,
    )
    if recipient:
        query = query.where(Delivery.recipient == recipient)
    if status:
        query = query.where(Delivery.status == status)
    return list(query.order_by(Delivery.id.desc()).limit(limit))


def outbox_stats(now: datetime) -> tuple[dict[tuple[str, str], int], int, float | None]:
    """Messages held per (recipient, status), how many are pending, and the age in seconds of
    the oldest pending one (None when none is)."""
    rows: Iterable[Any] = (
        Delivery.select(Delivery.recipient, Delivery.status, fn.COUNT(Delivery.id))
        .group_by(Delivery.recipient, Delivery.status)
        .tuples()
    )
    counts = {(str(r), str(s)): int(n) for r, s, n in rows}
    pending = Delivery.status == DeliveryStatus.PENDING.value
    oldest = Delivery.select(fn.MIN(Delivery.created_at)).where(pending).scalar()
    depth = sum(n for (_, status), n in counts.items() if status == DeliveryStatus.PENDING.value)
    if oldest is None:
        return counts, depth, None
    oldest = Delivery.created_at.python_value(oldest)
    return counts, depth, max(0.0, (now - oldest).total_seconds())
