"""Verify the stored chain from the last head verified, kept in a signed file outside the database.

    found = verify_recorded(Path(config["AUDIT_VERIFIED_STATE"]), ring, resume=True,
                            now=datetime.now(UTC))
    found.from_seq, found.result                 # where it started; the Verification

A successful verification records its head `{seq, hash, key_id, verified_at, signature}`, signed
with the keyring, so that the next one (`resume=True`) checks only that the entry at `seq` still
has that hash and then verifies the entries after it: a daily check costs the new entries only.
The file lives outside the database, so whoever can rewrite the database cannot also move the
head; it is signed, so an edited file is refused rather than trusted. What a resumed check cannot
see is an edit strictly before the head that leaves the head's own hash as it was (an edited
entry no longer matching its hash): a full verification still finds it.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.audit import verify_database
from gateway.audit.chain import GENESIS, body_hash, row_body, timestamp
from gateway.audit.verification import Verification
from gateway.crypto import Keyring, canonical_json, verify_signature
from gateway.errors import ConfigurationError
from gateway.store.db import stream_rows
from gateway.store.models import AuditEntry

RECOVER = "run `gateway audit verify` without --resume to verify all and record it again"


class VerifiedStateInvalid(ConfigurationError):
    """The state file cannot be trusted (edited, foreign, unreadable) or cannot be written."""

    code = "verified_state_invalid"


@dataclass(frozen=True)
class VerifiedHead:
    """The last entry a verification found sound, and when."""

    seq: int
    hash: str
    key_id: str
    verified_at: str

    def payload(self) -> bytes:
        """The bytes its signature covers: the canonical JSON of every field."""
        return canonical_json(asdict(self))


@dataclass(frozen=True)
class Resumed:
    """A verification of the stored chain and the seq it started from."""

    from_seq: int
    result: Verification


def _refuse(path: Path, why: str) -> VerifiedStateInvalid:
    return VerifiedStateInvalid(f"{path}: {why}; {RECOVER}")


def _parse(path: Path, data: Any) -> tuple[VerifiedHead, str]:
    """The head and signature a state file holds, if it holds exactly those, well typed."""
    names = {"seq", "hash", "key_id", "verified_at", "signature"}
    if not isinstance(data, dict) or set(data) != names:
        raise _refuse(path, f"not a verified-head state (fields {sorted(names)})")
    texts = [data[name] for name in ("hash", "key_id", "verified_at", "signature")]
    seq = data["seq"]
    if type(seq) is not int or seq < 1 or not all(isinstance(t, str) for t in texts):
        raise _refuse(path, "a field of the verified-head state has the wrong type")
    head = VerifiedHead(seq, data["hash"], data["key_id"], data["verified_at"])
    return head, data["signature"]


def load_head(path: Path, ring: Keyring) -> VerifiedHead | None:
    """The head recorded at `path`, None if there is none; refused unless this keyring signed it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _refuse(path, f"unreadable verified-head state ({exc.__class__.__name__})") from exc
    head, signature = _parse(path, data)
    if head.key_id != ring.key_id:
        raise _refuse(path, f"signed under key {head.key_id!r}, not this keyring's")
    if not verify_signature(ring.public_key, signature, head.payload()):
        raise _refuse(path, "its signature does not verify: the file was edited")
    return head


def save_head(path: Path, head: VerifiedHead, ring: Keyring) -> None:
    """Write the signed head to `path`, mode 0600, whole or not at all (temp file, rename)."""
    text = json.dumps({**asdict(head), "signature": ring.sign(head.payload())}, indent=2)
    try:
        # mkstemp creates the file 0600 in the target's folder, so the rename stays atomic
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise VerifiedStateInvalid(f"{path}: cannot write the verified-head state: {exc}") from exc
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise VerifiedStateInvalid(f"{path}: cannot write the verified-head state: {exc}") from exc
    finally:
        Path(temporary).unlink(missing_ok=True)


def check_head(head: VerifiedHead) -> Verification | None:
    """None if the stored entry at the head's seq is still the one verified; else the failure,
    named at that seq (what changed behind it cannot be told without a full verification)."""
    query = AuditEntry.select().where(AuditEntry.seq == head.seq)
    with closing(stream_rows(query, batch=1)) as rows:
        row = next(rows, None)
    if row is None:
        problem = f"entry {head.seq}, the last verified head, is missing: the chain was cut"
        return Verification(False, 0, head.seq, problem)
    stored = row_body(row)
    if stored["hash"] != head.hash or body_hash(stored) != head.hash:
        problem = (
            f"entry {head.seq}, the last verified head, no longer has the hash verified at "
            f"{head.verified_at}: the chain was rewritten at or before it"
        )
        return Verification(False, 0, head.seq, problem)
    return None


def verify_recorded(path: Path, ring: Keyring, *, resume: bool, now: datetime) -> Resumed:
    """Verify the stored chain (from the recorded head with `resume`) and, when it is sound,
    record its new head at `path`."""
    head = load_head(path, ring) if resume else None
    start, anchor = (head.seq + 1, head.hash) if head else (1, GENESIS)
    broken = check_head(head) if head else None
    if broken is not None:
        return Resumed(start, broken)
    result = verify_database(first_seq=start, anchor=anchor)
    if not result.ok:
        return Resumed(start, result)  # the recorded head stays the last sound one
    if result.last_seq is not None and result.last_hash is not None:
        head = VerifiedHead(result.last_seq, result.last_hash, ring.key_id, timestamp(now))
    elif head is not None:
        head = replace(head, verified_at=timestamp(now))  # nothing new since
    if head is not None:  # an empty chain has no head to record
        save_head(path, head, ring)
    return Resumed(start, result)
