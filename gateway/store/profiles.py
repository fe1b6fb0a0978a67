"""A subject's attributes and events: written as admitted, read only as a decision plans.

Values of PII categories are encrypted with the subject's data key, bound to where they live.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from operator import or_
from typing import Any

from gateway.crypto import Keyring, decrypt_field, encrypt_field
from gateway.policy.engine import Holding, HoldingKind, ReadPlan
from gateway.scoring import Profile, ProfileEvent, Scalar
from gateway.store.models import Attribute, ConsentRecord, Event, Subject
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


class Unsealer:
    """Decrypts a subject's sealed values, unwrapping its data key only if one is needed."""

    def __init__(self, subject: Subject, keyring: Keyring) -> None:
        self.subject, self.keyring, self.key = subject, keyring, b""

    def __call__(self, text: str, sealed: bool, context: str) -> str:
        if not sealed:
            return text
        self.key = self.key or data_key(self.keyring, self.subject)
        return decrypt_field(self.key, text, context)


def holdings(subject: Subject | None) -> list[Holding]:
    """Metadata of everything held about a subject: names, types and times, no values."""
    if subject is None:
        return []
    attributes: Any = (
        Attribute.select(Attribute.database, Attribute.name, Attribute.updated_at)
        .where(Attribute.subject == subject)
        .tuples()
    )
    found = [Holding(db, HoldingKind.ATTRIBUTE, name, at) for db, name, at in attributes]
    events: Any = Event.select(Event.database, Event.type, Event.at).where(Event.subject == subject)
    found += [Holding(db, HoldingKind.EVENT, kind, at) for db, kind, at in events.tuples()]
    return found


def read_profile(subject: Subject | None, plan: ReadPlan, keyring: Keyring) -> Profile:
    """Read exactly what `plan` allows, decrypting sealed values: one query for the allowed
    attributes, one for the allowed events."""
    if subject is None or (not plan.attributes and not plan.events):
        return Profile()
    unseal = Unsealer(subject, keyring)
    attributes: dict[str, Scalar] = {}
    if plan.attributes:
        wanted = reduce(
            or_, [(Attribute.database == db) & (Attribute.name == n) for db, n in plan.attributes]
        )
        rows: Any = (
            Attribute.select(Attribute.database, Attribute.name, Attribute.value, Attribute.sealed)
            .where((Attribute.subject == subject) & wanted)
            .tuples()
        )
        for database, name, value, sealed in rows:
            attributes[name] = json.loads(unseal(value, sealed, _attribute_context(database, name)))
    events: list[ProfileEvent] = []
    if plan.events:
        wanted = reduce(
            or_,
            [
                (Event.database == db) & (Event.type == kind) & (Event.at > since)
                for db, kind, since in plan.events
            ],
        )
        event_rows: Any = (
            Event.select(
                Event.database,
                Event.type,
                Event.item_id,
                Event.item_category,
                Event.sealed,
                Event.at,
            )
            .where((Event.subject == subject) & wanted)
            .order_by(Event.at, Event._meta.primary_key)  # type: ignore[attr-defined]
            .tuples()
        )
        for database, kind, item_id, category, sealed, at in event_rows:
            context = _event_context(database, kind)
            events.append(
                ProfileEvent(
                    kind, unseal(item_id, sealed, context), unseal(category, sealed, context), at
                )
            )
    return Profile(attributes, tuple(events))


def everything(
    subject: Subject, keyring: Keyring
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every attribute and event held about a subject, decrypted (for an access request)."""
    unseal = Unsealer(subject, keyring)
    attributes = [
        {
            "database": row.database,
            "name": row.name,
            "value": json.loads(
                unseal(row.value, row.sealed, _attribute_context(row.database, row.name))
            ),
            "updated_at": row.updated_at,
        }
        for row in Attribute.select().where(Attribute.subject == subject).order_by(Attribute.name)
    ]
    events = []
    for row in Event.select().where(Event.subject == subject).order_by(Event.at, Event.received_at):
        context = _event_context(row.database, row.type)
        events.append(
            {
                "database": row.database,
                "type": row.type,
                "item_id": unseal(row.item_id, row.sealed, context),
                "category": unseal(row.item_category, row.sealed, context),
                "at": row.at,
                "received_at": row.received_at,
            }
        )
    return attributes, events


def erase(subject: Subject) -> dict[str, int]:
    """Delete a subject's attributes, events, consent records and row (call in a write)."""
    counts = {
        "attributes": Attribute.delete().where(Attribute.subject == subject).execute(),
        "events": Event.delete().where(Event.subject == subject).execute(),
        "consents": ConsentRecord.delete().where(ConsentRecord.subject == subject).execute(),
    }
    subject.delete_instance()
    return counts
