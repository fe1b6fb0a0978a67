"""The witness: what the database no longer holds, the signed heads published outside it still
tell, over HTTP (GET /v1/audit/verify) and by the CLI (`gateway audit verify`) alike.

Each test copies a real chain written through the API (TOTAL entries, a checkpoint required
every EVERY), seals it as the sealer does (the head is signed and handed to the witness), then
edits the stored rows directly (SQLite or PostgreSQL) the way someone with access to the
database but not the signing key could: deleting checkpoints, emptying the log, rebuilding the
chain, cutting off its tail. Or that someone appends to the witness file, or lets entries wait
unsigned. The witness is the default file, a file elsewhere, or a real HTTP witness.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask

from gateway.audit.chain import GENESIS, body_hash, checkpoint_payload
from gateway.audit.sealer import WitnessMismatch
from gateway.audit.witness import head_of
from gateway.crypto import Keyring, canonical_json
from tests.audit import (
    CALENDAR,
    Template,
    build_history,
    build_template,
    checkpoints,
    copy_template,
    entry,
)
from tests.audit.chain.test_tampering import as_row, store, verify
from tests.audit.sealing import http_witness, seal, witness_heads, witness_path
from tests.conftest import Caller
from tests.stores import Raw, drop_store, raw

EVERY = 5
TOTAL = 12  # required checkpoints at 5 and 10; the seal signs 12
REQUIRED = [5, 10]

Json = dict[str, Any]
Tamper = Callable[[Raw], None]


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the date (the clock still ticks): the demo registrations' review dates hold."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    built = build_template(tmp_path_factory.mktemp("template"), TOTAL, EVERY)
    yield built
    drop_store(built.store)


def copy(make_app: Any, tmp_path: Path, template: Template, **settings: Any) -> Flask:
    """A private copy of the template's chain, as an app with these settings."""
    return copy_template(
        template, make_app, tmp_path / "instance", AUDIT_CHECKPOINT_EVERY=EVERY, **settings
    )


@pytest.fixture
def app(make_app: Any, tmp_path: Path, template: Template) -> Flask:
    return copy(make_app, tmp_path, template)


def auditor_of(app: Flask, template: Template) -> Caller:
    return Caller(app.test_client(), template.keys["auditor"])


@pytest.fixture
def auditor(app: Flask, template: Template) -> Caller:
    return auditor_of(app, template)


@pytest.fixture
def sealed(app: Flask, auditor: Caller, runner: Any) -> Flask:
    """The copied chain, sealed: a checkpoint signs its head, which the witness holds."""
    head = seal(app)
    assert head is not None and head["seq"] == TOTAL
    assert [c["seq"] for c in checkpoints(app)] == [*REQUIRED, TOTAL]
    assert verify(auditor, runner)["ok"] is True
    return app


def append(app: Flask, template: Template, count: int) -> None:
    """Append `count` entries through the API, as the template's shop and mailer."""
    http = app.test_client()
    shop, mailer = (Caller(http, template.keys[name]) for name in ("shop", "mailer"))
    build_history(shop, mailer, count, prefix="later")


def expect_broken(report: Json, first_bad_seq: int | None, *words: str) -> None:
    assert report["ok"] is False, report
    assert report["first_bad_seq"] == first_bad_seq, report["problem"]
    for word in words:
        assert word in report["problem"]


# --- tampering with the database, behind a sealed head ------------------------------------------


def delete_checkpoints(*seqs: int) -> Tamper:
    def tamper(db: Raw) -> None:
        for seq in seqs:
            assert db.execute("DELETE FROM audit_checkpoint WHERE seq = ?", (seq,)).rowcount == 1

    return tamper


def delete_every_checkpoint(db: Raw) -> None:
    assert db.execute("DELETE FROM audit_checkpoint").rowcount == len(REQUIRED) + 1


def empty_the_log(db: Raw) -> None:
    for table in ("audit_checkpoint", "audit_entry", "audit_pending"):
        db.execute(f"DELETE FROM {table}")


def rebuild(*, keep_checkpoints: bool, forged: int = 3, extend: int = 0) -> Tamper:
    """Forge entry `forged`'s outcome and rebuild the chain from seq 1, every entry rehashed
    and relinked (and `extend` forged entries appended): it links up, but the witness holds a
    head of the chain as it was."""

    def tamper(db: Raw) -> None:
        previous = GENESIS
        for seq in range(1, TOTAL + 1):
            body = entry(db, seq)
            if seq == forged:
                body["outcome"], body["reasons"] = "allow", ["consent_granted"]
            body["prev_hash"] = previous
            body["hash"] = previous = body_hash(body)
            store(db, body)
        for seq in range(TOTAL + 1, TOTAL + extend + 1):
            body = entry(db, TOTAL)
            body.update(seq=seq, entry_id=f"forged-{seq}", prev_hash=previous)
            body["hash"] = previous = body_hash(body)
            row = as_row(body)
            names, values = ", ".join(row), ", ".join(f":{name}" for name in row)
            db.execute(f"INSERT INTO audit_entry ({names}) VALUES ({values})", row)
        if not keep_checkpoints:
            db.execute("DELETE FROM audit_checkpoint")

    return tamper


def cut_tail(count: int) -> Tamper:
    """Delete the last `count` entries and the checkpoints that sign them."""

    def tamper(db: Raw) -> None:
        first = TOTAL - count + 1
        assert db.execute("DELETE FROM audit_entry WHERE seq >= ?", (first,)).rowcount == count
        db.execute("DELETE FROM audit_checkpoint WHERE seq >= ?", (first,))

    return tamper


DELETED = "is missing: it was deleted"
EMPTIED = "the audit tables were emptied"
REBUILT = "the chain was rebuilt"
CUT_OFF = "the tail of the log was cut off"

DATABASE_CASES = [
    pytest.param(delete_checkpoints(5), 5, [DELETED, "checkpoint at seq 5"], id="cp-5-deleted"),
    pytest.param(delete_checkpoints(10), 10, [DELETED, "checkpoint at seq 10"], id="cp-10-deleted"),
    pytest.param(delete_checkpoints(5, 10), 5, [DELETED, "seq 5"], id="required-cps-deleted"),
    pytest.param(delete_every_checkpoint, 5, [DELETED, "seq 5"], id="every-cp-deleted"),
    pytest.param(empty_the_log, 1, [EMPTIED, f"signed at seq {TOTAL}"], id="log-emptied"),
    pytest.param(rebuild(keep_checkpoints=False), TOTAL, [REBUILT], id="rebuilt-cps-deleted"),
    pytest.param(rebuild(keep_checkpoints=True), TOTAL, [REBUILT], id="rebuilt-cps-kept"),
    pytest.param(rebuild(keep_checkpoints=False, forged=1), TOTAL, [REBUILT], id="rebuilt-from-1"),
    pytest.param(
        rebuild(keep_checkpoints=False, extend=3), TOTAL, [REBUILT], id="rebuilt-and-extended"
    ),
    pytest.param(cut_tail(1), TOTAL, [CUT_OFF, f"entries {TOTAL}..{TOTAL}"], id="cut-1"),
    pytest.param(cut_tail(3), 10, [CUT_OFF, f"entries 10..{TOTAL}"], id="cut-3"),
    pytest.param(cut_tail(TOTAL - 1), 2, [CUT_OFF, f"entries 2..{TOTAL}"], id="cut-all-but-1"),
]


@pytest.mark.parametrize(("tamper", "first_bad_seq", "words"), DATABASE_CASES)
def test_tampering_behind_a_sealed_head_is_named(
    sealed: Flask,
    auditor: Caller,
    runner: Any,
    tamper: Tamper,
    first_bad_seq: int,
    words: list[str],
) -> None:
    with raw(sealed.config) as db:
        tamper(db)

    expect_broken(verify(auditor, runner), first_bad_seq, *words)


def test_an_untouched_sealed_chain_verifies(sealed: Flask, auditor: Caller, runner: Any) -> None:
    assert verify(auditor, runner) == {
        "ok": True,
        "entries": TOTAL,
        "first_bad_seq": None,
        "problem": None,
        "checkpoints": len(REQUIRED) + 1,
        "last_seq": TOTAL,
    }


def test_sealing_after_a_cut_does_not_hide_it(sealed: Flask, auditor: Caller, runner: Any) -> None:
    """The sealer signs the shorter chain's head, but the witness keeps the longer one."""
    with raw(sealed.config) as db:
        cut_tail(3)(db)

    seal(sealed)

    assert witness_heads(sealed)[-1]["seq"] == TOTAL
    expect_broken(verify(auditor, runner), 10, CUT_OFF)


def test_a_cut_tail_stays_named_once_new_entries_outgrow_it(
    sealed: Flask, template: Template, auditor: Caller, runner: Any
) -> None:
    """The entries cut off (10..12) must not be forgotten once the gateway has appended more
    than were cut and sealed again: the entry at the witnessed seq is not the one signed."""
    with raw(sealed.config) as db:
        cut_tail(3)(db)
    append(sealed, template, 5)  # chained as 10..14, the required checkpoint at 10 signed anew

    # the sealer will not bury the witnessed head under a newer one the database now shows
    with pytest.raises(WitnessMismatch, match="does not match; not publishing"):
        seal(sealed)

    assert witness_heads(sealed)[-1]["seq"] == TOTAL
    expect_broken(verify(auditor, runner), TOTAL, REBUILT)


# --- tampering with the witness file ------------------------------------------------------------


def forged_head(app: Flask, signer: Keyring, **changes: Any) -> Json:
    """The witness's latest head with `changes`, signed by `signer` (not the gateway's key,
    unless given it)."""
    head = {**witness_heads(app)[-1], **changes}
    payload = checkpoint_payload(head["seq"], head["hash"], head["at"], head["key_id"], EVERY)
    return {**head, "signature": signer.sign(payload)}


LINES: dict[str, Callable[[Flask], bytes]] = {
    "not-json": lambda app: b"a line that is not a head",
    "json-not-an-object": lambda app: b"[1, 2, 3]",
    "seq-not-a-number": lambda app: canonical_json({**witness_heads(app)[-1], "seq": "13"}),
    "seq-infinite": lambda app: b'{"seq": Infinity}',
    "no-signature": lambda app: canonical_json(
        {k: v for k, v in witness_heads(app)[-1].items() if k != "signature"} | {"seq": 13}
    ),
    "seq-raised-signature-kept": lambda app: canonical_json({**witness_heads(app)[-1], "seq": 13}),
    "signed-by-another-key": lambda app: canonical_json(
        forged_head(app, other := Keyring.generate(), seq=13, key_id=other.key_id)
    ),
    "another-key-under-this-key-id": lambda app: canonical_json(
        forged_head(app, Keyring.generate(), seq=13)
    ),
    # a forgery below the real head: it moves nothing, but is no head the gateway signed
    "signed-by-another-key-lower-seq": lambda app: canonical_json(
        forged_head(app, Keyring.generate(), seq=3)
    ),
}
FORGED = "a head the witness holds is not signed by a known key: it was forged"


@pytest.mark.parametrize("case", sorted(LINES))
def test_a_line_appended_to_the_witness_without_the_key_is_named(
    sealed: Flask, auditor: Caller, runner: Any, case: str
) -> None:
    line = LINES[case](sealed)
    with witness_path(sealed).open("ab") as handle:
        handle.write(line + b"\n")

    expect_broken(verify(auditor, runner), None, FORGED)


# --- entries no signed head covers --------------------------------------------------------------

LATER = timedelta(minutes=10)  # past the default grace of 60 s


def test_an_unsigned_tail_past_the_grace_is_named_and_sealing_fixes_it(
    app: Flask, auditor: Caller, runner: Any
) -> None:
    assert verify(auditor, runner)["ok"] is True  # 11 and 12 are unsigned, but new

    with time_machine.travel(CALENDAR + LATER, tick=True):
        expect_broken(
            verify(auditor, runner),
            REQUIRED[-1] + 1,
            f"entries from seq {REQUIRED[-1] + 1} on were appended more than 60 s ago",
            "the sealer is not running",
        )
        seal(app)
        report = verify(auditor, runner)

    assert (report["ok"], report["checkpoints"]) == (True, len(REQUIRED) + 1)


def test_the_grace_is_the_configured_one(make_app: Any, tmp_path: Path, template: Template) -> None:
    app = copy(make_app, tmp_path, template, AUDIT_UNSIGNED_GRACE=LATER.total_seconds() * 2)
    auditor, runner = auditor_of(app, template), app.test_cli_runner()

    with time_machine.travel(CALENDAR + LATER, tick=True):
        assert verify(auditor, runner)["ok"] is True
    with time_machine.travel(CALENDAR + LATER * 3, tick=True):
        expect_broken(verify(auditor, runner), 11, "more than 1200 s ago", "sealer is not running")


def test_a_deleted_head_checkpoint_leaves_the_tail_unsigned(
    sealed: Flask, auditor: Caller, runner: Any
) -> None:
    """Deleting the seal's own checkpoint: the witness still holds the head, and once the grace
    has passed without a sealer signing it again, verification says so."""
    with raw(sealed.config) as db:
        delete_checkpoints(TOTAL)(db)

    with time_machine.travel(CALENDAR + LATER, tick=True):
        expect_broken(verify(auditor, runner), 11, "no signed head covers them")


# --- where the witness is -----------------------------------------------------------------------


def test_a_witness_file_elsewhere_is_written_and_read(
    make_app: Any, tmp_path: Path, template: Template
) -> None:
    elsewhere = tmp_path / "witness" / "heads.jsonl"
    elsewhere.parent.mkdir()
    app = copy(make_app, tmp_path, template, AUDIT_WITNESS=str(elsewhere))
    auditor, runner = auditor_of(app, template), app.test_cli_runner()

    head = seal(app)

    assert head is not None
    assert [json.loads(line) for line in elsewhere.read_text().splitlines()] == [head_of(head)]
    assert not (Path(app.config["HOME"]) / "audit-witness.jsonl").exists()
    with raw(app.config) as db:
        cut_tail(3)(db)
    expect_broken(verify(auditor, runner), 10, CUT_OFF)


def test_an_http_witness_receives_each_head_once_and_is_read_back(
    make_app: Any, tmp_path: Path, template: Template
) -> None:
    with http_witness() as witness:
        app = copy(make_app, tmp_path, template, AUDIT_WITNESS=witness.url)
        auditor, runner = auditor_of(app, template), app.test_cli_runner()
        assert verify(auditor, runner)["ok"] is True  # it holds no head yet: 404

        head = seal(app)
        assert seal(app) is None  # nothing new

        assert head is not None
        assert witness.heads == [head_of(head)]
        assert head_of(head) == head_of(checkpoints(app)[-1])
        assert not (Path(app.config["HOME"]) / "audit-witness.jsonl").exists()
        assert verify(auditor, runner)["ok"] is True
        with raw(app.config) as db:
            cut_tail(3)(db)
        expect_broken(verify(auditor, runner), 10, CUT_OFF)


def test_an_http_witness_that_is_down_fails_verification_as_unavailable(
    make_app: Any, tmp_path: Path, template: Template
) -> None:
    with http_witness() as witness:
        app = copy(make_app, tmp_path, template, AUDIT_WITNESS=witness.url)
        seal(app)
        witness.stop()

        response = auditor_of(app, template).get("/v1/audit/verify")
        result = app.test_cli_runner().invoke(args=["audit", "verify"])

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "witness_unavailable"
    assert result.stdout == ""  # no report: nothing was verified
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and witness.url in line
    # 75 (EX_TEMPFAIL): try again later; not 1, which says the chain is broken
    assert result.exit_code == 75, result.output


HELD: dict[str, Callable[[Json], Json]] = {
    "signed-by-another-key": lambda head: {
        **head,
        "seq": 13,
        "signature": Keyring.generate().sign(
            checkpoint_payload(13, head["hash"], head["at"], head["key_id"], EVERY)
        ),
    },
    "seq-infinite": lambda head: {**head, "seq": float("inf")},
}


@pytest.mark.parametrize("case", sorted(HELD))
def test_a_head_an_http_witness_was_given_by_someone_else_is_named(
    make_app: Any, tmp_path: Path, template: Template, case: str
) -> None:
    with http_witness() as witness:
        app = copy(make_app, tmp_path, template, AUDIT_WITNESS=witness.url)
        seal(app)
        witness.heads.append(HELD[case](witness.heads[-1]))  # answered as the latest

        report = verify(auditor_of(app, template), app.test_cli_runner())

    expect_broken(report, None, FORGED)
