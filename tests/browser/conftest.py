"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright,
against `gateway serve` on the demo data.

`make test` installs the browser (scripts/chromium.sh) and passes its path in TEST_CHROMIUM;
without it the tests look for /usr/bin/chromium and fail, never skip, when it is not there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from gateway.demo import load_demo
from tests.conftest import running_server

# Chromium's own connections (updates, sync, field trials) are refused by a closed network;
# these flags keep it from trying. --no-sandbox: CI runs as root, where the sandbox cannot start.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("TEST_CHROMIUM") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(f"no Chromium at {path}: run scripts/chromium.sh (make test does)")
    return path


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
    yield launched
    launched.close()


@dataclass(frozen=True)
class Console:
    """A running gateway with the demo data: its base URL and the demo clients' keys."""

    base: str
    keys: dict[str, str]
    app: Flask

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def console(make_app: Any) -> Iterator[Console]:
    app = make_app()
    with app.app_context():
        load_demo(app)
    keys = json.loads((Path(app.config["HOME"]) / "demo-clients.json").read_text("utf-8"))
    with running_server(app, workers=1) as (base, _process):
        yield Console(base, keys, app)


@pytest.fixture
def context(browser: Browser, console: Console) -> Iterator[BrowserContext]:
    opened = browser.new_context(base_url=console.base, accept_downloads=True)
    opened.set_default_timeout(15_000)
    yield opened
    opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
