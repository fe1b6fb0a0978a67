"""Every console page renders in Chromium for an admin on the demo data, and says what it is.

`make screenshots` runs this with CONSOLE_SCREENSHOTS=docs/console, which keeps a picture of each
page for the README.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console
from tests.browser.test_console import api, sign_in

# (picture name, path, a heading the page must show)
PAGES = [
    ("overview", "/console/", "Overview"),
    ("audit", "/console/audit?purpose=recommendations", "Audit log"),
    ("audit-entry", "/console/audit/3", "entry"),
    ("audit-verify", "/console/audit/verify", "Verif"),
    ("subject", "/console/subjects/alice", "alice"),
    ("erase", "/console/subjects/carol/erase", "Erase"),
    ("registry", "/console/registry", "Registry"),
    ("policies", "/console/policies", "Polic"),
    ("purges", "/console/purges", "purges"),
    ("clients", "/console/clients", "clients"),
]


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def decide(console: Console, subject: str, purpose: str) -> None:
    candidates = [{"id": "sku-2", "category": "shoes"}, {"id": "sku-40", "category": "books"}]
    body = {"subject_id": subject, "purpose": purpose, "candidates": candidates}
    status, answer = api(console, "/v1/personalize", body=body)
    assert status == 200, answer


def test_every_page_renders(page: Page, console: Console, pictures: Path) -> None:
    # decisions for the overview's chart: personalized, never asked, withdrawn
    for subject in ("alice", "alice", "bob", "carol"):
        decide(console, subject, "recommendations")
    decide(console, "alice", "ads_personalization")
    assert api(console, "/v1/purges", body={"dry_run": True})[0] == 200
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(console.url("/console/sign-in"))
    page.screenshot(path=pictures / "sign-in.png", full_page=True)
    sign_in(page, console, "demo-admin")
    for name, path, heading in PAGES:
        response = page.goto(console.url(path))
        assert response is not None and response.status == 200, path
        expect(page.locator("h1").first).to_contain_text(heading)
        expect(page.locator("#error")).to_have_count(0)
        page.screenshot(path=pictures / f"{name}.png", full_page=True)
        assert (pictures / f"{name}.png").stat().st_size > 10_000


def test_the_api_docs_render_offline(page: Page, console: Console) -> None:
    """Swagger UI at /docs draws every operation from the gateway's own files: the browser
    reaches nothing else (the test network has no route out, and none is asked for)."""
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith(console.base) else elsewhere.append(request.url)
        ),
    )
    page.goto(console.url("/docs"))
    expect(page.locator(".swagger-ui .information-container")).to_contain_text("gateway")
    operation = page.locator(".opblock-summary-path", has_text="/v1/personalize")
    expect(operation.first).to_be_visible()
    operation.first.click()
    expect(page.locator(".opblock-body").first).to_contain_text("candidates")
    assert elsewhere == []
