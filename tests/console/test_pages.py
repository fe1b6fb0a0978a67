"""Every console page, for both roles, on real data: what it shows, what an auditor is not
offered (and may not do), its headers, and its error pages."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask

from gateway import create_app
from gateway.console import SECURITY_HEADERS
from gateway.store.clients import authenticate
from gateway.store.db import database
from gateway.store.models import Attribute
from tests.conftest import Caller
from tests.console.conftest import (
    CALENDAR,
    CANDIDATES,
    EMAIL,
    SUBJECT,
    Browser,
    audit_entries,
    name_of,
    ok,
    seed_subject,
    text,
)
from tests.stores import raw

PAGES = {
    "/console/": 'id="decisions"',
    "/console/audit": 'id="audit-entries"',
    "/console/audit/1": 'id="entry"',
    "/console/audit/verify": 'id="verify-form"',
    "/console/subjects": 'id="subject-lookup-form"',
    f"/console/subjects/{SUBJECT}": 'id="consents"',
    "/console/registry": 'id="records-csv"',
    "/console/policies": 'id="policy-hash"',
    "/console/purges": 'id="purge-runs"',
    "/console/clients": 'id="clients"',
}
ADMIN_ONLY = {
    "/console/purges": 'id="purge-form"',
    "/console/clients": 'id="revoke-',
    f"/console/subjects/{SUBJECT}": 'id="erase-link"',
}


@pytest.fixture
def seeded(shop: Caller, admin: Caller) -> None:
    seed_subject(shop, admin)
    ok(admin.post("/v1/purges", {"dry_run": True}))


@pytest.mark.parametrize("path", sorted(PAGES))
def test_every_page_renders_for_both_roles(seeded: None, reader: Browser, path: str) -> None:
    response = reader.get(path)
    assert response.status_code == 200, text(response)[:2000]
    assert response.mimetype == "text/html"
    assert PAGES[path] in text(response)
    assert 'id="nav"' in text(response) and 'id="sign-out-form"' in text(response)


@pytest.mark.parametrize("path", sorted(ADMIN_ONLY))
def test_admin_forms_are_offered_to_admins_only(
    seeded: None, as_auditor: Browser, as_admin: Browser, path: str
) -> None:
    assert ADMIN_ONLY[path] in text(as_admin.get(path))
    assert ADMIN_ONLY[path] not in text(as_auditor.get(path))


def test_pages_show_the_real_data(
    app: Flask, seeded: None, reader: Browser, admin: Caller, auditor: Caller
) -> None:
    subject = text(reader.get(f"/console/subjects/{SUBJECT}"))
    assert EMAIL in subject  # decrypted, as the access export gives it
    assert "purchase_history" in subject and "shop_events" in subject
    export = ok(admin.get(f"/v1/subjects/{SUBJECT}/export"))
    assert export["consents"][0]["receipt"]["payload"]["receipt_id"][:12] in subject
    assert "REG-2024-0042" in text(reader.get("/console/registry"))
    policy_hash = ok(admin.get("/v1/policies"))["policy_hash"]
    assert policy_hash in text(reader.get("/console/policies"))
    (run,) = ok(admin.get("/v1/purges"))["runs"]
    assert f'<td class="num">{run["id"]}</td>' in text(reader.get("/console/purges"))
    clients = text(reader.get("/console/clients"))
    assert name_of(app, admin) in clients and name_of(app, auditor) in clients
    first = audit_entries(app)[0]
    assert first["hash"] in text(reader.get("/console/audit/1"))


def test_the_clients_page_shows_no_key_or_digest(app: Flask, as_admin: Browser) -> None:
    page = text(as_admin.get("/console/clients"))
    with app.app_context(), database.connection_context():
        from gateway.store.clients import list_clients

        digests = [client.key_hash for client in list_clients()]
    assert digests and not any(digest in page for digest in digests)
    assert "gwk_" not in page


ADMIN_ACTIONS = [
    ("GET", f"/console/subjects/{SUBJECT}/erase", {}),
    ("POST", f"/console/subjects/{SUBJECT}/erase", {"confirm": SUBJECT}),
    ("POST", "/console/purges", {}),
    ("GET", "/console/clients/{admin}/revoke", {}),
    ("POST", "/console/clients/{admin}/revoke", {"confirm": "{admin}"}),
]


@pytest.mark.parametrize(("method", "path", "data"), ADMIN_ACTIONS)
def test_an_auditor_may_not_erase_purge_or_revoke(
    app: Flask,
    seeded: None,
    as_auditor: Browser,
    admin: Caller,
    method: str,
    path: str,
    data: dict[str, str],
) -> None:
    name = name_of(app, admin)
    path = path.replace("{admin}", name)
    data = {k: v.replace("{admin}", name) for k, v in data.items()}
    before = len(audit_entries(app))
    if method == "GET":
        response = as_auditor.get(path)
    else:
        response = as_auditor.post(path, data)
    assert response.status_code == 403
    assert response.mimetype == "text/html"
    assert "This needs the role admin; the client is auditor." in text(response)
    assert len(audit_entries(app)) == before
    assert len(ok(admin.get("/v1/purges"))["runs"]) == 1
    with app.app_context(), database.connection_context():
        assert authenticate(admin.key) is not None
        assert Attribute.select().count() == 2


def test_security_headers_are_on_every_console_response(
    seeded: None, as_admin: Browser, browser: Browser
) -> None:
    responses = [as_admin.get(path) for path in PAGES]
    responses += [browser.get("/console/sign-in"), as_admin.get("/console/no-such-page")]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        assert response.headers["Cache-Control"] == "no-store"
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "default-src 'self'" in policy and "'unsafe-inline'" not in policy


def test_no_page_carries_a_script_or_an_inline_style(seeded: None, as_admin: Browser) -> None:
    for path in PAGES:
        html = text(as_admin.get(path)).lower()
        assert "<script" not in html and " style=" not in html and "javascript:" not in html
        assert "http://" not in html and "https://" not in html  # nothing from elsewhere


def test_the_stylesheet_is_served_from_the_package(browser: Browser) -> None:
    response = browser.get("/console/static/console.css")
    assert response.status_code == 200
    assert response.mimetype == "text/css"
    assert ".topbar" in text(response)
    response.close()


def test_console_errors_are_html_and_the_apis_stay_problem_json(
    as_admin: Browser, admin: Caller
) -> None:
    missing = as_admin.get("/console/no-such-page")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert "There is no such page in the console." in text(missing)
    no_entry = as_admin.get("/console/audit/999999")
    assert no_entry.status_code == 404 and "There is no audit entry 999999." in text(no_entry)
    assert as_admin.get(f"/console/audit/{2**63}").status_code == 404
    assert as_admin.get("/console/audit/0").status_code == 404
    api = admin.get("/v1/no-such-thing")
    assert api.status_code == 404 and api.mimetype == "application/problem+json"
    assert admin.get("/v1/subjects/%00/export").mimetype == "application/problem+json"


# --- the overview ----------------------------------------------------------------------------


def stat(page: str, name: str) -> int:
    found = re.search(rf'id="stat-{name}">(\d+)<', page)
    assert found is not None, name
    return int(found.group(1))


def test_the_overview_counts_decisions_per_day_by_purpose_and_outcome(
    app: Flask, as_auditor: Browser, shop: Caller, admin: Caller, auditor: Caller
) -> None:
    seed_subject(shop, admin)  # today: recommendations allowed, ads_personalization fallback
    # another subject, with no consent: a decision takes its time from the latest consent change
    body = {"subject_id": "erin-4", "purpose": "recommendations", "candidates": CANDIDATES}
    with time_machine.travel(CALENDAR - timedelta(days=3)):
        ok(shop.post("/v1/personalize", body))
        ok(shop.post("/v1/personalize", body))
    with time_machine.travel(CALENDAR - timedelta(days=20)):  # before the window
        ok(shop.post("/v1/personalize", body))
    page = text(as_auditor.get("/console/"))
    assert stat(page, "decisions") == 4
    assert stat(page, "grants") == 1 and stat(page, "withdrawals") == 0
    since = (CALENDAR - timedelta(days=13)).date().isoformat() + "T00:00:00Z"
    summary = ok(auditor.get("/v1/audit/summary", query_string={"since": since}))
    assert summary["decisions"]["recommendations"] == {"allow": 1, "fallback": 2}
    assert stat(page, "entries") == summary["entries"]  # reading the summary appends nothing
    bars = re.findall(r'<rect class="bar bar-(\w+)"[^>]*><title>([\d-]+): (\d+) \w+</title>', page)
    today, earlier = CALENDAR.date().isoformat(), (CALENDAR - timedelta(days=3)).date().isoformat()
    assert sorted(bars) == sorted(
        [("allow", today, "1"), ("fallback", earlier, "2"), ("fallback", today, "1")]
    )
    assert page.count('<figure class="chart"') == 2  # recommendations, ads_personalization
    assert 'id="chart-recommendations"' in page and 'id="chart-ads_personalization"' in page
    assert page.count('<text class="day"') == 2 * 14
    assert "no_consent" in page


def test_the_overview_lists_registrations_due_for_review(as_auditor: Browser) -> None:
    page = text(as_auditor.get("/console/"))
    reviews = page[page.index('id="reviews"') :]
    assert "mobile_location" in reviews and "overdue by 500 days" in reviews
    assert "shop_events" in reviews and "due in 46 days" in reviews
    assert "crm" not in reviews  # due on 2027-12-31, beyond the notice


def test_the_overview_shows_the_last_purge(as_auditor: Browser, admin: Caller) -> None:
    assert "No purge has run yet." in text(as_auditor.get("/console/"))
    run = ok(admin.post("/v1/purges", {"dry_run": True}))
    page = text(as_auditor.get("/console/"))
    last = page[page.index('id="last-purge"') :]
    assert f'<dd>{run["id"]} <span class="badge">dry run</span></dd>' in last
    assert "finished" in last


def chain_status(browser: Browser) -> str:
    page = text(browser.get("/console/"))
    found = re.search(r'id="chain-status">(.*?)</p>', page, re.S)
    assert found is not None
    return " ".join(found.group(1).split())


def test_the_overview_reports_the_last_recorded_verification_honestly(
    app: Flask, as_auditor: Browser, shop: Caller, admin: Caller, runner: Any
) -> None:
    assert chain_status(as_auditor).startswith("No verification has been recorded yet")
    seed_subject(shop, admin)
    assert runner.invoke(args=["audit", "verify"]).exit_code == 0
    head = json.loads(Path(app.config["AUDIT_VERIFIED_STATE"]).read_text())["seq"]
    status = chain_status(as_auditor)
    assert f"Entries 1 to {head} were verified" in status
    assert f"entry {head} still has the hash verified then" in status
    ok(
        shop.post(
            "/v1/personalize",
            {"subject_id": "x", "purpose": "recommendations", "candidates": CANDIDATES},
        )
    )
    assert "1 entries written since are not verified yet." in chain_status(as_auditor)
    with raw(app.config) as db:
        db.execute("UPDATE audit_entry SET actor = ? WHERE seq = ?", ("someone-else", head))
    status = chain_status(as_auditor)
    assert status.startswith(f"Broken at seq {head}:") and "rewritten" in status


def test_the_overview_names_a_verification_state_it_cannot_trust(
    app: Flask, as_auditor: Browser, runner: Any
) -> None:
    assert runner.invoke(args=["audit", "verify"]).exit_code == 0
    state = Path(app.config["AUDIT_VERIFIED_STATE"])
    edited = json.loads(state.read_text())
    edited["verified_at"] = "2030-01-01T00:00:00.000000+00:00"
    state.write_text(json.dumps(edited))
    status = chain_status(as_auditor)
    assert status.startswith("The last recorded verification cannot be used")
    assert "the file was edited" in status


def test_without_its_keyring_the_console_is_a_503_page_and_health_is_untouched(
    app: Flask,
) -> None:
    """The session's key comes from the keyring: without one the console says so; the paths
    that need no keyring never open a session."""
    settings = ("HOME", "DATABASE_URL", "KEYSTORE_URL", "POLICIES", "REGISTRY")
    elsewhere = {name: app.config[name] for name in settings}
    keyless = create_app(
        {**elsewhere, "TESTING": True, "KEYRING": str(Path(app.config["HOME"]) / "gone.json")}
    )
    browser = Browser(keyless)
    page = browser.get("/console/sign-in")
    assert page.status_code == 503 and page.mimetype == "text/html"
    assert "The keyring is unavailable." in text(page)
    health = keyless.test_client().get("/healthz")
    assert health.status_code == 200 and "Set-Cookie" not in health.headers
