"""Console actions do what the API and the CLI do, through the same code, and are audited alike
with the signed-in client as actor: a subject's access and erasure, purges, revocations. And no
form input, however hostile, is a 500."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from markupsafe import escape

from gateway import keyring
from gateway.console.subjects import MISMATCH
from gateway.retention import LEASE
from gateway.store.clients import authenticate
from gateway.store.db import database, write_transaction
from gateway.store.keystore import wrapped_key
from gateway.store.leases import acquire
from gateway.store.models import Attribute, ConsentRecord, Event
from tests.conftest import Caller
from tests.console.conftest import (
    CALENDAR,
    EMAIL,
    SUBJECT,
    Browser,
    audit_entries,
    name_of,
    ok,
    seed_subject,
    text,
)

OTHER = "gus-2202"


def pseudonym_of(app: Flask, subject: str) -> str:
    with app.app_context():
        return keyring().pseudonym(subject)


def key_held(app: Flask, subject: str) -> bool:
    with app.app_context(), database.connection_context():
        return wrapped_key(pseudonym_of(app, subject)) is not None


def held_rows(app: Flask) -> dict[str, int]:
    with app.app_context(), database.connection_context():
        return {m.__name__: m.select().count() for m in (Attribute, Event, ConsentRecord)}


def shape(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between the console's entry and the API's: all but who, when, which."""
    return entry["action"], entry["outcome"], sorted(entry["fields"]), entry["reasons"]


# --- a subject's access export ----------------------------------------------------------------


def test_viewing_a_subject_is_an_access_audited_as_the_apis_export(
    app: Flask, reader: Browser, shop: Caller, admin: Caller, auditor: Caller
) -> None:
    seed_subject(shop, admin)
    page = reader.get(f"/console/subjects/{SUBJECT}")
    assert page.status_code == 200 and EMAIL in text(page)
    ok(auditor.get(f"/v1/subjects/{SUBJECT}/export"))
    mine, api = audit_entries(app, action="subject.export")
    assert shape(mine) == shape(api) and mine["subject"] == api["subject"]
    assert mine["subject"] == pseudonym_of(app, SUBJECT)
    assert mine["request_id"] == page.headers["X-Request-Id"]
    assert f'<span id="signed-in-as">{mine["actor"]} ' in text(page)
    assert api["actor"] == name_of(app, auditor)


def test_the_access_download_is_the_apis_export(
    app: Flask, as_auditor: Browser, shop: Caller, admin: Caller, auditor: Caller
) -> None:
    seed_subject(shop, admin)
    download = as_auditor.get(f"/console/subjects/{SUBJECT}/export")
    assert download.status_code == 200
    assert download.mimetype == "application/json"
    assert download.headers["Content-Disposition"].startswith('attachment; filename="subject-')
    mine = download.get_json()
    api = ok(auditor.get(f"/v1/subjects/{SUBJECT}/export"))
    assert set(mine) == set(api)
    for name in ("subject_id", "pseudonym", "attributes", "events", "consents"):
        assert mine[name] == api[name], name
    assert mine["audit_entries"] == api["audit_entries"][:-1]  # the API's own access follows
    assert {a["name"]: a["value"] for a in mine["attributes"]}["email"] == EMAIL
    assert len(audit_entries(app, action="subject.export")) == 2


@pytest.mark.parametrize("subject_id", ["a b", "x" * 257, "%00", "%EF%BF%BD"])
def test_a_bad_subject_id_is_named_on_a_page(as_auditor: Browser, subject_id: str) -> None:
    page = as_auditor.get(f"/console/subjects/{subject_id}")
    assert page.status_code == 422 and page.mimetype == "text/html"
    assert "<code>subject_id</code>" in text(page)
    lookup = as_auditor.get("/console/subjects", query_string={"subject_id": "a b"})
    assert lookup.status_code == 422 and 'id="subject_id-error"' in text(lookup)


def test_the_lookup_opens_the_subjects_page(as_auditor: Browser) -> None:
    response = as_auditor.get("/console/subjects", query_string={"subject_id": SUBJECT})
    assert response.status_code == 303
    assert response.headers["Location"] == f"/console/subjects/{SUBJECT}"


# --- erasure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("typed", [OTHER, SUBJECT.upper(), SUBJECT + " ", ""])
def test_an_erasure_not_confirmed_with_the_same_id_erases_nothing(
    app: Flask, as_admin: Browser, shop: Caller, admin: Caller, typed: str
) -> None:
    seed_subject(shop, admin)
    before = held_rows(app)
    page = as_admin.post(f"/console/subjects/{SUBJECT}/erase", {"confirm": typed})
    assert page.status_code == 422
    expected = 'id="confirm-error"' if typed == "" else str(escape(MISMATCH))
    assert expected in text(page)
    assert held_rows(app) == before
    assert key_held(app, SUBJECT)
    assert audit_entries(app, action="subject.erase") == []


def test_an_erasure_goes_the_apis_way_and_destroys_the_key(
    app: Flask, as_admin: Browser, shop: Caller, admin: Caller
) -> None:
    seed_subject(shop, admin)
    seed_subject(shop, admin, OTHER)
    assert key_held(app, SUBJECT) and key_held(app, OTHER)
    confirm = as_admin.get(f"/console/subjects/{SUBJECT}/erase")
    assert confirm.status_code == 200 and 'id="erase-form"' in text(confirm)
    response = as_admin.post(f"/console/subjects/{SUBJECT}/erase", {"confirm": SUBJECT})
    assert response.status_code == 303
    assert "2 attributes, 2 events and 1 consent records deleted; its data key was destroyed" in (
        text(as_admin.get(response.headers["Location"]))
    )
    assert not key_held(app, SUBJECT)
    export = ok(admin.get(f"/v1/subjects/{SUBJECT}/export"))
    assert export["attributes"] == export["events"] == export["consents"] == []
    assert ok(admin.request("DELETE", f"/v1/subjects/{OTHER}"))["key_destroyed"]
    mine = audit_entries(app, action="subject.erase", subject=pseudonym_of(app, SUBJECT))
    api = audit_entries(app, action="subject.erase", subject=pseudonym_of(app, OTHER))
    assert [shape(e) for e in mine] == [shape(e) for e in api]
    ordered, destroyed = mine
    assert (ordered["outcome"], destroyed["outcome"]) == ("erased", "key_destroyed")
    assert ordered["fields"] == {
        "deleted": {"attributes": 2, "events": 2, "consents": 1},
        "key": "destroy_pending",
    }
    assert destroyed["fields"] == {"key": "destroyed", "ordered_by": ordered["seq"]}
    assert {e["actor"] for e in mine} == {name_of(app, admin)}
    assert {e["request_id"] for e in mine} == {response.headers["X-Request-Id"]}
    assert held_rows(app)["Attribute"] == 0


# --- purges ----------------------------------------------------------------------------------


def collect_old_events(shop: Caller, subject: str) -> None:
    """Two browsing events collected 100 days ago: past their retention (P90D) today."""
    with time_machine.travel(CALENDAR - timedelta(days=100)):
        at = (CALENDAR - timedelta(days=100, minutes=5)).isoformat()
        events = [
            {"type": "view", "item_id": f"sku-{i}", "category": "shoes", "at": at} for i in (1, 2)
        ]
        body = {"database": "shop_events", "events": events}
        ok(shop.post(f"/v1/subjects/{subject}/events", body))


def test_a_dry_run_counts_and_deletes_nothing(
    app: Flask, as_admin: Browser, shop: Caller, admin: Caller
) -> None:
    collect_old_events(shop, SUBJECT)
    response = as_admin.post("/console/purges", {"dry_run": "y"})
    assert response.status_code == 303
    page = text(as_admin.get(response.headers["Location"]))
    assert "2 rows would be deleted; nothing was deleted." in page
    (run,) = ok(admin.get("/v1/purges"))["runs"]
    assert run["dry_run"] and run["status"] == "finished"
    assert held_rows(app)["Event"] == 2
    (entry,) = audit_entries(app, action="purge")
    assert (entry["actor"], entry["outcome"]) == (name_of(app, admin), "dry_run")
    assert entry["fields"]["found"] == {"events:browsing": 2}


def test_a_purge_runs_the_apis_way(
    app: Flask, as_admin: Browser, shop: Caller, admin: Caller
) -> None:
    collect_old_events(shop, SUBJECT)
    response = as_admin.post("/console/purges", {})  # the box unticked: a real run
    assert response.status_code == 303
    assert "finished: 2 rows deleted." in text(as_admin.get(response.headers["Location"]))
    assert held_rows(app)["Event"] == 0
    collect_old_events(shop, OTHER)
    ok(admin.post("/v1/purges", {"dry_run": False}))
    mine, api = audit_entries(app, action="purge")
    assert shape(mine) == shape(api)
    assert mine["fields"]["deleted"] == api["fields"]["deleted"] == {"events:browsing": 2}
    assert mine["actor"] == api["actor"] == name_of(app, admin)
    runs = ok(admin.get("/v1/purges"))["runs"]
    assert [run["dry_run"] for run in runs] == [False, False]


def test_a_purge_while_another_runs_is_a_409_message(
    app: Flask, as_admin: Browser, admin: Caller
) -> None:
    with app.app_context(), database.connection_context(), write_transaction():
        assert acquire(LEASE, "otherhost:1:abcd", ttl=timedelta(minutes=5), now=CALENDAR)
    page = as_admin.post("/console/purges", {"dry_run": "y"})
    assert page.status_code == 409 and page.mimetype == "text/html"
    assert "Another purge is running: nothing was started." in text(page)
    assert ok(admin.get("/v1/purges"))["runs"] == []
    assert audit_entries(app, action="purge") == []


# --- clients ---------------------------------------------------------------------------------


def test_a_revocation_not_confirmed_with_the_name_revokes_nothing(
    app: Flask, as_admin: Browser, new_caller: Any
) -> None:
    other = new_caller("app", ("recommendations",))
    name = name_of(app, other)
    page = as_admin.post(f"/console/clients/{name}/revoke", {"confirm": name + "x"})
    assert page.status_code == 422
    assert "nothing was revoked" in text(page)
    assert other.get("/v1/keys/signing").status_code == 200
    assert audit_entries(app, action="client.revoke") == []


def test_a_revocation_is_audited_as_the_clis(
    app: Flask, as_admin: Browser, admin: Caller, new_caller: Any, runner: Any
) -> None:
    first, second = new_caller("auditor"), new_caller("auditor")
    name, other_name = name_of(app, first), name_of(app, second)
    response = as_admin.post(f"/console/clients/{name}/revoke", {"confirm": name})
    assert response.status_code == 303
    assert f"Revoked {name}." in text(as_admin.get(response.headers["Location"]))
    assert first.get("/v1/keys/signing").status_code == 401
    assert runner.invoke(args=["clients", "revoke", other_name]).exit_code == 0
    mine, cli = audit_entries(app, action="client.revoke")
    assert shape(mine) == shape(cli)
    assert (mine["fields"], cli["fields"]) == ({"client": name}, {"client": other_name})
    assert mine["actor"] == name_of(app, admin) and cli["actor"].startswith("cli:")
    assert mine["request_id"] == response.headers["X-Request-Id"]
    clients = text(as_admin.get("/console/clients"))
    assert f'id="revoke-{name}"' not in clients and "revoked 2027-05-15" in clients


def test_revoking_ones_own_client_signs_out(app: Flask, as_admin: Browser, admin: Caller) -> None:
    name = name_of(app, admin)
    confirm = text(as_admin.get(f"/console/clients/{name}/revoke"))
    assert "This is your own client: you will be signed out." in confirm
    response = as_admin.post(f"/console/clients/{name}/revoke", {"confirm": name})
    assert response.status_code == 303 and response.headers["Location"] == "/console/sign-in"
    assert "You revoked your own client" in text(as_admin.get("/console/sign-in"))
    assert not as_admin.signed_in()
    revoked = audit_entries(app, action="client.revoke")
    signed_out = audit_entries(app, action="console.sign_out")
    assert [(e["actor"], e["fields"]) for e in revoked] == [(name, {"client": name})]
    assert [(e["actor"], e["outcome"]) for e in signed_out] == [(name, "revoked")]
    with app.app_context(), database.connection_context():
        assert authenticate(admin.key) is None


def test_an_unknown_client_is_a_404_page(as_admin: Browser) -> None:
    page = as_admin.get("/console/clients/nobody-here/revoke")
    assert page.status_code == 404 and "There is no client named" in text(page)


# --- hostile input ---------------------------------------------------------------------------

HOSTILE = {
    "NUL": "abc\x00def",
    "U+FFFD": "\ufffd",
    "long": "x" * 100_000,
    "huge": "y" * (2 * 1024 * 1024),
}


def forms(app: Flask, admin: Caller) -> dict[str, tuple[str, str]]:
    name = name_of(app, admin)
    return {
        "sign-in": ("/console/sign-in", "key"),
        "erase": (f"/console/subjects/{SUBJECT}/erase", "confirm"),
        "revoke": (f"/console/clients/{name}/revoke", "confirm"),
        "lookup": ("/console/subjects", "subject_id"),
    }


@pytest.mark.parametrize("value", sorted(HOSTILE))
@pytest.mark.parametrize("form", ["sign-in", "erase", "revoke", "lookup"])
def test_hostile_form_input_is_a_4xx_page_and_changes_nothing(
    app: Flask,
    as_admin: Browser,
    admin: Caller,
    shop: Caller,
    form: str,
    value: str,
) -> None:
    seed_subject(shop, admin)
    path, field = forms(app, admin)[form]
    before = (held_rows(app), len(audit_entries(app)))
    response = as_admin.post(path, {field: HOSTILE[value]})
    assert 400 <= response.status_code < 500, text(response)[:500]
    assert response.mimetype == "text/html"
    assert (held_rows(app), len(audit_entries(app))) == before
    with app.app_context(), database.connection_context():
        assert authenticate(admin.key) is not None


@pytest.mark.parametrize(
    "query",
    [
        {"subject_id": "a\x00b"},
        {"subject_id": "z" * 300},
        {"subject_id": ""},
    ],
    ids=["NUL", "long", "empty"],
)
def test_a_hostile_lookup_is_a_422_page(as_auditor: Browser, query: dict[str, str]) -> None:
    page = as_auditor.get("/console/subjects", query_string=query)
    assert page.status_code == 422 and page.mimetype == "text/html"
