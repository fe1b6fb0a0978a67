"""Audit exports: streamed, verifiable offline without the database, and every byte counts.

A chain is written through the API once per module (a checkpoint every 5 entries); each test
exports from its own copy, over HTTP as an auditor and with `gateway audit export`, then checks
the file the way a regulator would: `verify_export`, or `gateway audit verify --file` on a machine
that has neither the database nor the keyring.
"""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from click.testing import CliRunner
from flask import Flask

from gateway import keyring, policies
from gateway.audit.chain import GENESIS, Action, AuditRecord, timestamp
from gateway.audit.export import CSV_COLUMNS, export_lines, parse_line, verify_export
from gateway.audit.sequencer import append_chained
from gateway.audit.verification import Verification
from gateway.cli import main
from gateway.crypto import Keyring
from gateway.store.db import database, write_transaction
from tests.audit import CALENDAR, build_history, checkpoints, entries
from tests.conftest import Caller, verify_audit

EVERY = 5
TOTAL = 22  # the export's own audit entry makes 23: checkpoints at 5, 10, 15 and 20
FORMATS = ["jsonl", "csv"]

Json = dict[str, Any]
Lines = list[str]


@pytest.fixture
def public_key(auditor: Caller) -> str:
    """The signing key the gateway publishes."""
    response = auditor.get("/v1/keys/signing")
    assert response.status_code == 200
    key: str = response.get_json()["public_key"]
    return key


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The `gateway` console script; FlaskGroup sets FLASK_RUN_FROM_CLI, restored after."""
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "false")
    return CliRunner()


def split(text: str) -> Lines:
    """Lines with their endings, split the way `open(path, newline="")` reads a file."""
    return io.StringIO(text, newline="").readlines()


def http_export(caller: Caller, fmt: str, **window: str) -> Lines:
    response = caller.get("/v1/audit/export", query_string={"format": fmt, **window})
    assert response.status_code == 200, response.get_json()
    assert response.is_streamed
    assert response.mimetype == ("application/x-ndjson" if fmt == "jsonl" else "text/csv")
    assert response.headers["Content-Disposition"].endswith(f'.{fmt}"')
    return split(response.get_data(as_text=True))


def cli_export(runner: Any, path: Path, fmt: str, *window: str) -> Lines:
    args = ["audit", "export", "--format", fmt, "--output", str(path), *window]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    with path.open(encoding="utf-8", newline="") as handle:
        return handle.readlines()


def records(lines: Lines) -> list[Json]:
    fmt = "jsonl" if lines[0].startswith("{") else "csv"
    return [parse_line(line, fmt) for line in (lines if fmt == "jsonl" else lines[1:])]


def kinds(lines: Lines) -> list[str]:
    return [record["record"] for record in records(lines)]


def offline_verify(console: CliRunner, tmp_path: Path, path: Path, *extra: str) -> tuple[int, Json]:
    """`gateway audit verify --file` with an empty instance folder: no database, no keyring."""
    home = tmp_path / "regulator"
    home.mkdir(exist_ok=True)
    args = ["audit", "verify", "--file", str(path), *extra]
    result = console.invoke(main, args, env={"GATEWAY_HOME": str(home)})
    assert list(home.iterdir()) == [], "offline verification must not create an instance"
    report: Json = json.loads(result.stdout)
    return result.exit_code, report


# --- exports verify, online and offline --------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("caller_name", ["auditor", "admin"])
def test_an_http_export_verifies_offline(
    request: pytest.FixtureRequest, app: Flask, fmt: str, caller_name: str, public_key: str
) -> None:
    caller: Caller = request.getfixturevalue(caller_name)

    lines = http_export(caller, fmt)

    stored = entries(app)
    exported = [r for r in records(lines) if r["record"] == "entry"]
    assert [{k: v for k, v in r.items() if k != "record"} for r in exported] == stored
    assert len(stored) == TOTAL + 1
    assert kinds(lines).count("checkpoint") == 4
    assert (lines[0] == ",".join(CSV_COLUMNS) + "\n") is (fmt == "csv")
    result = verify_export(lines)
    assert result == Verification(True, TOTAL + 1, None, None, 4, TOTAL + 1, stored[-1]["hash"])
    assert verify_export(lines, public_key=public_key).ok
    pinned = verify_export(lines, public_key=Keyring.generate().public_key)
    assert not pinned.ok and pinned.problem == "the export is signed with a different key"


def test_an_app_client_cannot_export(shop: Caller, auditor: Caller) -> None:
    response = shop.get("/v1/audit/export")
    assert response.status_code == 403
    assert verify_export(http_export(auditor, "jsonl")).entries == TOTAL + 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_cli_export_verifies_offline_without_the_database(
    app: Flask,
    runner: Any,
    console: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    public_key: str,
) -> None:
    path = tmp_path / f"audit.{fmt}"
    lines = cli_export(runner, path, fmt)
    assert verify_export(lines, public_key=public_key).ok
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no policies/, registry/ or instance/ here either

    code, report = offline_verify(console, tmp_path, path)
    assert (code, report["ok"], report["entries"]) == (0, True, TOTAL + 1)
    assert report["checkpoints"] == 4 and report["last_seq"] == TOTAL + 1
    code, report = offline_verify(console, tmp_path, path, "--public-key", public_key)
    assert (code, report["ok"]) == (0, True)
    other = Keyring.generate().public_key
    code, report = offline_verify(console, tmp_path, path, "--public-key", other)
    assert (code, report["ok"]) == (1, False)
    assert report["problem"] == "the export is signed with a different key"


@pytest.mark.parametrize("fmt", FORMATS)
def test_offline_verification_of_a_tampered_file_exits_1(
    app: Flask, runner: Any, console: CliRunner, tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"audit.{fmt}"
    lines = cli_export(runner, path, fmt)
    n = next(n for n, line in enumerate(lines) if "consent.grant" in line)
    seq = parse_line(lines[n], fmt)["seq"]
    lines[n] = lines[n].replace("consent.grant", "consent.grunt")
    path.write_text("".join(lines), encoding="utf-8")

    code, report = offline_verify(console, tmp_path, path)

    assert (code, report["ok"], report["first_bad_seq"]) == (1, False, seq)
    assert "edited" in report["problem"]


# --- any change fails ------------------------------------------------------------------------


def sample_offsets(lines: Lines, count: int = 200) -> list[int]:
    """`count` offsets spread over the file, plus the first, middle and last byte of each line."""
    size = sum(len(line) for line in lines)
    chosen = set(range(0, size, max(1, size // count)))
    start = 0
    for line in lines:
        chosen.update({start, start + len(line) // 2, start + len(line) - 1})
        start += len(line)
    return sorted(chosen)


def replacements(original: str) -> list[str]:
    """Two different printable characters; flipping one bit first, the subtlest change."""
    found = [chr(ord(original) ^ 1), chr(ord(original) ^ 0x20), "x", "0"]
    printable = [c for c in found if " " <= c <= "~" and c != original]
    return list(dict.fromkeys(printable))[:2]


@pytest.mark.parametrize("fmt", FORMATS)
def test_changing_any_single_byte_fails_verification(auditor: Caller, fmt: str) -> None:
    lines = http_export(auditor, fmt)
    text = "".join(lines)
    assert text.isascii()
    offsets = sample_offsets(lines)
    line_kinds = (["columns"] if fmt == "csv" else []) + kinds(lines)
    line_of = [n for n, line in enumerate(lines) for _ in line]
    assert {line_kinds[line_of[offset]] for offset in offsets} == set(line_kinds)
    assert {"header", "entry", "checkpoint", "footer"} <= set(line_kinds)

    assert len(offsets) >= 200

    passed = []
    for offset in offsets:
        for replacement in replacements(text[offset]):
            changed = text[:offset] + replacement + text[offset + 1 :]
            result = verify_export(split(changed))
            if result.ok:
                passed.append((offset, line_of[offset], text[offset], replacement))
    assert passed == []


def _line(kind: str, nth: int = 0) -> Callable[[Lines], int]:
    def find(lines: Lines) -> int:
        found = [n for n, k in enumerate(kinds(lines)) if k == kind]
        return found[nth] + (len(lines) - len(kinds(lines)))

    return find


def delete(where: Callable[[Lines], int]) -> Callable[[Lines], Lines]:
    def mutate(lines: Lines) -> Lines:
        n = where(lines)
        return lines[:n] + lines[n + 1 :]

    return mutate


def duplicate(where: Callable[[Lines], int]) -> Callable[[Lines], Lines]:
    def mutate(lines: Lines) -> Lines:
        n = where(lines)
        return lines[: n + 1] + lines[n:]

    return mutate


def swap(first: Callable[[Lines], int], second: Callable[[Lines], int]) -> Callable[[Lines], Lines]:
    def mutate(lines: Lines) -> Lines:
        a, b = first(lines), second(lines)
        swapped = list(lines)
        swapped[a], swapped[b] = lines[b], lines[a]
        return swapped

    return mutate


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def respell_signature(where: Callable[[Lines], int]) -> Callable[[Lines], Lines]:
    """Flip the lowest bit of the 86th of 88 characters: padding, the signature's bytes stay."""

    def mutate(lines: Lines) -> Lines:
        n = where(lines)
        signature = records(lines)[n - (len(lines) - len(kinds(lines)))]["signature"]
        respelled = signature[:85] + BASE64URL[BASE64URL.index(signature[85]) ^ 1] + "=="
        assert signature.endswith("==") and respelled != signature
        return [*lines[:n], lines[n].replace(signature, respelled), *lines[n + 1 :]]

    return mutate


def truncate(keep_from_end: int) -> Callable[[Lines], Lines]:
    def mutate(lines: Lines) -> Lines:
        return lines[:-keep_from_end]

    return mutate


LINE_CHANGES = {
    "delete-header": delete(_line("header")),
    "delete-first-entry": delete(_line("entry", 0)),
    "delete-middle-entry": delete(_line("entry", 11)),
    "delete-last-entry": delete(_line("entry", -1)),
    "delete-checkpoint": delete(_line("checkpoint", 1)),
    "delete-last-checkpoint": delete(_line("checkpoint", -1)),
    "delete-footer": delete(_line("footer")),
    "duplicate-header": duplicate(_line("header")),
    "duplicate-first-entry": duplicate(_line("entry", 0)),
    "duplicate-middle-entry": duplicate(_line("entry", 11)),
    "duplicate-last-entry": duplicate(_line("entry", -1)),
    "duplicate-checkpoint": duplicate(_line("checkpoint", 1)),
    "duplicate-footer": duplicate(_line("footer")),
    "swap-adjacent-entries": swap(_line("entry", 0), _line("entry", 1)),
    "swap-distant-entries": swap(_line("entry", 2), _line("entry", 16)),
    "swap-entry-and-its-checkpoint": swap(_line("entry", 4), _line("checkpoint", 0)),
    "swap-header-and-footer": swap(_line("header"), _line("footer")),
    "move-checkpoint-down": swap(_line("checkpoint", 0), _line("entry", 5)),
    "respell-checkpoint-signature": respell_signature(_line("checkpoint", 2)),
    "respell-footer-signature": respell_signature(_line("footer")),
    "truncate-footer": truncate(1),
    "truncate-footer-and-last-entry": truncate(2),
    "truncate-half": lambda lines: lines[: len(lines) // 2],
    "only-header": lambda lines: lines[: len(lines) - len(kinds(lines)) + 1],
    "empty-file": lambda lines: [],
    "trailing-blank-line": lambda lines: [*lines, "\n"],
    "no-final-newline": lambda lines: [*lines[:-1], lines[-1].rstrip("\n")],
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("change", LINE_CHANGES.values(), ids=LINE_CHANGES.keys())
def test_line_changes_fail_verification(
    auditor: Caller, fmt: str, change: Callable[[Lines], Lines]
) -> None:
    lines = http_export(auditor, fmt)
    assert verify_export(lines).ok

    changed = change(lines)

    assert changed != lines
    result = verify_export(changed)
    assert not result.ok, result


def canonical(record: Json) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


@pytest.mark.parametrize(
    "change",
    [
        lambda record: {**record, "decision_iz": record.pop("decision_id")},
        lambda record: {**record, "purpos": record.pop("purpose")},
        lambda record: {**record, "note": "approved"},
        lambda record: {k: v for k, v in record.items() if k != "request_id"},
    ],
    ids=["renamed-null-field", "renamed-null-purpose", "added-field", "dropped-field"],
)
def test_an_entry_with_other_fields_fails_verification(
    auditor: Caller, change: Callable[[Json], Json]
) -> None:
    lines = http_export(auditor, "jsonl")
    found = records(lines)
    n = next(n for n, r in enumerate(found) if r["record"] == "entry" and r["purpose"] is None)
    record = found[n]
    assert record["decision_id"] is None and record["request_id"] is not None

    changed = [*lines[:n], canonical(change(dict(record))), *lines[n + 1 :]]

    assert changed != lines
    result = verify_export(changed)
    assert (result.ok, result.first_bad_seq) == (False, record["seq"]), result


# --- time windows ------------------------------------------------------------------------------

HOUR = timedelta(hours=1)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def phases(shop: Caller, mailer: Caller) -> dict[str, datetime]:
    """The template's entries at CALENDAR, then 4 entries an hour later and 3 two hours later."""
    for offset, count, prefix in ((1, 4, "b"), (2, 3, "c")):
        with time_machine.travel(CALENDAR + offset * HOUR, tick=True):
            build_history(shop, mailer, count, prefix)
    return {"a": CALENDAR, "b": CALENDAR + HOUR, "c": CALENDAR + 2 * HOUR}


# hours after CALENDAR -> how many entries the window holds; the export itself is at hour 3
WINDOWS = {
    "phase-b": (1, 2, 4),
    "from-phase-b": (1, None, 4 + 3 + 1),
    "until-phase-b": (None, 1, TOTAL),
    "phase-c": (2, 3, 3),
    "phases-b-and-c": (1, 2.5, 4 + 3),
    "empty-between": (1.5, 1.75, 0),
    "empty-future": (30, 31, 0),
}


def export_window(
    via: str, auditor: Caller, runner: Any, path: Path, fmt: str, since: Any, until: Any
) -> Lines:
    """Export [since, until) three hours after CALENDAR, when all the phases are written."""
    with time_machine.travel(CALENDAR + 3 * HOUR, tick=True):
        if via == "http":
            window = {"since": since, "until": until}
            given = {k: v.isoformat() for k, v in window.items() if v is not None}
            return http_export(auditor, fmt, **given)
        flags = [f"--{k}={iso(v)}" for k, v in (("since", since), ("until", until)) if v]
        return cli_export(runner, path, fmt, *flags)


@pytest.mark.parametrize(("via", "fmt"), [("http", "jsonl"), ("cli", "csv")])
@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
def test_a_time_window_exports_a_contiguous_linked_range(
    app: Flask,
    phases: dict[str, datetime],
    auditor: Caller,
    runner: Any,
    tmp_path: Path,
    via: str,
    fmt: str,
    window: tuple[float | None, float | None, int],
) -> None:
    since, until = (None if h is None else CALENDAR + h * HOUR for h in window[:2])

    lines = export_window(via, auditor, runner, tmp_path / f"audit.{fmt}", fmt, since, until)

    stored = entries(app)
    low, high = timestamp(since) if since else "", timestamp(until) if until else "~"
    expected = [e for e in stored if low <= e["at"] < high]
    assert len(expected) == window[2]
    assert [e["seq"] for e in expected] == list(
        range(expected[0]["seq"], expected[-1]["seq"] + 1) if expected else []
    )
    found = records(lines)
    header, footer = found[0], found[-1]
    exported = [r for r in found if r["record"] == "entry"]
    assert [r["seq"] for r in exported] == [e["seq"] for e in expected]
    assert (header["since"], header["until"]) == (
        since and since.isoformat(),
        until and until.isoformat(),
    )
    result = verify_export(lines)
    assert (result.ok, result.entries, footer["entries"]) == (True, len(expected), len(expected))
    if expected:
        before = {e["seq"]: e["hash"] for e in stored}.get(expected[0]["seq"] - 1, GENESIS)
        assert header["first_seq"] == expected[0]["seq"]
        assert header["anchor"] == exported[0]["prev_hash"] == before
        assert footer["last_hash"] == expected[-1]["hash"]
        signed = {c["seq"] for c in checkpoints(app)}
        in_range = sorted(signed & {e["seq"] for e in expected})
        assert [r["seq"] for r in found if r["record"] == "checkpoint"] == in_range
    else:
        assert kinds(lines) == ["header", "footer"]
        assert (header["first_seq"], header["anchor"], footer["last_seq"]) == (None, GENESIS, None)


def test_a_window_export_does_not_verify_against_another_anchor(
    phases: dict[str, datetime], auditor: Caller
) -> None:
    lines = http_export(auditor, "jsonl", since=phases["b"].isoformat())
    header = json.loads(lines[0])
    forged = json.dumps({**header, "anchor": GENESIS}, sort_keys=True, separators=(",", ":"))
    assert verify_export(lines).ok
    result = verify_export([forged + "\n", *lines[1:]])
    assert not result.ok and result.first_bad_seq == header["first_seq"]


# --- accountability ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("windowed", [False, True], ids=["everything", "windowed"])
@pytest.mark.parametrize("via", ["http", "cli"])
def test_each_export_is_audited_naming_the_actor_and_window(
    app: Flask,
    auditor: Caller,
    runner: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    via: str,
    windowed: bool,
    fmt: str,
) -> None:
    monkeypatch.setenv("LOGNAME", "dana")  # the operator's login, as getpass finds it
    since = CALENDAR - HOUR if windowed else None
    until = CALENDAR + 5 * HOUR if windowed else None
    path = tmp_path / f"audit.{fmt}"
    before = entries(app)

    lines = export_window(via, auditor, runner, path, fmt, since, until)

    after = entries(app)
    assert after[:-1] == before
    recorded = after[-1]
    window = {
        "format": fmt,
        "since": since and timestamp(since),
        "until": until and timestamp(until),
    }
    assert recorded["action"] == Action.AUDIT_EXPORT
    assert recorded["outcome"] == "recorded"
    if via == "http":
        assert recorded["actor"] == "auditor"
        assert recorded["fields"] == window
        assert recorded["request_id"]
    else:
        assert recorded["actor"] == "cli:dana"
        assert recorded["fields"] == {**window, "output": str(path)}
    exported = [r for r in records(lines) if r["record"] == "entry"]
    assert exported[-1]["seq"] == recorded["seq"]
    assert exported[-1]["hash"] == recorded["hash"]
    assert verify_audit(app).ok


# --- bounded memory ------------------------------------------------------------------------------

MANY = 8_000  # each line is about 600 bytes: an export of about 5 MB


def bulk_append(app: Flask, count: int) -> None:
    """Append `count` varied entries in one write transaction, a checkpoint every 1000."""
    with app.app_context(), database.connection_context():
        ring, policy_hash, now = keyring(), policies().hash, datetime.now(UTC)
        with write_transaction():
            for n in range(count):
                record = AuditRecord(
                    actor=f"client-{n % 7}",
                    action=Action.DECISION,
                    policy_hash=policy_hash,
                    subject=ring.pseudonym(f"subject-{n % 997}"),
                    purpose=("recommendations", "email_marketing")[n % 2],
                    outcome=("allow", "fallback", "deny")[n % 3],
                    reasons=[("consent_granted", "no_consent", "objection")[n % 3]],
                    fields={"used": ["browsing"][: n % 2], "items": n % 50},
                    request_id=f"req-{n:08d}",
                    decision_id=f"dec-{n:08d}",
                )
                append_chained(record, now + timedelta(microseconds=n), ring, 1000)


def traced_peak(work: Callable[[], Any]) -> tuple[Any, int]:
    """What `work` returns, and the peak of memory it allocated on the way."""
    tracemalloc.start()
    try:
        found = work()
        return found, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write_counting(lines: Iterator[str], handle: io.TextIOBase) -> int:
    """Write each line as it comes, keeping none; return the bytes written."""
    size = 0
    for line in lines:
        handle.write(line)
        size += len(line.encode("utf-8"))
    return size


def test_export_and_offline_verification_run_in_bounded_memory(app: Flask, tmp_path: Path) -> None:
    bulk_append(app, MANY)
    path = tmp_path / "audit.jsonl"

    with app.app_context(), database.connection_context():
        lines = export_lines(
            "jsonl", None, None, keyring(), exported_at=timestamp(CALENDAR), every=1000
        )
        with path.open("w", encoding="utf-8", newline="") as handle:
            size, export_peak = traced_peak(lambda: write_counting(lines, handle))
    with path.open(encoding="utf-8", newline="") as handle:
        result, verify_peak = traced_peak(lambda: verify_export(handle))

    assert size == path.stat().st_size > MANY * 500
    assert (result.ok, result.entries) == (True, MANY + TOTAL), result
    # the interval in force places the next checkpoint: the one due at the next multiple of
    # EVERY signs the change of interval, then one every 1000 entries
    assert result.checkpoints == TOTAL // EVERY + 1 + MANY // 1000
    assert export_peak < size / 10, (export_peak, size)
    assert verify_peak < size / 10, (verify_peak, size)
