"""Subjects: a pseudonym in the main database, a data key in the keystore.

Erasing a subject destroys its data key in two steps, since the key lives in another database:

    with write_transaction():             # deletes the data, appends the ordering entry
        fingerprint = unordered_key(pseudonym)
        entry = audit(...)                # says the key is to be destroyed
        order_destruction(pseudonym, fingerprint, entry.seq, now)
    finish_destructions(confirm)          # after COMMIT: destroy, then confirm in the log

No key is destroyed before a committed entry orders it, and an order stays pending (in
`key_destruction`) until an entry confirms the key is gone, so an erasure cut short at any point
is finished by the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from gateway.crypto import Keyring, KeyringError, decrypt_field, encrypt_field
from gateway.store.db import write_transaction
from gateway.store.keystore import destroy_key, key_fingerprint, put_key, wrapped_key
from gateway.store.models import KeyDestruction, Subject
from gateway.store.statements import Statement

_BY_PSEUDONYM = Statement(lambda pseudonym: Subject.select().where(Subject.pseudonym == pseudonym))


def find_subject(pseudonym: str) -> Subject | None:
    return _BY_PSEUDONYM.first(pseudonym)


def ensure_subject(keyring: Keyring, pseudonym: str, now: datetime) -> Subject:
    """The subject with this pseudonym, created with a fresh data key if new (call in a write)."""
    subject = find_subject(pseudonym)
    if subject is None:
        # An erased subject's key may still wait for destruction: it is destroyed now, never
        # used for new data (the committed order allows it; its confirmation comes later).
        for order in _orders(pseudonym):
            destroy_key(pseudonym, order.key_fingerprint)
        _, wrapped = keyring.new_data_key()
        # The key is stored first: a rolled-back subject leaves a harmless unused key behind.
        put_key(pseudonym, wrapped, now)
        subject = Subject.create(pseudonym=pseudonym, created_at=now)
    return subject


def data_key(keyring: Keyring, subject: Subject) -> bytes:
    wrapped = wrapped_key(subject.pseudonym)
    if wrapped is None:
        raise KeyringError("the subject's data key was destroyed")
    return keyring.unwrap_key(wrapped)


def _id_context(subject: Subject) -> str:
    return f"subject-id:{subject.pseudonym}"


def seal_subject_id(subject: Subject, subject_id: str, keyring: Keyring) -> None:
    """Keep the subject's raw id encrypted with its data key, if not kept yet (call in a write):
    what a recipient's resync names the subject by; destroying the key shreds it."""
    if subject.sealed_id is not None:
        return
    try:
        key = data_key(keyring, subject)
    except KeyringError:
        return  # no key to seal it with: a resync counts the subject as skipped
    sealed = encrypt_field(key, subject_id, _id_context(subject))
    Subject.update(sealed_id=sealed).where(Subject.pseudonym == subject.pseudonym).execute()
    subject.sealed_id = sealed


def unsealed_subject_id(subject: Subject, keyring: Keyring) -> str | None:
    """The subject's raw id, or None if it was never sealed or its key is gone."""
    if subject.sealed_id is None:
        return None
    try:
        return decrypt_field(data_key(keyring, subject), subject.sealed_id, _id_context(subject))
    except KeyringError:
        return None


def _orders(pseudonym: str | None = None) -> list[KeyDestruction]:
    """Pending orders to destroy a key, of one subject or of all, oldest first."""
    query = KeyDestruction.select().order_by(KeyDestruction.id)
    if pseudonym is not None:
        query = query.where(KeyDestruction.pseudonym == pseudonym)
    return list(query)


def destruction_pending(pseudonym: str) -> bool:
    """Whether a key of the subject was ordered destroyed and no entry confirms it yet."""
    return bool(_orders(pseudonym))


def unordered_key(pseudonym: str) -> str | None:
    """The fingerprint of the subject's key in the keystore, unless it is already ordered
    destroyed; None when there is no such key."""
    wrapped = wrapped_key(pseudonym)
    if wrapped is None:
        return None
    fingerprint = key_fingerprint(wrapped)
    ordered = any(order.key_fingerprint == fingerprint for order in _orders(pseudonym))
    return None if ordered else fingerprint


def order_destruction(pseudonym: str, fingerprint: str, ordered_by: int, now: datetime) -> None:
    """Record that audit entry `ordered_by` orders the key destroyed (in that entry's write)."""
    KeyDestruction.create(
        pseudonym=pseudonym, key_fingerprint=fingerprint, ordered_by=ordered_by, ordered_at=now
    )


def finish_destructions(confirm: Callable[[KeyDestruction], None]) -> None:
    """Destroy every key a committed entry ordered destroyed, then, in a write of its own per
    key, drop the order and let `confirm` append the entry saying the key is gone.

    Call outside a transaction, so that every order seen is committed. Destroying is idempotent:
    a key already gone (by an attempt cut short, or a concurrent one) is confirmed all the same,
    and only by whoever drops its order.
    """
    for order in _orders():
        destroy_key(order.pseudonym, order.key_fingerprint)
        with write_transaction():
            if KeyDestruction.delete().where(KeyDestruction.id == order.id).execute():
                confirm(order)
