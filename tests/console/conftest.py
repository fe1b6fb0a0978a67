"""Console fixtures: a browser (a test client with cookies of its own) that signs in with a key
and posts forms with the CSRF token of a page it was shown, and data seeded through the API."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from werkzeug.test import TestResponse

from gateway.audit.chain import entry_body
from gateway.store.clients import authenticate
from gateway.store.db import database
from gateway.store.models import AuditEntry
from tests.conftest import Caller

# Pinned so the demo registrations' review dates are known: shop_events is due on 2027-06-30
# (within the overview's 60 days), mobile_location was due on 2025-12-31.
CALENDAR = datetime(2027, 5, 15, 9, 0, tzinfo=UTC)
COOKIE = "gateway_console"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
SEQ_LINK = re.compile(r'href="/console/audit/(\d+)"')
SUBJECT = "dana-1701"
EMAIL = "dana.example@example.org"
CANDIDATES = [{"id": "sku-1", "category": "shoes"}, {"id": "sku-2", "category": "books"}]

Json = dict[str, Any]


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    with time_machine.travel(CALENDAR, tick=True):
        yield


def csrf_token(page: TestResponse) -> str:
    """The CSRF token of the forms on a page."""
    found = TOKEN.search(page.get_data(as_text=True))
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


class Browser:
    """One person's browser at the console, over http (or https) to localhost."""

    def __init__(self, app: Flask, *, https: bool = False) -> None:
        self.app = app
        self.http = app.test_client()
        self.base_url = "https://localhost" if https else "http://localhost"

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.http.get(path, base_url=self.base_url, **kwargs)

    def post(
        self,
        path: str,
        data: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        """Post a form with a token of this session, or `token` ("" posts none)."""
        fields = dict(data or {})
        token = self.token() if token is None else token
        if token:
            fields["csrf_token"] = token
        return self.http.post(path, data=fields, base_url=self.base_url, **kwargs)

    def token(self) -> str:
        """A CSRF token of this session, from a page with a form."""
        page = self.get("/console/audit/verify")
        if page.status_code != 200:
            page = self.get("/console/sign-in")
        return csrf_token(page)

    def sign_in(self, key: str, **kwargs: Any) -> TestResponse:
        form = self.get("/console/sign-in")
        return self.post("/console/sign-in", {"key": key}, token=csrf_token(form), **kwargs)

    def signed_in(self) -> bool:
        """Whether the overview opens (rather than sending the browser to sign in)."""
        response = self.get("/console/")
        assert response.status_code in (200, 303)
        return response.status_code == 200

    def cookie(self) -> Any:
        return self.http.get_cookie(COOKIE, path="/console")


@pytest.fixture
def browser(app: Flask) -> Browser:
    return Browser(app)


@pytest.fixture
def as_auditor(app: Flask, auditor: Caller) -> Browser:
    """A browser signed in with the `auditor` fixture's key."""
    signed = Browser(app)
    assert signed.sign_in(auditor.key).status_code == 303
    return signed


@pytest.fixture
def as_admin(app: Flask, admin: Caller) -> Browser:
    """A browser signed in with the `admin` fixture's key."""
    signed = Browser(app)
    assert signed.sign_in(admin.key).status_code == 303
    return signed


@pytest.fixture(params=["auditor", "admin"])
def reader(request: pytest.FixtureRequest) -> Browser:
    """A browser signed in as each role that may use the console."""
    found: Browser = request.getfixturevalue(f"as_{request.param}")
    return found


def name_of(app: Flask, caller: Caller) -> str:
    with app.app_context(), database.connection_context():
        found = authenticate(caller.key)
        assert found is not None
        return str(found.name)


def audit_entries(app: Flask, **where: Any) -> list[Json]:
    """The chained entries, in seq order, whose columns equal `where`."""
    with app.app_context(), database.connection_context():
        query = AuditEntry.select().order_by(AuditEntry.seq)
        for column, value in where.items():
            query = query.where(getattr(AuditEntry, column) == value)
        return [entry_body(row) for row in query]


def listed_seqs(page: TestResponse) -> list[int]:
    """The seqs of the entries a console page links to, in page order."""
    return [int(seq) for seq in SEQ_LINK.findall(text(page))]


def ok(response: TestResponse) -> Json:
    assert response.status_code == 200, response.get_json()
    body: Json = response.get_json()
    return body


def seed_subject(shop: Caller, admin: Caller, subject: str = SUBJECT) -> None:
    """A consent, events, attributes (one of them PII) and decisions about `subject`."""
    consent = {"granted": True, "source": "web_banner", "notice_version": "2027-01"}
    ok(shop.put(f"/v1/subjects/{subject}/consents/recommendations", consent))
    at = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    events = [
        {"type": "view", "item_id": "sku-1", "category": "shoes", "at": at},
        {"type": "purchase", "item_id": "sku-9", "category": "socks", "at": at},
    ]
    ok(shop.post(f"/v1/subjects/{subject}/events", {"database": "shop_events", "events": events}))
    attributes = {"database": "crm", "attributes": {"email": EMAIL, "shoe_size": 41}}
    ok(admin.patch(f"/v1/subjects/{subject}/attributes", attributes))
    for purpose in ("recommendations", "ads_personalization"):
        body = {"subject_id": subject, "purpose": purpose, "candidates": CANDIDATES}
        ok(shop.post("/v1/personalize", body))
