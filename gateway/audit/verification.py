"""Verify the audit chain, from the database or from an export, in one streaming pass.

    verifier = ChainVerifier({ring.key_id: ring.public_key})
    for kind, record in stored_records():        # ("entry", {...}) and ("checkpoint", {...})
        verifier.feed(kind, record)
    verifier.finish()                            # -> Verification(ok, entries, first_bad_seq, ...)

The first problem found names the exact seq: an edited entry, a missing one, one inserted or
moved (the others renumbered), a link that does not match, entries cut off behind a signed
checkpoint, and a checkpoint whose signature or hash is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from playhouse.shortcuts import model_to_dict

from gateway.audit.chain import GENESIS, body_hash, checkpoint_payload, row_body
from gateway.crypto import verify_signature
from gateway.errors import GatewayError
from gateway.store.db import stream_rows
from gateway.store.models import AuditCheckpoint, AuditEntry


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


def checkpoint_body(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    body: dict[str, Any] = model_to_dict(checkpoint, exclude=[AuditCheckpoint.id])
    return body


class ChainVerifier:
    """Feed entries in seq order, each checkpoint right after its entry; then `finish()`."""

    def __init__(
        self, public_keys: Mapping[str, str], *, first_seq: int = 1, anchor: str = GENESIS
    ) -> None:
        self.public_keys = public_keys
        self.expected, self.prev, self.before_prev = first_seq, anchor, ""
        self.first_seq = first_seq
        self.entries = self.checkpoints = 0
        self.broken: Broken | None = None

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
        self.before_prev, self.prev = self.prev, entry["hash"]
        self.expected += 1

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
        payload = checkpoint_payload(
            seq, checkpoint["hash"], checkpoint["at"], checkpoint["key_id"]
        )
        if public_key is None or not verify_signature(public_key, checkpoint["signature"], payload):
            raise Broken(seq, "checkpoint signature does not verify")
        if seq < last or checkpoint["hash"] != self.prev:
            raise Broken(seq, "entry does not match its signed checkpoint: the chain was rewritten")
        self.checkpoints += 1

    def finish(self) -> Verification:
        last_seq = self.expected - 1 if self.expected > self.first_seq else None
        if self.broken is not None:
            b = self.broken
            return Verification(False, self.entries, b.seq, b.problem, self.checkpoints)
        return Verification(True, self.entries, None, None, self.checkpoints, last_seq, self.prev)


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


def verify_stored(
    public_keys: Mapping[str, str], *, first_seq: int = 1, anchor: str = GENESIS
) -> Verification:
    """Verify the chain held in the database: all of it, or from `first_seq` on, the entry
    there linking to `anchor` (the hash of the entry before it, verified earlier)."""
    verifier = ChainVerifier(public_keys, first_seq=first_seq, anchor=anchor)
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
    return verifier.finish()
