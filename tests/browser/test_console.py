"""The console as an officer uses it, in headless Chromium against a real server: sign in, search
the audit log, download and verify an export, erase a subject after confirming, and the refusals
(an app's key, a form forged on another origin)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from gateway.audit.export import verify_export
from tests.browser.conftest import Console


def sign_in(page: Page, console: Console, client: str) -> None:
    page.goto(console.url("/console/sign-in"))
    page.fill("#key", console.keys[client])
    page.click("#sign-in")
    expect(page.locator("#signed-in-as")).to_contain_text(client)


def api(
    console: Console, path: str, client: str = "demo-admin", body: Any = None
) -> tuple[int, Any]:
    """GET a /v1 path over HTTP with a demo client's key, or POST `body` to it."""
    headers = {"Authorization": f"Bearer {console.keys[client]}"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(console.url(path), data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def held(console: Console, subject: str) -> int:
    """How many attributes and events the gateway holds about a subject."""
    status, body = api(console, f"/v1/subjects/{subject}/export")
    assert status == 200
    return len(body["attributes"]) + len(body["events"])


def entries(console: Console, query: str) -> list[dict[str, Any]]:
    status, body = api(console, f"/v1/audit/entries?{query}")
    assert status == 200
    found: list[dict[str, Any]] = body["entries"]
    return found


def test_an_auditor_signs_in_searches_the_log_and_signs_out(
    page: Page, context: BrowserContext, console: Console
) -> None:
    page.goto(console.url("/console/audit"))
    expect(page).to_have_url(console.url("/console/sign-in"))
    sign_in(page, console, "demo-auditor")

    cookie = next(c for c in context.cookies() if c["name"] == "gateway_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert console.keys["demo-auditor"] not in json.dumps(context.cookies())

    page.click("#nav-audit")
    page.select_option("#action", "consent.grant")
    page.click("#search")
    rows = page.locator("#audit-entries tbody tr")
    expected = entries(console, "action=consent.grant")
    assert len(expected) == 2  # alice and carol granted in the demo
    expect(rows).to_have_count(len(expected))
    for row in rows.all():
        expect(row).to_contain_text("consent.grant")

    # no admin forms for an auditor
    page.click("#nav-clients")
    expect(page.locator("#clients")).to_be_visible()
    expect(page.locator("[id^=revoke-]")).to_have_count(0)

    page.click("#sign-out")
    expect(page.locator("#sign-in-form")).to_be_visible()
    page.goto(console.url("/console/audit"))
    expect(page.locator("#sign-in-form")).to_be_visible()
    expect(page.locator("#nav")).to_have_count(0)


def test_an_app_key_is_refused(page: Page, console: Console) -> None:
    page.goto(console.url("/console/sign-in"))
    page.fill("#key", console.keys["demo-shop"])
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#sign-in")
    assert answer.value.status == 403
    expect(page.locator("#sign-in-error")).to_contain_text("auditor")
    expect(page.locator("#nav")).to_have_count(0)
    page.goto(console.url("/console/"))
    expect(page.locator("#sign-in-form")).to_be_visible()


def test_an_audit_export_downloads_and_verifies(
    page: Page, console: Console, tmp_path: Path
) -> None:
    sign_in(page, console, "demo-auditor")
    page.click("#nav-audit")
    for link, suffix in (("#export-jsonl", ".jsonl"), ("#export-csv", ".csv")):
        with page.expect_download() as download:
            page.click(link)
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.suffix == suffix
        with saved.open(encoding="utf-8", newline="") as handle:
            verification = verify_export(handle)
        assert verification.ok, verification.problem
        assert verification.entries > 10
    exports = entries(console, "action=audit.export")
    assert [e["actor"] for e in exports] == ["demo-auditor", "demo-auditor"]


def test_an_admin_erases_a_subject_only_after_typing_its_id(page: Page, console: Console) -> None:
    before = held(console, "alice")
    assert before > 0
    sign_in(page, console, "demo-admin")
    page.click("#nav-subjects")
    page.fill("#subject_id", "alice")
    page.click("#subject-lookup")
    expect(page.locator("#attributes")).to_contain_text("favorite_brand")

    page.click("#erase-link")
    page.fill("#confirm", "alic")
    page.click("#erase-submit")
    expect(page.locator("#confirm-error, #form-error").first).to_be_visible()
    assert held(console, "alice") == before
    assert entries(console, "action=subject.erase") == []

    page.fill("#confirm", "alice")
    page.click("#erase-submit")
    expect(page.locator("#flashes")).to_contain_text("alice")
    assert held(console, "alice") == 0
    erasures = entries(console, "action=subject.erase")
    # the erasure, then the confirmation that the subject's data key is gone
    assert [(e["actor"], e["outcome"]) for e in erasures] == [
        ("demo-admin", "erased"),
        ("demo-admin", "key_destroyed"),
    ]


class _Forger(BaseHTTPRequestHandler):
    """Another origin's page with a form aimed at the console's erasure, without a token."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        page = (
            f'<form id="forged" method="post" action="{self.target}">'
            '<input type="hidden" name="confirm" value="alice">'
            '<button id="go" type="submit">Win a prize</button></form>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def forger(console: Console) -> Iterator[str]:
    handler = type("Forger", (_Forger,), {"target": console.url("/console/subjects/alice/erase")})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_form_forged_on_another_origin_is_refused(
    page: Page, console: Console, forger: str
) -> None:
    before = held(console, "alice")
    sign_in(page, console, "demo-admin")
    page.goto(forger)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#go")
    assert answer.value.status == 400
    expect(page.locator("#error-message")).to_contain_text("security token")
    assert held(console, "alice") == before
    assert entries(console, "action=subject.erase") == []


def test_a_tampered_token_is_refused(page: Page, console: Console) -> None:
    before = held(console, "alice")
    sign_in(page, console, "demo-admin")
    page.goto(console.url("/console/subjects/alice/erase"))
    page.locator("#erase-form input[name=csrf_token]").evaluate("input => input.value = 'forged'")
    page.fill("#confirm", "alice")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#erase-submit")
    assert answer.value.status == 400
    assert held(console, "alice") == before
