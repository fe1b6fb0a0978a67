"""Exports made before audit scheme 2 (format 1) still verify offline, by the API's code and the
CLI, and still fail on a changed byte; exports made now are format 2.

The two files under fixtures/ were written by the gateway of schema version 4 (`gateway demo`,
`gateway audit checkpoint`, then `gateway audit export` as JSON lines and as CSV); their public
key is the one their header carries.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.export import FORMAT, FORMAT_1, verify_export
from tests.conftest import Caller

FIXTURES = Path(__file__).parent / "fixtures"
OLD = {"jsonl": FIXTURES / "export-format-1.jsonl", "csv": FIXTURES / "export-format-1.csv"}
ENTRIES = {"jsonl": 15, "csv": 16}  # each export's own request is its last entry


def header_of(path: Path) -> dict[str, Any]:
    """The header record of an export (in CSV, the `meta` cell of its second line)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        header: dict[str, Any] = json.loads(lines[0])
        return header
    cells = next(csv.reader([lines[1]]))
    meta: dict[str, Any] = json.loads(cells[-1])
    return meta


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_format_1_export_still_verifies(fmt: str, runner: Any) -> None:
    path = OLD[fmt]
    key = header_of(path)["public_key"]
    with path.open(encoding="utf-8", newline="") as handle:
        result = verify_export(handle, public_key=key)
    assert (result.ok, result.entries, result.checkpoints) == (True, ENTRIES[fmt], 1), result

    cli = runner.invoke(args=["audit", "verify", "--file", str(path), "--public-key", key])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["ok"] is True


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_changed_byte_in_a_format_1_export_fails(fmt: str, tmp_path: Path) -> None:
    text = OLD[fmt].read_text(encoding="utf-8")
    edited = text.replace('"outcome":"recorded"', '"outcome":"refused"', 1)
    if fmt == "csv":
        edited = text.replace(",recorded,", ",refused,", 1)
    assert edited != text
    path = tmp_path / f"edited.{fmt}"
    path.write_text(edited, encoding="utf-8")
    with path.open(encoding="utf-8", newline="") as handle:
        result = verify_export(handle)
    assert result.ok is False
    assert result.problem


def test_a_new_export_is_format_2_and_says_where_checkpoints_are_due(
    auditor: Caller, shop: Caller
) -> None:
    body = {
        "subject_id": "alice",
        "purpose": "recommendations",
        "candidates": [{"id": "b-1", "category": "books"}],
    }
    assert shop.post("/v1/personalize", body).status_code == 200
    response = auditor.get("/v1/audit/export", query_string={"format": "jsonl"})
    assert response.status_code == 200
    lines = response.get_data(as_text=True).splitlines(keepends=True)
    header = json.loads(lines[0])
    assert header["format"] == FORMAT != FORMAT_1
    assert header["checkpoint_every"] == 100 and header["next_checkpoint"] == 100
    entries = [json.loads(line) for line in lines if '"record":"entry"' in line]
    assert entries and all(e["scheme"] == 2 and len(e["entry_id"]) == 36 for e in entries)
    assert verify_export(lines).ok
