"""Shared by the sealer and witness tests: sealing an app's chain, reading its file witness, and a
real HTTP witness to publish heads to.

    head = seal(app)                          # what the sealer does each tick, once
    witness_heads(app)                        # the lines of the app's file witness
    with http_witness() as witness:           # POST witness.url stores a head, GET answers it
        app = make_app(AUDIT_WITNESS=witness.url)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flask import Flask

from gateway.audit import seal_now
from gateway.store.db import database

Json = dict[str, Any]


def seal(app: Flask) -> Json | None:
    """Seal the app's chain once, as a sealer tick does; returns the head published, if any."""
    with app.app_context(), database.connection_context():
        return seal_now()


def witness_path(app: Flask) -> Path:
    return Path(app.config["AUDIT_WITNESS"])


def witness_heads(app: Flask) -> list[Json]:
    """Every line of the app's file witness, parsed (none while there is no file)."""
    path = witness_path(app)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class WitnessServer:
    """A witness outside the gateway, over real HTTP: the heads POSTed to `url`, in order."""

    url: str
    server: ThreadingHTTPServer
    heads: list[Json] = field(default_factory=list)

    def stop(self) -> None:
        """Stop answering: from now on its port refuses connections."""
        self.server.shutdown()
        self.server.server_close()


PATH = "/heads"


@contextmanager
def http_witness() -> Iterator[WitnessServer]:
    """An HTTP witness in a thread: `POST /heads` stores the JSON head it is sent; `GET /heads`
    answers the head of highest seq it holds, or 404 while it holds none."""
    heads: list[Json] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != PATH:
                return self._answer(404)
            length = int(self.headers.get("Content-Length", "0"))
            heads.append(json.loads(self.rfile.read(length)))
            return self._answer(204)

        def do_GET(self) -> None:  # noqa: N802
            if self.path != PATH or not heads:
                return self._answer(404)
            return self._answer(200, max(heads, key=lambda head: head["seq"]))

        def _answer(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # no access log on the test's stderr

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="http-witness", daemon=True)
    thread.start()
    witness = WitnessServer(f"http://127.0.0.1:{server.server_port}{PATH}", server, heads)
    try:
        yield witness
    finally:
        witness.stop()
        thread.join(timeout=5)
