"""The audit log in the console: the API's filters and cursors, its validation, the same export
downloads (audited alike) and the same verification."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask

from gateway.audit.export import verify_export
from tests.conftest import Caller
from tests.console.conftest import (
    CALENDAR,
    CANDIDATES,
    SUBJECT,
    Browser,
    audit_entries,
    listed_seqs,
    name_of,
    ok,
    seed_subject,
    text,
)
from tests.stores import raw


def api_seqs(reader: Caller, **params: Any) -> list[int]:
    body = ok(reader.get("/v1/audit/entries", query_string={**params, "limit": 1000}))
    assert body["next_cursor"] is None
    return [entry["seq"] for entry in body["entries"]]


@pytest.fixture
def history(shop: Caller, admin: Caller, mailer: Caller) -> None:
    """Decisions on two days, for two purposes and subjects, by two clients."""
    seed_subject(shop, admin)
    body = {"subject_id": "erin-4", "purpose": "email_marketing", "candidates": CANDIDATES}
    with time_machine.travel(CALENDAR - timedelta(days=2)):
        ok(mailer.post("/v1/personalize", body))
    ok(shop.post("/v1/personalize", {**body, "purpose": "recommendations"}))


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"action": "decision"},
        {"purpose": "recommendations", "outcome": "allow"},
        {"subject_id": SUBJECT},
        {"client": "{shop}"},
        {"since": "2027-05-14T00:00:00Z"},
        {"until": "2027-05-14T00:00:00+02:00", "action": "decision"},
        {"outcome": "no-such-outcome"},
    ],
    ids=str,
)
def test_a_search_lists_what_the_api_returns(
    app: Flask, history: None, reader: Browser, auditor: Caller, shop: Caller, filters: dict
) -> None:
    filters = {k: v.replace("{shop}", name_of(app, shop)) for k, v in filters.items()}
    expected = api_seqs(auditor, **filters)
    page = reader.get("/console/audit", query_string={**filters, "limit": 200})
    assert page.status_code == 200
    assert listed_seqs(page) == expected
    if not expected:
        assert 'id="no-entries"' in text(page)


def test_an_empty_box_is_no_filter(history: None, as_auditor: Browser, auditor: Caller) -> None:
    query = {"subject_id": "", "purpose": "", "action": "", "since": "", "limit": "200"}
    page = as_auditor.get("/console/audit", query_string=query)
    assert page.status_code == 200
    assert listed_seqs(page) == api_seqs(auditor)


def test_pages_follow_the_apis_cursor_to_the_end(
    history: None, as_auditor: Browser, auditor: Caller, shop: Caller
) -> None:
    body = {"subject_id": "f-5", "purpose": "recommendations", "candidates": CANDIDATES}
    for _ in range(50):
        ok(shop.post("/v1/personalize", body))
    expected = api_seqs(auditor, action="decision")
    assert len(expected) > 50
    seen: list[int] = []
    page = as_auditor.get("/console/audit", query_string={"action": "decision", "limit": 25})
    pages = 0
    while True:
        pages += 1
        assert page.status_code == 200
        found = listed_seqs(page)
        assert len(found) == 25 or 'id="last-page"' in text(page)
        seen += found
        if pages > 1:
            assert 'id="first-page"' in text(page)
        link = text(page).split('id="next-page"')[0].rsplit('href="', 1)
        if 'id="next-page"' not in text(page):
            break
        page = as_auditor.get(link[1].split('"')[0].replace("&amp;", "&"))
    assert seen == expected
    assert pages == -(-len(expected) // 25)


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"since": "yesterday"}, "since", "Not a valid datetime."),
        ({"since": "2027-05-15T00:00:00"}, "since", "Not a valid aware datetime."),
        (
            {"since": "2027-05-15T00:00:00Z", "until": "2027-05-14T00:00:00Z"},
            "until",
            "Must be later than since.",
        ),
        ({"until": "9999-12-31T23:59:59-14:00"}, "until", "Must be representable in UTC"),
        ({"action": "nope"}, "action", "Must be one of"),
        ({"limit": "0"}, "limit", "Must be greater than or equal to 1"),
        ({"limit": "many"}, "limit", "Not a valid integer."),
        ({"cursor": "!!"}, "cursor", "Not a cursor."),
        ({"cursor": "c2VxOjk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor", "Not a cursor."),
        ({"color": "blue"}, "color", "Unknown field."),
        ({"purpose": "a\x00b"}, "purpose", "Must not contain NUL characters."),
        ({"purpose": "p" * 65}, "purpose", "Length must be between 1 and 64."),
        ({"subject_id": "a/b"}, "subject_id", "Must not contain whitespace"),
        ({"subject_id": "x" * 100_000}, "subject_id", "Length must be between 1 and 256."),
    ],
    ids=lambda value: str(value)[:40],
)
def test_bad_filters_name_the_field_on_the_page(
    as_auditor: Browser, query: dict[str, str], field: str, message: str
) -> None:
    page = as_auditor.get("/console/audit", query_string=query)
    assert page.status_code == 422
    assert page.mimetype == "text/html"
    html = text(page)
    assert 'id="form-errors"' in html and f"<code>{field}</code>" in html
    assert message.replace("'", "&#39;") in html
    assert 'id="audit-search-form"' in html and 'id="audit-entries"' not in html


def test_an_entry_shows_every_field(app: Flask, history: None, reader: Browser) -> None:
    entry = audit_entries(app, action="attributes.collect")[0]
    page = text(reader.get(f"/console/audit/{entry['seq']}"))
    for name in ("hash", "prev_hash", "policy_hash", "actor", "action", "subject", "request_id"):
        assert str(entry[name]) in page, name
    assert '"accepted"' in page  # its fields


# --- exports ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_download_is_the_apis_and_verifies(
    app: Flask, history: None, reader: Browser, auditor: Caller, fmt: str
) -> None:
    mine = reader.get("/console/audit/export", query_string={"format": fmt})
    assert mine.status_code == 200
    lines = text(mine).splitlines(True)  # read before the next request: it is streamed
    api = auditor.get("/v1/audit/export", query_string={"format": fmt})
    api_lines = text(api).splitlines(True)
    mimetype = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    assert mine.mimetype == api.mimetype == mimetype
    assert mine.headers["Content-Disposition"].startswith("attachment; filename=")
    key = ok(auditor.get("/v1/keys/signing"))["public_key"]
    assert verify_export(lines, key).ok
    assert verify_export(api_lines, key).ok
    body = slice(2, -1) if fmt == "csv" else slice(1, -1)
    # the API's export holds one entry more: its own audit.export, after the console's
    assert lines[body] == api_lines[body][:-1]
    assert len(lines[body]) == len(audit_entries(app)) - 1


def test_an_export_is_audited_as_the_apis_with_the_console_client(
    app: Flask, history: None, as_auditor: Browser, auditor: Caller, admin: Caller
) -> None:
    window = {"format": "csv", "since": "2027-05-10T00:00:00Z", "until": "2027-05-16T00:00:00Z"}
    mine = as_auditor.get("/console/audit/export", query_string=window)
    assert mine.status_code == 200 and text(mine)
    api = admin.get("/v1/audit/export", query_string=window)
    assert api.status_code == 200 and text(api)
    console_entry, api_entry = audit_entries(app, action="audit.export")
    assert console_entry["actor"] == name_of(app, auditor)
    assert console_entry["request_id"] == mine.headers["X-Request-Id"]
    assert api_entry["actor"] == name_of(app, admin)
    for name in ("action", "outcome", "fields", "subject", "purpose", "reasons"):
        assert console_entry[name] == api_entry[name], name
    assert console_entry["fields"]["since"].startswith("2027-05-10T00:00:00")


@pytest.mark.parametrize(
    ("query", "field"),
    [({"format": "xml"}, "format"), ({"since": "soon"}, "since"), ({"x": "1"}, "x")],
)
def test_a_bad_export_names_the_field_and_exports_nothing(
    app: Flask, as_auditor: Browser, query: dict[str, str], field: str
) -> None:
    page = as_auditor.get("/console/audit/export", query_string=query)
    assert page.status_code == 422 and page.mimetype == "text/html"
    assert f"<code>{field}</code>" in text(page)
    assert audit_entries(app, action="audit.export") == []


# --- verification ----------------------------------------------------------------------------


def test_verification_runs_the_apis_and_shows_a_break(
    app: Flask, reader: Browser, auditor: Caller, shop: Caller, admin: Caller
) -> None:
    seed_subject(shop, admin)  # all of it just now: no entry waits long for a signed head
    assert 'id="verify-result"' not in text(reader.get("/console/audit/verify"))
    page = reader.post("/console/audit/verify")
    assert page.status_code == 200
    report = ok(auditor.get("/v1/audit/verify"))
    assert report["ok"]
    assert (
        f"The chain is intact: {report['entries']} entries and {report['checkpoints']} "
        "checkpoints verified" in text(page)
    )
    bad = audit_entries(app, action="decision")[0]["seq"]
    with raw(app.config) as db:
        db.execute("UPDATE audit_entry SET outcome = ? WHERE seq = ?", ("allow!", bad))
    broken = text(reader.post("/console/audit/verify"))
    assert 'id="verify-broken"' in broken
    report = ok(auditor.get("/v1/audit/verify"))
    assert report["first_bad_seq"] == bad
    assert f'href="/console/audit/{bad}">{bad}</a>' in broken
    assert report["problem"].replace("'", "&#39;") in broken
