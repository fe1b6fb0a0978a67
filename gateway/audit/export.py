"""Audit exports that a regulator can verify offline, streamed in constant memory.

    for line in export_lines("jsonl", since, until, keyring, exported_at=now, every=100):
        out.write(line)
    verify_export(open("audit.jsonl"), public_key=published_key)   # -> Verification

An export is a header (format, public key, the seq range and the hash the range links to, and
where the first required checkpoint falls), the entries in seq order with each signed checkpoint
after its entry, and a footer signed over the counts of entries and checkpoints, the last hash
and the header's digest. Format 2 carries entries and checkpoints of either scheme (scheme 2
adds `scheme` and `entry_id` to an entry, `every` to a checkpoint); exports of format 1 still
verify. Every line is in
canonical form with exactly its record's keys, so verification re-renders each record and any
changed byte fails, even one that leaves the values readable.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from gateway.audit.chain import GENESIS, HASHED_FIELDS, HASHED_FIELDS_2
from gateway.audit.queries import iter_range, seq_range
from gateway.audit.sequencer import required_after
from gateway.audit.verification import ChainVerifier, Verification
from gateway.crypto import (
    SIGNATURE_ALGORITHM,
    Keyring,
    canonical_json,
    sha256_hex,
    verify_signature,
)
from gateway.errors import InvalidInput
from gateway.store.db import stream_rows
from gateway.store.models import AuditCheckpoint

FORMAT = "gateway-audit-export/2"
FORMAT_1 = "gateway-audit-export/1"
FORMATS = ("jsonl", "csv")
CSV_COLUMNS_1 = ("record", *HASHED_FIELDS, "hash", "key_id", "signature", "meta")
CSV_COLUMNS = (*CSV_COLUMNS_1[:-1], "scheme", "entry_id", "every", "meta")
JSON_COLUMNS = ("reasons", "fields", "meta")
INT_COLUMNS = ("seq", "scheme", "every")
CHECKPOINT_KEYS = {"record", "seq", "hash", "at", "key_id", "signature"}
# The keys each kind of record may have, exactly: a renamed key whose value is null changes no
# hash. An entry or a checkpoint has the keys of its scheme.
RECORD_KEYS: dict[str, list[set[str]]] = {
    "header": [
        {
            "record",
            "format",
            "algorithm",
            "key_id",
            "public_key",
            "since",
            "until",
            "first_seq",
            "anchor",
            "exported_at",
        }
    ],
    "entry": [{"record", *HASHED_FIELDS, "hash"}, {"record", *HASHED_FIELDS_2, "hash"}],
    "checkpoint": [CHECKPOINT_KEYS, {*CHECKPOINT_KEYS, "every"}],
    "footer": [
        {
            "record",
            "entries",
            "checkpoints",
            "last_seq",
            "last_hash",
            "header_digest",
            "signature",
        }
    ],
}
RECORD_KEYS["header"].append({*RECORD_KEYS["header"][0], "checkpoint_every", "next_checkpoint"})


class ExportFormatError(InvalidInput):
    """A line of an export is not a record in canonical form."""

    code = "invalid_export"


def _render_jsonl(record: Mapping[str, Any]) -> str:
    return canonical_json(record).decode("utf-8") + "\n"


def _render_csv(record: Mapping[str, Any], columns: tuple[str, ...] = CSV_COLUMNS) -> str:
    kind = record["record"]
    row: dict[str, Any] = {"record": kind}
    if kind in ("header", "footer"):
        row["meta"] = {k: v for k, v in record.items() if k != "record"}
    else:
        row.update({k: v for k, v in record.items() if k != "record"})
    cells = []
    for column in columns:
        value = row.get(column)
        if column in JSON_COLUMNS and column in row:
            value = canonical_json(value).decode("utf-8")
        cells.append("" if value is None else str(value))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _parse_csv(line: str, columns: tuple[str, ...] = CSV_COLUMNS) -> dict[str, Any]:
    cells = next(csv.reader([line]))
    if len(cells) != len(columns):
        raise ExportFormatError(f"expected {len(columns)} columns, found {len(cells)}")
    row = dict(zip(columns, cells, strict=True))
    kind = row["record"]
    if kind in ("header", "footer"):
        return {"record": kind, **json.loads(row["meta"])}
    names: tuple[str, ...]
    if kind == "entry":
        names = (HASHED_FIELDS_2 if row.get("scheme") else HASHED_FIELDS) + ("hash",)
    else:
        names = ("seq", "hash", "at", "key_id", "signature")
        names += ("every",) if row.get("every") else ()
    record: dict[str, Any] = {"record": kind}
    for name in names:
        text = row[name]
        if name in JSON_COLUMNS:
            record[name] = json.loads(text)
        elif name in INT_COLUMNS:
            record[name] = int(text)
        else:
            record[name] = text or None
    return record


RENDER = {"jsonl": _render_jsonl, "csv": _render_csv}


def parse_line(line: str, fmt: str, columns: tuple[str, ...] = CSV_COLUMNS) -> dict[str, Any]:
    """Parse one export line, insisting it is exactly the canonical rendering of its record
    (`columns`: those of the CSV file it is read from)."""
    try:
        record = json.loads(line) if fmt == "jsonl" else _parse_csv(line, columns)
    except (ValueError, StopIteration, csv.Error) as exc:
        raise ExportFormatError(f"not a record: {exc}") from exc
    if not isinstance(record, dict) or record.get("record") not in RECORD_KEYS:
        raise ExportFormatError("not a record")
    if set(record) not in RECORD_KEYS[record["record"]]:
        raise ExportFormatError(f"not the fields of a {record['record']}")
    rendered = _render_jsonl(record) if fmt == "jsonl" else _render_csv(record, columns)
    if rendered != line:
        raise ExportFormatError("not in canonical form")
    return record


def _footer(
    count: int, checkpoints: int, last_seq: int | None, last_hash: str, header_line: str
) -> dict[str, Any]:
    return {
        "record": "footer",
        "entries": count,
        "checkpoints": checkpoints,
        "last_seq": last_seq,
        "last_hash": last_hash,
        "header_digest": sha256_hex(header_line.encode("utf-8")),
    }


def _signed_part(footer: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in footer.items() if k != "signature"})


def export_lines(
    fmt: str,
    since: datetime | None,
    until: datetime | None,
    keyring: Keyring,
    *,
    exported_at: str,
    every: int,
) -> Iterator[str]:
    """The export as text lines; reads one entry at a time. `every` is the configured interval
    of required checkpoints."""
    render = RENDER[fmt]
    if fmt == "csv":
        yield ",".join(CSV_COLUMNS) + "\n"
    span = seq_range(since, until)
    first, last = span if span else (0, -1)
    entries = iter_range(first, last)
    opening = next(entries, None)
    anchor: str = opening["prev_hash"] if opening else GENESIS
    header = {
        "record": "header",
        "format": FORMAT,
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": keyring.key_id,
        "public_key": keyring.public_key,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "first_seq": first if span else None,
        "anchor": anchor,
        "exported_at": exported_at,
    }
    header["checkpoint_every"], header["next_checkpoint"] = required_after(
        first if span else None, every
    )
    header_line = render(header)
    yield header_line
    fields = [f for f in AuditCheckpoint._meta.sorted_fields if f.name != "id"]  # type: ignore[attr-defined]
    checkpoints = stream_rows(
        AuditCheckpoint.select(*fields)
        .where(AuditCheckpoint.seq.between(first, last))
        .order_by(AuditCheckpoint.seq)
    )
    pending = next(checkpoints, None)
    count, signed, last_hash, last_seq = 0, 0, anchor, None
    entry = opening
    while entry is not None:
        yield render({"record": "entry", **entry})
        while pending is not None and pending["seq"] <= entry["seq"]:
            yield render({"record": "checkpoint", **pending})
            pending, signed = next(checkpoints, None), signed + 1
        count, last_hash, last_seq = count + 1, entry["hash"], entry["seq"]
        entry = next(entries, None)
    footer = _footer(count, signed, last_seq, last_hash, header_line)
    footer["signature"] = keyring.sign(_signed_part(footer))
    yield render(footer)


def _footer_problem(
    footer: Mapping[str, Any], header_line: str, key: str, result: Verification
) -> str | None:
    expected = _footer(
        result.entries, result.checkpoints, result.last_seq, result.last_hash or "", header_line
    )
    if any(footer.get(k) != v for k, v in expected.items()):
        return "the footer does not match the entries and header before it"
    if not verify_signature(key, str(footer.get("signature")), _signed_part(footer)):
        return "the footer signature does not verify"
    return None


def verify_export(lines: Iterable[str], public_key: str | None = None) -> Verification:
    """Verify an export without the database; `public_key` pins the key it must be signed with."""
    stream = iter(lines)
    first_line = next(stream, "")
    fmt = "jsonl" if first_line.startswith("{") else "csv"
    columns = CSV_COLUMNS_1 if first_line == ",".join(CSV_COLUMNS_1) + "\n" else CSV_COLUMNS
    if fmt == "csv" and first_line != ",".join(columns) + "\n":
        return Verification(False, 0, None, "the CSV column names are not this format's")
    header_line = first_line if fmt == "jsonl" else next(stream, "")
    try:
        header = parse_line(header_line, fmt, columns)
    except ExportFormatError as exc:
        return Verification(False, 0, None, f"the header is unreadable: {exc}")
    # format 1 (before scheme 2) in its own columns and header; format 2 in its own
    expected = FORMAT_1 if columns == CSV_COLUMNS_1 else FORMAT
    if fmt == "jsonl":
        expected = FORMAT if "checkpoint_every" in header else FORMAT_1
    if header["record"] != "header" or header.get("format") != expected:
        return Verification(False, 0, None, "not an audit export of this format")
    key = header["public_key"]
    if public_key is not None and public_key != key:
        return Verification(False, 0, None, "the export is signed with a different key")
    verifier = ChainVerifier(
        {header["key_id"]: key},
        first_seq=header["first_seq"] or 1,
        anchor=header["anchor"],
        every=header.get("checkpoint_every"),
        due=header.get("next_checkpoint"),
    )
    for line in stream:
        try:
            record = parse_line(line, fmt, columns)
        except ExportFormatError as exc:
            return Verification(False, verifier.entries, verifier.expected, f"line: {exc}")
        kind = record["record"]
        if kind == "footer":
            result = verifier.finish()
            problem = result.problem or _footer_problem(record, header_line, key, result)
            if problem and result.ok:
                return Verification(False, result.entries, None, problem, result.checkpoints)
            if next(stream, None) is not None:
                return Verification(False, result.entries, None, "lines after the footer")
            return result
        verifier.feed(kind, record)
    result = verifier.finish()
    if not result.ok:
        return result
    return Verification(False, result.entries, verifier.expected, "cut short: no footer")
