"""Accountability: client changes, policy (re)loads, exports and checkpoints are audited too.

Each is written by the real CLI or HTTP call against a real SQLite file, then read back through
GET /v1/audit/entries?action=... as a compliance officer would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask

from gateway.audit.chain import checkpoint_payload
from gateway.crypto import verify_signature
from gateway.store.clients import authenticate
from gateway.store.db import database
from tests.conftest import Caller, verify_audit

CALENDAR = datetime(2026, 6, 1, tzinfo=UTC)
T1 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
CANDIDATES = [{"id": "b-1", "category": "books"}, {"id": "s-1", "category": "shoes"}]
DESCRIPTION = "Product recommendations in the web shop and the app"

Json = dict[str, Any]


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the day (the clock ticks) so the demo registrations' review dates are known."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


@pytest.fixture(params=["dana", "ops-bot"])
def operator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The login the CLI runs under; its entries name `cli:<login>` as the actor."""
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(variable, request.param)
    return f"cli:{request.param}"


@pytest.fixture(params=["auditor", "admin"])
def reader(request: pytest.FixtureRequest) -> Caller:
    """Both roles that may read (and export, and checkpoint) the audit log."""
    found: Caller = request.getfixturevalue(request.param)
    return found


def client_name(app: Flask, caller: Caller) -> str:
    with app.app_context(), database.connection_context():
        found = authenticate(caller.key)
        assert found is not None
        return str(found.name)


def entries(reader: Caller, **params: Any) -> list[Json]:
    """Every matching entry, following the cursor to the end."""
    found: list[Json] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = reader.get("/v1/audit/entries", query_string=query)
        assert response.status_code == 200, response.get_json()
        found += response.get_json()["entries"]
        cursor = response.get_json()["next_cursor"]
        if cursor is None:
            return found


def policy_hash(reader: Caller) -> str:
    response = reader.get("/v1/policies")
    assert response.status_code == 200
    return str(response.get_json()["policy_hash"])


def invoke(runner: Any, *args: str) -> Any:
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


# --- clients -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "purposes"),
    [
        ("app", ["recommendations"]),
        ("app", ["recommendations", "ads_personalization", "recommendations"]),
        ("auditor", []),
        ("admin", []),
    ],
)
def test_clients_add_appends_client_create(
    runner: Any, auditor: Caller, operator: str, role: str, purposes: list[str]
) -> None:
    options = [arg for purpose in purposes for arg in ("--purpose", purpose)]
    invoke(runner, "clients", "add", "partner", "--role", role, *options)
    found = entries(auditor, action="client.create")
    assert len(found) == 1
    created = found[0]
    assert created["actor"] == operator
    assert created["fields"] == {
        "client": "partner",
        "role": role,
        "purposes": sorted(set(purposes)),
    }
    assert created["outcome"] == "recorded"
    assert (created["subject"], created["purpose"]) == (None, None)
    assert created["policy_hash"] == policy_hash(auditor)
    assert [e["seq"] for e in entries(auditor)] == [created["seq"]]


def test_clients_revoke_appends_client_revoke(
    app: Flask, runner: Any, auditor: Caller, operator: str
) -> None:
    key = invoke(runner, "clients", "add", "partner", "--role", "auditor").stdout.splitlines()[-1]
    partner = Caller(app.test_client(), key)
    assert partner.get("/v1/audit/entries").status_code == 200
    invoke(runner, "clients", "revoke", "partner")
    revoked = entries(auditor, action="client.revoke")
    assert len(revoked) == 1
    assert revoked[0]["actor"] == operator
    assert revoked[0]["fields"] == {"client": "partner"}
    assert revoked[0]["outcome"] == "recorded"
    created = entries(auditor, action="client.create")
    assert [e["seq"] for e in entries(auditor)] == [created[0]["seq"], revoked[0]["seq"]]
    assert partner.get("/v1/audit/entries").status_code == 401


def test_client_entries_are_found_by_their_operator(
    runner: Any, auditor: Caller, operator: str
) -> None:
    invoke(runner, "clients", "add", "partner", "--role", "app", "--purpose", "email_marketing")
    invoke(runner, "clients", "revoke", "partner")
    found = entries(auditor, client=operator)
    assert [e["action"] for e in found] == ["client.create", "client.revoke"]
    assert entries(auditor, client="cli:somebody-else") == []


@pytest.mark.parametrize(
    "args",
    [
        ["clients", "add", "partner", "--role", "app"],  # an app needs a purpose
        ["clients", "add", "partner", "--role", "app", "--purpose", "no_such_purpose"],
        ["clients", "add", "partner", "--role", "overlord"],
        ["clients", "add", "existing", "--role", "auditor"],  # the name is taken
        ["clients", "revoke", "nobody"],
    ],
    ids=lambda args: " ".join(args[1:]),
)
def test_a_failed_client_command_appends_nothing(
    runner: Any, auditor: Caller, operator: str, args: list[str]
) -> None:
    invoke(runner, "clients", "add", "existing", "--role", "admin")
    before = entries(auditor)
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert entries(auditor) == before


# --- policy loads --------------------------------------------------------------------------


def test_init_appends_one_policy_load_with_the_policy_hash(
    app: Flask, runner: Any, auditor: Caller, documents: tuple[Path, Path], operator: str
) -> None:
    assert entries(auditor) == []
    invoke(runner, "init")
    loads = entries(auditor, action="policy.load")
    assert len(loads) == 1
    load = loads[0]
    assert load["policy_hash"] == policy_hash(auditor)
    assert load["policy_hash"].startswith("sha256:")
    assert load["actor"] == operator
    assert load["outcome"] == "loaded"
    assert load["fields"] == {
        "policies": str(documents[0]),
        "registry": str(documents[1]),
        "previous": None,
    }
    assert entries(auditor) == loads


def test_init_again_with_the_same_documents_appends_nothing(
    make_app: Any, runner: Any, auditor: Caller, documents: tuple[Path, Path], operator: str
) -> None:
    invoke(runner, "init")
    first = entries(auditor)
    invoke(runner, "init")
    assert entries(auditor) == first
    # a comment is no change of policy: the hash is over the documents' content
    purposes = documents[0] / "purposes.yaml"
    purposes.write_text("# reviewed 2026-06\n" + purposes.read_text(encoding="utf-8"))
    invoke(make_app().test_cli_runner(), "init")
    assert entries(auditor) == first
    assert len(first) == 1


def test_init_after_an_edit_records_the_new_hash_and_the_previous_one(
    make_app: Any, runner: Any, auditor: Caller, documents: tuple[Path, Path], operator: str
) -> None:
    invoke(runner, "init")
    old_hash = policy_hash(auditor)
    purposes = documents[0] / "purposes.yaml"
    original = purposes.read_text(encoding="utf-8")
    assert DESCRIPTION in original
    purposes.write_text(original.replace(DESCRIPTION, "Recommendations, reviewed in June"))

    edited = make_app()
    invoke(edited.test_cli_runner(), "init")
    new_hash = policy_hash(Caller(edited.test_client(), auditor.key))
    assert new_hash != old_hash
    loads = entries(auditor, action="policy.load")
    assert [load["policy_hash"] for load in loads] == [old_hash, new_hash]
    assert loads[1]["fields"]["previous"] == old_hash
    assert loads[1]["actor"] == operator
    invoke(edited.test_cli_runner(), "init")
    assert len(entries(auditor, action="policy.load")) == 2

    # going back is a change too
    purposes.write_text(original)
    invoke(make_app().test_cli_runner(), "init")
    loads = entries(auditor, action="policy.load")
    assert [load["policy_hash"] for load in loads] == [old_hash, new_hash, old_hash]
    assert loads[2]["fields"]["previous"] == new_hash


def test_entries_carry_the_policy_hash_in_force(
    make_app: Any, runner: Any, shop: Caller, auditor: Caller, documents: tuple[Path, Path]
) -> None:
    """After a reload, decisions name the new hash, and the policy.load says where it began."""
    invoke(runner, "init")
    body = {"subject_id": "s-1", "purpose": "recommendations", "candidates": CANDIDATES}
    assert shop.post("/v1/personalize", body).status_code == 200
    purposes = documents[0] / "purposes.yaml"
    text = purposes.read_text(encoding="utf-8")
    purposes.write_text(text.replace(DESCRIPTION, "Edited"))
    edited = make_app()
    invoke(edited.test_cli_runner(), "init")
    assert Caller(edited.test_client(), shop.key).post("/v1/personalize", body).status_code == 200
    hashes = [(e["action"], e["policy_hash"]) for e in entries(auditor)]
    old_hash, new_hash = hashes[0][1], hashes[2][1]
    assert old_hash != new_hash
    assert hashes == [
        ("policy.load", old_hash),
        ("decision", old_hash),
        ("policy.load", new_hash),
        ("decision", new_hash),
    ]


def test_demo_records_the_policy_load_once(runner: Any, auditor: Caller, operator: str) -> None:
    invoke(runner, "init")
    invoke(runner, "demo")
    loads = entries(auditor, action="policy.load")
    assert len(loads) == 1
    assert loads[0]["actor"] == operator


# --- exports -------------------------------------------------------------------------------

PLUS_TWO = timezone(timedelta(hours=2))
EXPORT_WINDOWS: list[tuple[datetime | None, datetime | None]] = [
    (None, None),
    (T1, None),
    (None, T1),
    (T1, T1 + timedelta(days=1)),
    (T1.astimezone(PLUS_TWO), None),
]


def _window_id(window: Any) -> str:
    return "..".join(t.isoformat() if t else "" for t in window)


@pytest.mark.parametrize("window", EXPORT_WINDOWS, ids=_window_id)
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_http_export_is_audited_with_its_reader_as_actor(
    app: Flask,
    reader: Caller,
    auditor: Caller,
    fmt: str,
    window: tuple[datetime | None, datetime | None],
) -> None:
    since, until = window
    query = {"format": fmt}
    query |= {k: v.isoformat() for k, v in (("since", since), ("until", until)) if v}
    response = reader.get("/v1/audit/export", query_string=query)
    assert response.status_code == 200
    assert response.get_data()
    exports = entries(auditor, action="audit.export")
    assert len(exports) == 1
    export = exports[0]
    assert export["actor"] == client_name(app, reader)
    assert export["request_id"] == response.headers["X-Request-Id"]
    assert export["fields"] == {
        "format": fmt,
        "since": since and timestamp(since),
        "until": until and timestamp(until),
    }
    assert export["outcome"] == "recorded"
    assert export["policy_hash"] == policy_hash(auditor)


def test_each_export_names_who_pulled_it(
    app: Flask, auditor: Caller, admin: Caller, shop: Caller
) -> None:
    for caller, fmt in ((auditor, "csv"), (admin, "jsonl"), (auditor, "jsonl")):
        assert caller.get("/v1/audit/export", query_string={"format": fmt}).status_code == 200
    auditor_name, admin_name = client_name(app, auditor), client_name(app, admin)
    by_auditor = entries(auditor, action="audit.export", client=auditor_name)
    by_admin = entries(auditor, action="audit.export", client=admin_name)
    assert [e["fields"]["format"] for e in by_auditor] == ["csv", "jsonl"]
    assert [e["fields"]["format"] for e in by_admin] == ["jsonl"]
    assert entries(auditor, action="audit.export", client=client_name(app, shop)) == []


@pytest.mark.parametrize("label", ["shop", "mailer"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/audit/export"),
        ("GET", "/v1/audit/export?format=csv"),
        ("POST", "/v1/audit/checkpoints"),
    ],
)
def test_an_app_client_can_neither_export_nor_checkpoint(
    request: pytest.FixtureRequest, auditor: Caller, label: str, method: str, path: str
) -> None:
    app_client: Caller = request.getfixturevalue(label)
    response = app_client.request(method, path)
    assert response.status_code == 403
    assert response.get_json()["code"] == "forbidden"
    assert entries(auditor) == []


def test_a_refused_export_query_appends_nothing(auditor: Caller) -> None:
    query = {"format": "xml", "since": "2026-06-01T00:00:00"}
    response = auditor.get("/v1/audit/export", query_string=query)
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"format", "since"}
    assert entries(auditor) == []


def test_a_cli_export_is_audited_with_the_operator(
    runner: Any, auditor: Caller, tmp_path: Path, operator: str
) -> None:
    output = tmp_path / "audit.jsonl"
    invoke(runner, "audit", "export", "--since", T1.isoformat(), "--output", str(output))
    assert output.read_text(encoding="utf-8")
    exports = entries(auditor, action="audit.export")
    assert len(exports) == 1
    assert exports[0]["actor"] == operator
    assert exports[0]["fields"] == {
        "format": "jsonl",
        "since": timestamp(T1),
        "until": None,
        "output": str(output),
    }


# --- checkpoints ---------------------------------------------------------------------------


def test_a_checkpoint_request_appends_the_entry_it_signs(
    app: Flask, reader: Caller, auditor: Caller, shop: Caller
) -> None:
    body = {"subject_id": "s-1", "purpose": "recommendations", "candidates": CANDIDATES}
    assert shop.post("/v1/personalize", body).status_code == 200
    response = reader.post("/v1/audit/checkpoints")
    assert response.status_code == 201
    signed = response.get_json()
    checkpoints = entries(auditor, action="audit.checkpoint")
    assert len(checkpoints) == 1
    entry = checkpoints[0]
    assert entry["actor"] == client_name(app, reader)
    assert entry["request_id"] == response.headers["X-Request-Id"]
    assert entry["seq"] == signed["seq"] == 2  # after the decision: the request's own entry
    assert entry["hash"] == signed["hash"]
    key = reader.get("/v1/keys/signing").get_json()
    assert signed["key_id"] == key["key_id"]
    payload = checkpoint_payload(
        signed["seq"], signed["hash"], signed["at"], signed["key_id"], signed["every"]
    )
    assert verify_signature(key["public_key"], signed["signature"], payload)
    assert verify_audit(app).ok


def test_a_cli_checkpoint_is_audited_with_the_operator(
    runner: Any, auditor: Caller, operator: str
) -> None:
    invoke(runner, "audit", "checkpoint")
    found = entries(auditor, action="audit.checkpoint")
    assert len(found) == 1
    assert found[0]["actor"] == operator


# --- all of it, by action ------------------------------------------------------------------

ACCOUNTABILITY_ACTIONS = {
    "client.create": 2,
    "client.revoke": 1,
    "policy.load": 2,
    "audit.export": 3,
    "audit.checkpoint": 2,
}


@pytest.fixture
def accountable_history(
    make_app: Any,
    runner: Any,
    auditor: Caller,
    admin: Caller,
    shop: Caller,
    documents: tuple[Path, Path],
    operator: str,
) -> list[tuple[str, str]]:
    """Every audited operator and officer action, with decisions in between; (action, actor)."""
    body = {"subject_id": "s-1", "purpose": "recommendations", "candidates": CANDIDATES}
    invoke(runner, "init")
    invoke(runner, "clients", "add", "partner", "--role", "app", "--purpose", "recommendations")
    assert shop.post("/v1/personalize", body).status_code == 200
    assert auditor.get("/v1/audit/export").status_code == 200
    invoke(runner, "clients", "add", "officer", "--role", "auditor")
    assert admin.post("/v1/audit/checkpoints").status_code == 201
    invoke(runner, "clients", "revoke", "partner")
    purposes = documents[0] / "purposes.yaml"
    purposes.write_text(purposes.read_text(encoding="utf-8").replace(DESCRIPTION, "Edited"))
    invoke(make_app().test_cli_runner(), "init")
    assert admin.get("/v1/audit/export", query_string={"format": "csv"}).status_code == 200
    assert shop.post("/v1/personalize", body).status_code == 200
    assert auditor.post("/v1/audit/checkpoints").status_code == 201
    assert auditor.get("/v1/audit/export").status_code == 200
    return [(e["action"], e["actor"]) for e in entries(auditor)]


@pytest.mark.parametrize("action", sorted(ACCOUNTABILITY_ACTIONS))
def test_every_accountability_action_is_queryable_by_action(
    app: Flask, accountable_history: list[tuple[str, str]], auditor: Caller, action: str
) -> None:
    found = entries(auditor, action=action)
    assert len(found) == ACCOUNTABILITY_ACTIONS[action]
    assert [(e["action"], e["actor"]) for e in found] == [
        pair for pair in accountable_history if pair[0] == action
    ]
    seqs = [e["seq"] for e in found]
    assert seqs == sorted(set(seqs))


def test_the_accountability_history_is_complete_and_intact(
    app: Flask,
    accountable_history: list[tuple[str, str]],
    auditor: Caller,
    admin: Caller,
    shop: Caller,
    operator: str,
) -> None:
    names = {client_name(app, c): label for label, c in (("auditor", auditor), ("admin", admin))}
    names[client_name(app, shop)] = "shop"
    names[operator] = "cli"
    assert [(action, names[actor]) for action, actor in accountable_history] == [
        ("policy.load", "cli"),
        ("client.create", "cli"),
        ("decision", "shop"),
        ("audit.export", "auditor"),
        ("client.create", "cli"),
        ("audit.checkpoint", "admin"),
        ("client.revoke", "cli"),
        ("policy.load", "cli"),
        ("audit.export", "admin"),
        ("decision", "shop"),
        ("audit.checkpoint", "auditor"),
        ("audit.export", "auditor"),
    ]
    assert verify_audit(app).ok
