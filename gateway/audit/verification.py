"""Verify the audit chain, from the database or from an export, in one streaming pass.

    verifier = ChainVerifier({ring.key_id: ring.public_key})
    for kind, record in stored_records():        # ("entry", {...}) and ("checkpoint", {...})
        verifier.feed(kind, record)
    verifier.finish()                            # -> Verification(ok, entries, first_bad_seq, ...)

The first problem found names the exact seq: an edited entry, a missing one, one inserted or
moved (the others renumbered), a link that does not match, entries cut off behind a signed
checkpoint, a checkpoint whose signature or hash is wrong, a required checkpoint that is missing
(scheme 2: each checkpoint signs the interval that places the next one), and an entry the
sequencer chained in place of a pending entry that was edited or copied.

`verify_stored` also holds the database against what lives outside it: the latest head a
witness holds (an emptied log, a cut tail and a rebuilt chain each fail it), the HMACs of the
entries still pending, and how long the newest entries have gone without a signed head.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from peewee import fn

from gateway.audit.chain import (
    GENESIS,
    SCHEME,
    Action,
    body_hash,
    checkpoint_payload,
    next_required,
    pending_mac,
    row_body,
    timestamp,
)
from gateway.crypto import Keyring, verify_signature
from gateway.errors import GatewayError
from gateway.store.db import stream_rows
from gateway.store.models import AuditCheckpoint, AuditEntry, AuditPending


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    last_seq: int | None = None
    last_hash: str | None = None


class Broken(GatewayError):
    """The chain is broken at `seq`; verification reports it rather than raising it."""

    status, code = 409, "chain_broken"

    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(f"seq {seq}: {problem}")
        self.seq, self.problem = seq, problem


class ChainVerifier:
    """Feed entries in seq order, each checkpoint right after its entry; then `finish()`.

    `every` and `due` give the interval in force at `first_seq` and the seq of the next
    required checkpoint (None: none required, as for an export of scheme 1).
    """

    def __init__(
        self,
        public_keys: Mapping[str, str],
        *,
        first_seq: int = 1,
        anchor: str = GENESIS,
        every: int | None = None,
        due: int | None = None,
    ) -> None:
        self.public_keys = public_keys
        self.expected, self.prev, self.before_prev = first_seq, anchor, ""
        self.first_seq = first_seq
        self.entries = self.checkpoints = 0
        self.broken: Broken | None = None
        self.every = every
        self.due = due if due is not None else every
        self.awaiting: int | None = None  # a required checkpoint that must follow its entry

    def feed(self, kind: str, record: Mapping[str, Any]) -> None:
        if self.broken is not None:
            return
        try:
            self._entry(record) if kind == "entry" else self._checkpoint(record)
        except Broken as broken:
            self.broken = broken
        except (KeyError, TypeError, ValueError) as exc:
            given = record.get("seq")
            seq = given if isinstance(given, int) else self.expected
            self.broken = Broken(seq, f"malformed {kind}: {exc.__class__.__name__} {exc}")

    def _entry(self, entry: Mapping[str, Any]) -> None:
        self._check_awaited()
        self.entries += 1
        seq = entry["seq"]
        if seq < self.expected:
            raise Broken(seq, f"entry {seq} appears again after {self.expected - 1}")
        if seq > self.expected:
            raise Broken(self.expected, f"entry {self.expected} is missing")
        if body_hash(entry) != entry["hash"]:
            raise Broken(*self._diagnose(entry))
        if entry["prev_hash"] != self.prev:
            raise Broken(seq, "does not link to the entry before it (this or that one changed)")
        if entry["action"] == Action.AUDIT_REJECTED.value:
            raise Broken(seq, _rejection(entry))
        self.before_prev, self.prev = self.prev, entry["hash"]
        self.expected += 1
        if self.due is not None and self.every is not None and seq >= self.due:
            if entry.get("scheme") == SCHEME:
                self.awaiting = seq
            else:  # scheme 1 required none
                self.due = next_required(seq, self.every)

    def _check_awaited(self) -> None:
        if self.awaiting is not None:
            raise Broken(
                self.awaiting,
                f"the required checkpoint at seq {self.awaiting} is missing: it was deleted",
            )

    def _diagnose(self, entry: Mapping[str, Any]) -> tuple[int, str]:
        """Say what a hash mismatch most likely is, at the seq where it happened."""
        seq = entry["seq"]
        if seq > self.first_seq and body_hash({**entry, "seq": seq - 1}) == entry["hash"]:
            if entry["prev_hash"] == self.before_prev:
                return seq - 1, f"entry {seq - 1} was inserted; the entries after it renumbered"
        if body_hash({**entry, "seq": seq + 1}) == entry["hash"]:
            return seq, f"entry written as {seq + 1} stands at {seq}: reordered or one deleted"
        return seq, "content does not match its hash: the entry was edited"

    def _checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        seq, last = checkpoint["seq"], self.expected - 1
        if seq < self.first_seq:
            return  # signs a part of the chain this verification does not cover
        if seq > last:
            raise Broken(
                last + 1, f"entries {last + 1}..{seq} are missing: a checkpoint signs {seq}"
            )
        public_key = self.public_keys.get(checkpoint["key_id"])
        every = checkpoint.get("every")
        payload = checkpoint_payload(
            seq, checkpoint["hash"], checkpoint["at"], checkpoint["key_id"], every
        )
        if public_key is None or not verify_signature(public_key, checkpoint["signature"], payload):
            raise Broken(seq, "checkpoint signature does not verify")
        if seq < last or checkpoint["hash"] != self.prev:
            raise Broken(seq, "entry does not match its signed checkpoint: the chain was rewritten")
        self.checkpoints += 1
        if self.awaiting == seq:
            self.awaiting = None
        interval = every or self.every
        if interval is not None:
            self.every, self.due = interval, next_required(seq, interval)

    def finish(self) -> Verification:
        if self.broken is None:
            try:
                self._check_awaited()
            except Broken as broken:
                self.broken = broken
        last_seq = self.expected - 1 if self.expected > self.first_seq else None
        if self.broken is not None:
            b = self.broken
            return Verification(False, self.entries, b.seq, b.problem, self.checkpoints)
        return Verification(True, self.entries, None, None, self.checkpoints, last_seq, self.prev)


def _rejection(entry: Mapping[str, Any]) -> str:
    fields = entry.get("fields")
    stored = fields.get("stored", {}) if isinstance(fields, Mapping) else {}
    what = f"pending entry {stored.get('entry_id')}" if isinstance(stored, Mapping) else "an entry"
    if entry.get("outcome") == "already_chained":
        return f"{what} was chained already: a copy was written to the pending entries"
    return f"{what} was edited before it was chained: its HMAC does not verify"


def stored_records(first_seq: int = 1) -> Iterator[tuple[str, dict[str, Any]]]:
    """Entries from `first_seq` on, in seq order with each checkpoint after its entry, in
    constant memory (both reads start at `first_seq` through the seq indexes)."""
    fields = [f for f in AuditCheckpoint._meta.sorted_fields if f.name != "id"]  # type: ignore[attr-defined]
    checkpoints = stream_rows(
        AuditCheckpoint.select(*fields)
        .where(AuditCheckpoint.seq >= first_seq)
        .order_by(AuditCheckpoint.seq)
    )
    pending = next(checkpoints, None)
    entries = AuditEntry.select().where(AuditEntry.seq >= first_seq).order_by(AuditEntry.seq)
    for row in stream_rows(entries):
        entry = row_body(row)
        yield "entry", entry
        while pending is not None and pending["seq"] <= entry["seq"]:
            yield "checkpoint", pending
            pending = next(checkpoints, None)
    while pending is not None:
        yield "checkpoint", pending
        pending = next(checkpoints, None)


@dataclass(frozen=True)
class Outside:
    """What the database is held against from outside it (each part optional)."""

    ring: Keyring | None = None  # checks the HMACs of the entries still pending
    witnessed: Sequence[Mapping[str, Any]] = ()  # the heads a witness holds last
    now: datetime | None = None
    unsigned_grace: float | None = None  # seconds an entry may wait for a signed head


def verify_stored(
    public_keys: Mapping[str, str],
    *,
    first_seq: int = 1,
    anchor: str = GENESIS,
    every: int | None = None,
    outside: Outside | None = None,
) -> Verification:
    """Verify the chain held in the database: all of it, or from `first_seq` on, the entry
    there linking to `anchor` (the hash of the entry before it, verified earlier). With
    `every` (the configured interval), a checkpoint is required wherever the one before it
    says; with `outside`, the database is also held against what lives outside it."""
    from gateway.audit.sequencer import required_after

    if outside is not None and outside.witnessed:
        against = against_witness(outside.witnessed, public_keys)
        if against is not None:
            return against
    interval, due = required_after(first_seq, every) if every else (None, None)
    verifier = ChainVerifier(
        public_keys, first_seq=first_seq, anchor=anchor, every=interval, due=due
    )
    try:
        for kind, record in stored_records(first_seq):
            verifier.feed(kind, record)
            if verifier.broken is not None:
                break
    except (ValueError, TypeError) as exc:
        # A column edited into a value its type cannot hold (text in an integer): the row
        # cannot be placed in the chain, so no seq can be named for it.
        return Verification(
            False, verifier.entries, None, f"unreadable row: {exc}", verifier.checkpoints
        )
    result = verifier.finish()
    if result.ok and outside is not None:
        problem = _pending_problem(outside.ring) or _unsigned_tail(outside)
        if problem is not None:
            seq, text = problem
            return replace(result, ok=False, first_bad_seq=seq, problem=text)
    return result


def _signed(head: Mapping[str, Any], public_keys: Mapping[str, str]) -> bool:
    seq = head.get("seq")
    if type(seq) is not int:
        return False
    try:
        payload = checkpoint_payload(
            seq, str(head["hash"]), head["at"], head["key_id"], head.get("every")
        )
        public_key = public_keys.get(head["key_id"])
        return public_key is not None and verify_signature(public_key, head["signature"], payload)
    except (KeyError, TypeError, ValueError):
        return False


def against_witness(
    heads: Sequence[Mapping[str, Any]], public_keys: Mapping[str, str]
) -> Verification | None:
    """Every head the witness holds must be signed, and the database must still hold, at its
    seq, the entry of the latest of them."""
    from gateway.audit.sequencer import chain_head

    if not all(_signed(head, public_keys) for head in heads):
        problem = "a head the witness holds is not signed by a known key: it was forged"
        return Verification(False, 0, None, problem)
    head = max(heads, key=lambda h: int(h["seq"]))
    seq, entry_hash = int(head["seq"]), str(head["hash"])
    last, _ = chain_head()
    if last == 0:
        problem = (
            f"the log is empty, yet the witness holds a head signed at seq {seq}: "
            "the audit tables were emptied"
        )
        return Verification(False, 0, 1, problem)
    if last < seq:
        problem = (
            f"entries {last + 1}..{seq} are missing: the witness holds a head signed at seq "
            f"{seq}, so the tail of the log was cut off"
        )
        return Verification(False, 0, last + 1, problem)
    stored = AuditEntry.select(AuditEntry.hash).where(AuditEntry.seq == seq).scalar()
    if stored != entry_hash:
        problem = (
            f"entry {seq} is not the entry the witness holds a signed head of: "
            "the chain was rebuilt"
        )
        return Verification(False, 0, seq, problem)
    return None


def _pending_problem(ring: Keyring | None) -> tuple[int | None, str] | None:
    """An entry waiting to be chained whose HMAC does not verify: edited while it waited."""
    if ring is None:
        return None
    for row in stream_rows(AuditPending.select().order_by(AuditPending.id)):
        if pending_mac(row, ring) != row["mac"]:
            return None, (
                f"pending entry {row['entry_id']} (id {row['id']}) was edited or moved while it "
                "waited to be chained: its HMAC does not verify"
            )
        chained = AuditEntry.select(AuditEntry.seq).where(AuditEntry.entry_id == row["entry_id"])
        seq = chained.scalar()
        if seq is not None:
            return int(seq), (
                f"pending entry {row['entry_id']} (id {row['id']}) is a copy of entry {seq}, "
                "chained already"
            )
    return None


def _unsigned_tail(outside: Outside) -> tuple[int | None, str] | None:
    """The oldest entry that has gone longer than the grace without a signed head over it."""
    if outside.now is None or outside.unsigned_grace is None:
        return None
    signed = AuditCheckpoint.select(fn.MAX(AuditCheckpoint.seq)).scalar() or 0
    cutoff = timestamp(outside.now - timedelta(seconds=outside.unsigned_grace))
    oldest = (
        AuditEntry.select(fn.MIN(AuditEntry.seq))
        .where((AuditEntry.seq > signed) & (AuditEntry.at < cutoff))
        .scalar()
    )
    if oldest is None:
        return None
    return int(oldest), (
        f"entries from seq {oldest} on were appended more than {outside.unsigned_grace:g} s "
        "ago and no signed head covers them: the sealer is not running"
    )
