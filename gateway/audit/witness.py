"""Witnesses: signed heads of the audit chain, published outside the database.

    witness = open_witness("instance/audit-witness.jsonl")   # or "https://witness.example/log"
    witness.publish(head)          # head: {seq, hash, at, key_id, every, signature}
    witness.latest()               # the head with the highest seq it holds, or None
    witness.recent()               # the heads it holds last (each to be checked), newest last

Whoever can rewrite the database can delete its checkpoints, but not the heads already handed
to a witness: verification holds the database against the latest of them.

- A file witness appends one canonical JSON line per head (created 0600, fsynced). Heads arrive
  in seq order from one sealer at a time; `recent()` and `latest()` read the file's last lines
  only.
- An HTTP witness receives each head as `POST <url>` (JSON body) and answers `GET <url>` with the
  latest head it holds (JSON), or 404 while it holds none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

from gateway.crypto import canonical_json
from gateway.errors import EXIT_TEMPFAIL, Unavailable

TAIL_BYTES = 64 * 1024  # the last lines of a file witness that `latest()` reads
TIMEOUT_SECONDS = 5.0
HEAD_KEYS = ("seq", "hash", "at", "key_id", "every", "signature")


class WitnessUnavailable(Unavailable):
    """The witness could not be written or read."""

    code, exit_code = "witness_unavailable", EXIT_TEMPFAIL
    client_message = "The audit witness cannot be read or written; nothing was verified."


class Witness(Protocol):
    def publish(self, head: Mapping[str, Any]) -> None: ...

    def latest(self) -> dict[str, Any] | None: ...

    def recent(self) -> list[dict[str, Any]]: ...


def seq_of(head: Mapping[str, Any]) -> int | None:
    """A head's seq if it is a plain integer (not a bool, a float or an infinity)."""
    seq = head.get("seq")
    return seq if type(seq) is int else None


def highest(heads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The head of highest seq; one that is no head is returned instead, to be reported."""
    best: dict[str, Any] | None = None
    for head in heads:
        seq = seq_of(head)
        if seq is None:
            return head
        if best is None or seq > int(best["seq"]):
            best = head
    return best


def _parsed(line: bytes) -> dict[str, Any]:
    try:
        head = json.loads(line)
    except ValueError:
        head = None
    if isinstance(head, dict):
        return head
    return {"seq": None, "line": line.decode("utf-8", "replace")}


def head_of(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What a witness holds of a checkpoint: exactly its signed fields and signature."""
    return {name: checkpoint.get(name) for name in HEAD_KEYS}


class FileWitness:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"file {self.path}"

    def publish(self, head: Mapping[str, Any]) -> None:
        line = canonical_json(head_of(head)) + b"\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write of one line: appends never interleave
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise WitnessUnavailable(f"{self.path}: cannot append a head: {exc}") from exc

    def latest(self) -> dict[str, Any] | None:
        """The head of highest seq among the file's last lines; a line that is not a head is
        returned as it is, so verification reports it rather than skipping past it."""
        return highest(self.recent())

    def recent(self) -> list[dict[str, Any]]:
        """The heads of the file's last lines, in file order (a line that is not JSON as
        `{"seq": None, "line": ...}`)."""
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - TAIL_BYTES))
                tail = handle.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise WitnessUnavailable(f"{self.path}: cannot read: {exc}") from exc
        lines = tail.split(b"\n")
        if size > TAIL_BYTES:
            lines = lines[1:]  # the first may be the end of a line cut by the seek
        return [_parsed(line) for line in lines if line]


class HttpWitness:
    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"endpoint {self.url}"

    def publish(self, head: Mapping[str, Any]) -> None:
        try:
            response = httpx.post(self.url, json=head_of(head), timeout=TIMEOUT_SECONDS)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise WitnessUnavailable(f"{self.url}: cannot publish a head: {exc}") from exc

    def latest(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(self.url, timeout=TIMEOUT_SECONDS)
            if response.status_code == 404:
                return None
            response.raise_for_status()
            head = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise WitnessUnavailable(f"{self.url}: cannot read the latest head: {exc}") from exc
        return head if isinstance(head, dict) else {"seq": None, "line": str(head)}

    def recent(self) -> list[dict[str, Any]]:
        head = self.latest()
        return [] if head is None else [head]


def open_witness(where: str) -> Witness:
    """A witness from its configured place: an http(s) URL, else a file path."""
    if where.startswith(("http://", "https://")):
        return HttpWitness(where)
    return FileWitness(Path(where))
