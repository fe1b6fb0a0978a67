"""Subjects: a pseudonym in the main database, a data key in the keystore."""

from __future__ import annotations

from datetime import datetime

from gateway.crypto import Keyring, KeyringError
from gateway.store.keystore import destroy_key, put_key, wrapped_key
from gateway.store.models import Subject


def find_subject(pseudonym: str) -> Subject | None:
    return Subject.get_or_none(Subject.pseudonym == pseudonym)


def ensure_subject(keyring: Keyring, pseudonym: str, now: datetime) -> Subject:
    """The subject with this pseudonym, created with a fresh data key if new (call in a write)."""
    subject = find_subject(pseudonym)
    if subject is None:
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


def shred_key(pseudonym: str) -> bool:
    """Destroy a subject's data key: what was encrypted with it can never be read again."""
    return destroy_key(pseudonym)
