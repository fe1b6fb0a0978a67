"""A subject's attributes and events: written as admitted, read only as a decision plans.

Values of PII categories are encrypted with the subject's data key, bound to where they live.
Events are read as the database sums them from their day tallies (`History`), so a decision
costs the same for a subject with ten events as for one with ten thousand.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, reduce
from operator import or_
from typing import Any

from gateway.crypto import FIELD_TAG, SCHEME, Keyring, decrypt_field, encrypt_field, encrypt_labels
from gateway.policy.engine import Holding, HoldingKind, ReadPlan
from gateway.policy.model import Duration
from gateway.scoring import Profile, Scalar
from gateway.store.db import database as connection
from gateway.store.history import History, event_context
from gateway.store.models import Attribute, ConsentRecord, Event, Subject
from gateway.store.statements import Statement
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
            # deterministic: tallies group by the category, purchases are looked up by item
            context = event_context(database, event.type)
            item_id, item_category = encrypt_labels(key, [item_id, item_category], context)
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


# How an event's sealed values began, before deterministic tokens: each under a random nonce.
LEGACY = f"{SCHEME}:{FIELD_TAG}:"


class Unsealer:
    """Decrypts a subject's sealed values, unwrapping its data key only if one is needed."""

    def __init__(self, subject: Subject, keyring: Keyring) -> None:
        self.subject, self.keyring, self.key = subject, keyring, b""

    def __call__(self, text: str, sealed: bool, context: str) -> str:
        if not sealed:
            return text
        return decrypt_field(self.key_for_labels(), text, context)

    def key_for_labels(self) -> bytes:
        """The subject's data key (to decrypt, or to make the tokens of labels to look up)."""
        self.key = self.key or data_key(self.keyring, self.subject)
        return self.key


# Every decision reads what attributes a subject has (names and times, no values).
_ATTRIBUTES_HELD = Statement(
    lambda subject_id: Attribute.select(
        Attribute.database, Attribute.name, Attribute.updated_at
    ).where(Attribute.subject == subject_id)
)


def _attribute_holdings(subject: Subject) -> list[Holding]:
    rows = _ATTRIBUTES_HELD.rows(subject.get_id())
    return [Holding(db, HoldingKind.ATTRIBUTE, name, at) for db, name, at in rows]


def holdings(subject: Subject | None, history: History) -> list[Holding]:
    """Metadata of everything held about a subject: names, types, times and counts, no values."""
    if subject is None:
        return []
    return _attribute_holdings(subject) + history.holdings()


def _read_attributes(subject: Subject, plan: ReadPlan, unseal: Unsealer) -> dict[str, Scalar]:
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
    return attributes


@lru_cache(maxsize=256)
def _bought_sql(shapes: tuple[tuple[int, int], ...], param: str) -> str:
    """The latest purchase of each of some items, per (database, type) allowed: each shape is
    the number of plain item ids and of sealed tokens looked up there (parameters: the subject;
    then per shape its database, type, cutoff, window start, ids, and tokens with the prefix of
    legacy ones). Built once per shape, as it is asked on every decision."""

    def marks(count: int) -> str:
        return ", ".join(param for _ in range(count))

    pairs = []
    for plain, sealed in shapes:
        ids = f"(NOT sealed AND item_id IN ({marks(plain)}))"
        if sealed:
            ids += f" OR (sealed AND (item_id IN ({marks(sealed)}) OR item_id LIKE {param}))"
        pairs.append(
            f"(database = {param} AND type = {param} AND at > {param} AND at >= {param}"
            f" AND ({ids}))"
        )
    return f"""
        SELECT database, type, item_id, sealed, max(at) FROM event
        WHERE subject_id = {param} AND ({" OR ".join(pairs)})
        GROUP BY database, type, item_id, sealed"""


def _read_bought(
    subject: Subject, plan: ReadPlan, unseal: Unsealer, history: History, items: Collection[str]
) -> dict[str, datetime]:
    """Of the events the scorer needs item by item (allowed, from the plan's `since` on), those
    of `items` (the candidates): each item's latest. Item ids of sealed events are matched by
    their deterministic tokens; those sealed before tokens, one by one."""
    after = {(db, kind): since for db, kind, since in plan.events}
    ids = sorted(items)
    shapes, params = [], [subject.get_id()]
    for db, kind, since in plan.items:
        if (db, kind) not in after or not ids:
            continue
        params += [db, kind, Event.at.db_value(after[(db, kind)]), Event.at.db_value(since), *ids]
        tokens = []
        if history.sealed(db, kind):
            key = unseal.key_for_labels()
            tokens = [*encrypt_labels(key, ids, event_context(db, kind)), f"{LEGACY}%"]
        params += tokens
        shapes.append((len(ids), len(tokens) - 1 if tokens else 0))
    if not shapes:
        return {}
    sql = _bought_sql(tuple(shapes), connection.param)
    bought: dict[str, datetime] = {}
    for db, kind, item_id, sealed, latest in connection.execute_sql(sql, params).fetchall():
        item = unseal(item_id, bool(sealed), event_context(db, kind))
        at = Event.at.python_value(latest)
        if item in items:
            bought[item] = max(bought.get(item, at), at)
    return bought


def read_profile(
    subject: Subject | None,
    plan: ReadPlan,
    keyring: Keyring,
    *,
    now: datetime,
    half_life: Duration,
    history: History | None = None,
    items: Collection[str] = (),
) -> Profile:
    """Read exactly what `plan` allows, decrypting sealed values: the allowed attributes; the
    allowed events as tallies weighed under the scorer's `half_life` at `now` (from `history`,
    read for the plan if not given); and which of `items` (the candidates being ranked) were
    bought, when last."""
    if subject is None or (not plan.attributes and not plan.events):
        return Profile()
    if history is None:  # for a plan without events: a History that reads nothing
        history = History(subject if plan.events else None, {k: s for _, k, s in plan.events})
    unseal = Unsealer(subject, keyring)
    return Profile(
        _read_attributes(subject, plan, unseal),
        tuple(history.tallies(plan, unseal, half_life=half_life, now=now)),
        _read_bought(subject, plan, unseal, history, set(items)),
    )


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
        context = event_context(row.database, row.type)
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
