"""Signed heads: every entry is covered by a signature, and a witness, within about a second.

    seal(ring, every, witness)              # chain what is pending, sign the head, publish it
    Sealer(app).start()                     # ... every AUDIT_HEAD_SECONDS, in a daemon thread

Required checkpoints (every AUDIT_CHECKPOINT_EVERY entries) are signed as entries are chained.
Between them, the newest entries would be covered by no signature: whoever can write the
database could cut them off unnoticed. The sealer closes that window: each tick it signs the
chain head if no checkpoint covers it yet and hands that head to the witness, outside the
database. Every serving worker and the scheduler run one; the sequencer lock lets one sign at a
time, and the others find the head signed. A command-line process seals once after its writes.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from peewee import PeeweeException

from gateway.audit.sequencer import (
    BATCH,
    SEQUENCER_LOCK,
    chain_head,
    drain,
    has_pending,
    sign_checkpoint,
)
from gateway.audit.verification import against_witness
from gateway.audit.witness import Witness, head_of
from gateway.crypto import Keyring
from gateway.errors import Conflict, GatewayError
from gateway.store.db import try_lock, write_transaction
from gateway.store.models import AuditCheckpoint

log = logging.getLogger("gateway.audit")


class WitnessMismatch(Conflict):
    """The witness holds a head the database no longer matches: the log was tampered with."""

    code = "witness_mismatch"


def latest_checkpoint() -> dict[str, Any] | None:
    fields = [f for f in AuditCheckpoint._meta.sorted_fields if f.name != "id"]  # type: ignore[attr-defined]
    query = AuditCheckpoint.select(*fields).order_by(AuditCheckpoint.seq.desc()).limit(1)
    row: dict[str, Any] | None = query.dicts().first()
    return row


def sign_head(ring: Keyring, every: int, *, wait: bool) -> dict[str, Any] | None:
    """Sign the chain head unless a checkpoint covers it; returns the latest checkpoint, or
    None for an empty chain or when another process holds the sequencer lock."""
    with write_transaction(serialize=False):
        if not try_lock(SEQUENCER_LOCK, wait=wait):
            return None
        seq, entry_hash = chain_head()
        latest = latest_checkpoint()
        if seq == 0 or (latest is not None and latest["seq"] >= seq):
            return latest
        checkpoint = sign_checkpoint(seq, entry_hash, ring, every, datetime.now(UTC))
        AuditCheckpoint.insert(**checkpoint).execute()
        return checkpoint


def seal(
    ring: Keyring, every: int, witness: Witness, *, wait: bool = False
) -> dict[str, Any] | None:
    """Chain what is pending, sign the head and publish it to `witness` if it holds an older
    one; returns the head published (None when nothing was). Takes no write lock unless there
    is something to chain or sign, so idle ticks cost two reads."""
    if has_pending():
        drain(ring, every, rounds=1_000_000 // BATCH, wait=wait)
        if has_pending() and not wait:
            return None  # another process is chaining; it or the next tick signs the head
    seq, _ = chain_head()
    head = latest_checkpoint()
    if seq and (head is None or head["seq"] < seq):
        head = sign_head(ring, every, wait=wait)
    if head is None or _published.get(repr(witness), 0) >= head["seq"]:
        return None
    held = witness.latest()
    if held is not None and against_witness([held], {ring.key_id: ring.public_key}):
        # The database no longer holds what the witness was given (a cut tail, a rebuilt
        # chain), or the witness holds a forgery: publishing a newer head would bury that.
        raise WitnessMismatch(
            f"{witness!r} holds a head the database does not match; not publishing: "
            "run `gateway audit verify`"
        )
    behind = held is None or held["seq"] < head["seq"]
    if behind:
        witness.publish(head_of(head))
    _published[repr(witness)] = head["seq"]
    return head if behind else None


# The seq of the last head this process saw a witness hold, by witness: a tick that finds the
# head no newer reads nothing from the witness.
_published: dict[str, int] = {}


class Sealer(threading.Thread):
    """Seal every `AUDIT_HEAD_SECONDS` in the background of a serving process."""

    def __init__(self, app: Flask) -> None:
        super().__init__(name="gateway-audit-sealer", daemon=True)
        self.app = app
        self.interval = float(app.config["AUDIT_HEAD_SECONDS"])
        self.stopping = threading.Event()
        self.woken = threading.Event()

    def wake(self) -> None:
        """Chain what was just committed, soon, off the request's path."""
        self.woken.set()

    def run(self) -> None:
        deadline = time.monotonic() + self.interval
        while not self.stopping.is_set():
            if self.woken.wait(timeout=max(0.0, deadline - time.monotonic())):
                self.woken.clear()
                self.tick(chain_only=True)
            if time.monotonic() >= deadline:
                self.tick()
                deadline = time.monotonic() + self.interval

    def tick(self, *, chain_only: bool = False) -> None:
        from gateway.audit import chain_now, seal_now
        from gateway.store.db import database

        try:
            with self.app.app_context():
                chain_now() if chain_only else seal_now()
        except (GatewayError, PeeweeException) as exc:
            log.warning("audit head not sealed: %s", exc)
        finally:
            if not database.is_closed():
                database.close()  # back to the pool

    def stop(self) -> None:
        """Stop ticking and seal once more (what the last requests appended)."""
        self.stopping.set()
        self.woken.set()
        self.join(timeout=self.interval + 5)
        self.tick()
