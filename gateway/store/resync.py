"""A recipient's resync: the current consent state of every subject, queued for it alone.

    after, total = 0, ResyncCount()
    while (after := resync_batch(recipient, policies, keyring, after, 500, now, total)):
        pass

Each batch is one short write transaction over the next subjects by id, so other writers go on
between batches, and a consent change is queued either before a subject's resync message or
after it, never in between. A subject is named by its sealed id (`seal_subject_id`), which a
subject gets at its first consent change from this version on: one without it is counted as
skipped, and so is one whose data key was destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.crypto import Keyring
from gateway.policy.engine import ConsentState, consent_status
from gateway.policy.model import PolicySet, Recipient
from gateway.store.consents import as_events, consent_records
from gateway.store.db import write_transaction
from gateway.store.models import ConsentRecord, Subject
from gateway.store.outbox import MessageType, enqueue
from gateway.store.subjects import unsealed_subject_id

_ID = Subject._meta.primary_key  # type: ignore[attr-defined]


@dataclass
class ResyncCount:
    subjects: int = 0
    messages: int = 0
    skipped: int = 0  # no readable id: never changed consent since, or erased


def _state_data(
    subject_id: str,
    records: list[ConsentRecord],
    policies: PolicySet,
    purpose_id: str,
    now: datetime,
) -> dict[str, Any] | None:
    """The data of a `consent.changed` saying where the subject stands now for one purpose."""
    purpose = policies.purposes.get(purpose_id)
    mine = [r for r in records if r.purpose == purpose_id]
    if purpose is None or not mine:
        return None
    status = consent_status(purpose, as_events(mine), now)
    latest = mine[-1]
    expired = status.state is ConsentState.EXPIRED and status.expires_at is not None
    effective = status.expires_at if expired else latest.recorded_at
    return {
        "subject_id": subject_id,
        "purpose": purpose_id,
        "state": status.state.value,
        "effective_at": effective.isoformat() if effective else None,
        "source": latest.source,
        "receipt_id": latest.receipt_id,
    }


def resync_batch(
    recipient: Recipient,
    policies: PolicySet,
    keyring: Keyring,
    after: int,
    limit: int,
    now: datetime,
    count: ResyncCount,
) -> int:
    """Queue the state of the next `limit` subjects after id `after` for `recipient`; returns
    the last subject id done, or 0 when there were none left."""
    with write_transaction():
        subjects = list(Subject.select().where(_ID > after).order_by(_ID).limit(limit))
        for subject in subjects:
            count.subjects += 1
            subject_id = unsealed_subject_id(subject, keyring)
            if subject_id is None:
                count.skipped += 1
                continue
            records = consent_records(subject)
            for purpose_id in recipient.purposes:
                data = _state_data(subject_id, records, policies, purpose_id, now)
                if data is not None:
                    count.messages += len(
                        enqueue(
                            [recipient],
                            message_type=MessageType.CONSENT_CHANGED,
                            pseudonym=subject.pseudonym,
                            data=data,
                            keyring=keyring,
                            now=now,
                        )
                    )
    return int(subjects[-1].get_id()) if subjects else 0
