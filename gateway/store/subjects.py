"""Subjects: a pseudonym and a wrapped data key, created on first write."""

from __future__ import annotations

from datetime import datetime

from gateway.crypto import Keyring
from gateway.store.models import Subject


def find_subject(pseudonym: str) -> Subject | None:
    return Subject.get_or_none(Subject.pseudonym == pseudonym)


def ensure_subject(keyring: Keyring, pseudonym: str, now: datetime) -> Subject:
    """The subject with this pseudonym, created with a fresh data key if new (call in a write)."""
    subject = find_subject(pseudonym)
    if subject is None:
        _, wrapped = keyring.new_data_key()
        subject = Subject.create(pseudonym=pseudonym, wrapped_key=wrapped, created_at=now)
    return subject


def data_key(keyring: Keyring, subject: Subject) -> bytes:
    return keyring.unwrap_key(subject.wrapped_key)
