"""A subject's attributes and events: written as admitted, read only as a decision plans.

Values of PII categories are encrypted with the subject's data key, bound to where they live.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.crypto import Keyring, decrypt_field, encrypt_field
from gateway.policy.engine import Holding, HoldingKind, ReadPlan
from gateway.scoring import Profile, ProfileEvent, Scalar
from gateway.store.models import Attribute, Event, Subject
from gateway.store.subjects import data_key


@dataclass(frozen=True)
class NewEvent:
    type: str
    item_id: str
    item_category: str
    at: datetime
    pii: bool


def _attribute_context(database: str, name: str) -> str:
    return f"attribute:{database}:{name}"


def _event_context(database: str, event_type: str) -> str:
    return f"event:{database}:{event_type}"


def put_attributes(
    subject: Subject,
    database: str,
    values: Mapping[str, tuple[Scalar, bool]],
    keyring: Keyring,
    now: datetime,
) -> None:
    """Insert or replace attributes; `values` maps name to (value, is_pii)."""
    key = data_key(keyring, subject) if any(pii for _, pii in values.values()) else b""
    for name, (value, pii) in values.items():
        text = json.dumps(value)
        if pii:
            text = encrypt_field(key, text, _attribute_context(database, name))
        (
            Attribute.insert(
                subject=subject,
                database=database,
                name=name,
                value=text,
                sealed=pii,
                updated_at=now,
            )
            .on_conflict(
                conflict_target=[Attribute.subject, Attribute.database, Attribute.name],
                update={Attribute.value: text, Attribute.sealed: pii, Attribute.updated_at: now},
            )
            .execute()
        )


def add_events(
    subject: Subject, database: str, events: Iterable[NewEvent], keyring: Keyring, now: datetime
) -> None:
    events = list(events)
    key = data_key(keyring, subject) if any(e.pii for e in events) else b""
    rows = []
    for event in events:
        item_id, item_category = event.item_id, event.item_category
        if event.pii:
            context = _event_context(database, event.type)
            item_id = encrypt_field(key, item_id, context)
            item_category = encrypt_field(key, item_category, context)
        rows.append(
            {
                "subject": subject,
                "database": database,
                "type": event.type,
                "item_id": item_id,
                "item_category": item_category,
                "sealed": event.pii,
                "at": event.at,
                "received_at": now,
            }
        )
    if rows:
        Event.insert_many(rows).execute()


def holdings(subject: Subject | None) -> list[Holding]:
    """Metadata of everything held about a subject: names, types and times, no values."""
    if subject is None:
        return []
    attributes = Attribute.select(Attribute.database, Attribute.name, Attribute.updated_at).where(
        Attribute.subject == subject
    )
    found = [Holding(a.database, HoldingKind.ATTRIBUTE, a.name, a.updated_at) for a in attributes]
    events = Event.select(Event.database, Event.type, Event.at).where(Event.subject == subject)
    found += [Holding(e.database, HoldingKind.EVENT, e.type, e.at) for e in events]
    return found


def read_profile(subject: Subject | None, plan: ReadPlan, keyring: Keyring) -> Profile:
    """Read exactly what `plan` allows, decrypting sealed values."""
    if subject is None or (not plan.attributes and not plan.events):
        return Profile()
    key: bytes | None = None

    def unseal(text: str, sealed: bool, context: str) -> str:
        nonlocal key
        if not sealed:
            return text
        key = key or data_key(keyring, subject)
        return decrypt_field(key, text, context)

    attributes: dict[str, Scalar] = {}
    for database, name in plan.attributes:
        row = Attribute.get_or_none(
            (Attribute.subject == subject)
            & (Attribute.database == database)
            & (Attribute.name == name)
        )
        if row is not None:
            attributes[name] = json.loads(
                unseal(row.value, row.sealed, _attribute_context(database, name))
            )
    events: list[ProfileEvent] = []
    for database, event_type, since in plan.events:
        rows = Event.select().where(
            (Event.subject == subject)
            & (Event.database == database)
            & (Event.type == event_type)
            & (Event.at > since)
        )
        context = _event_context(database, event_type)
        events += [
            ProfileEvent(
                row.type,
                unseal(row.item_id, row.sealed, context),
                unseal(row.item_category, row.sealed, context),
                row.at,
            )
            for row in rows.order_by(Event.at)
        ]
    return Profile(attributes, tuple(events))
