"""`gateway audit verify --resume`: verify only what was appended since the last verified head.

Each test copies a real chain written through the API (TOTAL entries, a checkpoint every EVERY),
runs the real CLI on it, appends more through the API and edits stored rows directly (SQLite or
PostgreSQL), as someone with access to the database but not the signing key could.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask

from gateway import keyring
from gateway.crypto import Keyring, canonical_json
from tests.audit import (
    CALENDAR,
    Template,
    build_history,
    build_template,
    copy_template,
    entry,
)
from tests.audit.chain.test_tampering import edit_and_rehash, rechain_from, set_column
from tests.conftest import Caller
from tests.stores import Raw, drop_store, raw

EVERY = 5
TOTAL = 12  # the head the first verification records; not itself a checkpoint
LATER = 5  # entries appended after it: 13..17, with a checkpoint at 15

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


@pytest.fixture
def app(make_app: Any, tmp_path: Path, template: Template) -> Flask:
    return copy_template(template, make_app, tmp_path / "instance", AUDIT_CHECKPOINT_EVERY=EVERY)


def state_path(app: Flask) -> Path:
    return Path(app.config["HOME"]) / "audit-verified.json"


def verify(app: Flask, *flags: str) -> tuple[int, Json]:
    """Run `gateway audit verify [flags]`; returns the exit code and the JSON report."""
    result = app.test_cli_runner().invoke(args=["audit", "verify", *flags])
    assert result.exit_code in (0, 1), result.output
    assert result.stderr == ""
    return result.exit_code, json.loads(result.stdout)


def append_later(app: Flask, template: Template, count: int = LATER) -> None:
    """Append `count` entries through the API, after the ones already stored."""
    http = app.test_client()
    shop, mailer = (Caller(http, template.keys[name]) for name in ("shop", "mailer"))
    build_history(shop, mailer, count, prefix="later")


def tamper(app: Flask, change: Tamper) -> None:
    with raw(app.config) as db:
        change(db)


def edit(seq: int) -> Tamper:
    """Change an entry's content and leave its hash: the entry no longer matches it."""
    return set_column(seq, "actor", "intruder")


def delete_from(seq: int) -> Tamper:
    def change(db: Raw) -> None:
        db.execute("DELETE FROM audit_checkpoint WHERE seq >= ?", (seq,))
        db.execute("DELETE FROM audit_entry WHERE seq >= ?", (seq,))

    return change


# --- resuming -----------------------------------------------------------------------------------


def test_verify_records_the_head_and_resume_verifies_only_new_entries(
    app: Flask, template: Template
) -> None:
    assert verify(app) == (0, report(TOTAL, from_seq=1, checkpoints=2, last_seq=TOTAL))
    recorded = json.loads(state_path(app).read_text(encoding="utf-8"))
    assert (recorded["seq"], recorded["key_id"]) == (TOTAL, keyring_of(app).key_id)
    with raw(app.config) as db:
        assert recorded["hash"] == entry(db, TOTAL)["hash"]

    append_later(app, template)

    expected = report(LATER, from_seq=TOTAL + 1, checkpoints=1, last_seq=TOTAL + LATER)
    assert verify(app, "--resume") == (0, expected)
    assert json.loads(state_path(app).read_text(encoding="utf-8"))["seq"] == TOTAL + LATER
    # nothing new: nothing to verify, and the head stays where it was
    assert verify(app, "--resume") == (0, report(0, from_seq=TOTAL + LATER + 1))
    assert json.loads(state_path(app).read_text(encoding="utf-8"))["seq"] == TOTAL + LATER


def test_resume_without_a_state_verifies_everything_and_records_it(app: Flask) -> None:
    assert not state_path(app).exists()

    assert verify(app, "--resume") == (0, report(TOTAL, 1, checkpoints=2, last_seq=TOTAL))

    assert json.loads(state_path(app).read_text(encoding="utf-8"))["seq"] == TOTAL


@pytest.mark.parametrize("written_by", ["verify", "verify --resume"])
def test_the_state_file_is_private(app: Flask, written_by: str) -> None:
    verify(app, *written_by.split()[1:])

    assert stat.S_IMODE(state_path(app).stat().st_mode) == 0o600
    assert [p.name for p in state_path(app).parent.iterdir() if "verified" in p.name] == [
        "audit-verified.json"
    ]  # no temporary file left beside it


def test_the_state_file_setting_moves_it(make_app: Any, tmp_path: Path, template: Template) -> None:
    elsewhere = tmp_path / "checks" / "verified.json"
    elsewhere.parent.mkdir()
    app = copy_template(
        template, make_app, tmp_path / "instance", AUDIT_VERIFIED_STATE=str(elsewhere)
    )

    verify(app)

    assert json.loads(elsewhere.read_text(encoding="utf-8"))["seq"] == TOTAL
    assert not state_path(app).exists()


def test_http_verification_is_full_and_records_nothing(app: Flask, template: Template) -> None:
    auditor = Caller(app.test_client(), template.keys["auditor"])
    verify(app)
    recorded = state_path(app).read_bytes()
    append_later(app, template)

    response = auditor.get("/v1/audit/verify")

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["entries"] == TOTAL + LATER
    assert state_path(app).read_bytes() == recorded


# --- tampering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [TOTAL + 1, TOTAL + 3, TOTAL + LATER])
def test_an_edit_after_the_resume_point_is_named(app: Flask, template: Template, seq: int) -> None:
    verify(app)
    append_later(app, template)
    tamper(app, edit(seq))

    code, found = verify(app, "--resume")

    assert code == 1
    assert (found["ok"], found["first_bad_seq"], found["from_seq"]) == (False, seq, TOTAL + 1)
    assert "edited" in found["problem"]
    assert json.loads(state_path(app).read_text(encoding="utf-8"))["seq"] == TOTAL  # kept


REWRITES = [
    pytest.param(edit(TOTAL), id="head-edited"),
    pytest.param(edit_and_rehash(TOTAL), id="head-edited-and-rehashed"),
    pytest.param(rechain_from(TOTAL), id="head-rechained"),
    pytest.param(rechain_from(3), id="rechained-behind-the-head"),
]


@pytest.mark.parametrize("change", REWRITES)
def test_a_rewrite_at_or_behind_the_resume_point_is_named_at_it(
    app: Flask, template: Template, change: Tamper
) -> None:
    verify(app)
    append_later(app, template)
    tamper(app, change)

    code, found = verify(app, "--resume")

    assert code == 1
    assert (found["ok"], found["first_bad_seq"], found["entries"]) == (False, TOTAL, 0)
    assert "last verified head" in found["problem"]
    assert "rewritten" in found["problem"]


@pytest.mark.parametrize("cut", [TOTAL, 4])
def test_a_tail_deleted_below_the_resume_point_is_named_at_it(app: Flask, cut: int) -> None:
    verify(app)
    tamper(app, delete_from(cut))

    code, found = verify(app, "--resume")

    assert code == 1
    assert (found["ok"], found["first_bad_seq"]) == (False, TOTAL)
    assert "missing" in found["problem"]


def test_an_edit_strictly_before_the_resume_point_takes_a_full_verification(
    app: Flask, template: Template
) -> None:
    """What an incremental check does not see: entries before the head it resumes from."""
    verify(app)
    append_later(app, template)
    tamper(app, edit(3))

    assert verify(app, "--resume")[0] == 0
    code, found = verify(app)
    assert (code, found["first_bad_seq"], found["from_seq"]) == (1, 3, 1)


# --- the state file itself ----------------------------------------------------------------------


def resign(state: Json, ring: Keyring, **changes: Any) -> Json:
    """The state with `changes`, signed by `ring` (under the key id the changes give)."""
    body = {k: v for k, v in {**state, **changes}.items() if k != "signature"}
    return {**body, "signature": ring.sign(canonical_json(body))}


STATE_EDITS: dict[str, Callable[[Json, Keyring], Any]] = {
    "seq-lowered": lambda s, ring: {**s, "seq": 3},
    "hash-changed": lambda s, ring: {**s, "hash": "f" * 64},
    "signature-removed": lambda s, ring: {k: v for k, v in s.items() if k != "signature"},
    "signed-by-another-key": lambda s, ring: resign(
        s, (other := Keyring.generate()), seq=3, key_id=other.key_id
    ),
    "another-key-under-this-key-id": lambda s, ring: resign(s, Keyring.generate(), seq=3),
    "not-an-object": lambda s, ring: [s],
    "seq-not-a-number": lambda s, ring: resign(s, ring, seq="12"),
}


@pytest.mark.parametrize("case", sorted(STATE_EDITS))
def test_an_edited_or_foreign_state_file_is_refused_in_one_line(app: Flask, case: str) -> None:
    verify(app)
    path = state_path(app)
    state = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(STATE_EDITS[case](state, keyring_of(app))), encoding="utf-8")

    result = app.test_cli_runner().invoke(args=["audit", "verify", "--resume"])

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert str(path) in line
    assert "--resume" in line  # how to recover: a full verification records a new state


def test_an_unreadable_state_file_is_refused_in_one_line(app: Flask) -> None:
    state_path(app).write_text("{not json", encoding="utf-8")

    result = app.test_cli_runner().invoke(args=["audit", "verify", "--resume"])

    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and str(state_path(app)) in line


def test_a_full_verification_replaces_a_refused_state(app: Flask) -> None:
    state_path(app).write_text("{not json", encoding="utf-8")

    assert verify(app)[0] == 0
    assert verify(app, "--resume") == (0, report(0, from_seq=TOTAL + 1))


# --- helpers ------------------------------------------------------------------------------------


def keyring_of(app: Flask) -> Keyring:
    with app.app_context():
        return keyring()


def report(entries: int, from_seq: int, checkpoints: int = 0, last_seq: int | None = None) -> Json:
    """The JSON report of a verification that found nothing wrong."""
    return {
        "ok": True,
        "entries": entries,
        "first_bad_seq": None,
        "problem": None,
        "checkpoints": checkpoints,
        "last_seq": last_seq,
        "from_seq": from_seq,
    }
