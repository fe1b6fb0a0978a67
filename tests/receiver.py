"""A real webhook receiver for the tests: a threaded HTTP server on loopback that checks every
message's Standard Webhooks signature with the `standardwebhooks` package.

    with WebhookReceiver(SECRET) as receiver:
        receiver.answers = [500, 200]        # then 200 for the rest; "hang" sleeps past a timeout
        ... receiver.received                 # verified messages, in arrival order
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    message_id: str
    body: dict[str, Any]
    answered: int | float | str  # its status, a delay before a 200, or "hang"
    at: float


class WebhookReceiver:
    """Answers each POST with the next of `answers` (200 once they run out)."""

    def __init__(self, secret: str, hang_seconds: float = 3.0) -> None:
        self.secret, self.hang_seconds = secret, hang_seconds
        self.answers: list[int | float | str] = []
        self.received: list[Received] = []
        self.rejected: list[str] = []  # why a request's signature did not verify
        self.in_flight: dict[str, int] = {}  # message id -> requests being answered now
        self.overlaps: list[str] = []  # a message id received while already in flight
        self.arrived = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[Received]:
        """The messages answered with a 2xx."""
        return [r for r in self.received if not isinstance(r.answered, str) and r.answered < 300]

    def _answer(self, message_id: str, data: str, headers: dict[str, str]) -> int:
        try:
            body = Webhook(self.secret).verify(data, headers)
        except WebhookVerificationError as exc:
            with self.lock:
                self.rejected.append(str(exc))
            return 401
        with self.lock:
            answer = self.answers.pop(0) if self.answers else 200
            if self.in_flight.get(message_id):
                self.overlaps.append(message_id)
            self.in_flight[message_id] = self.in_flight.get(message_id, 0) + 1
            self.received.append(Received(message_id, body, answer, time.monotonic()))
        self.arrived.set()
        if answer == "hang":
            time.sleep(self.hang_seconds)
        elif isinstance(answer, float):
            time.sleep(answer)
        with self.lock:
            self.in_flight[message_id] -= 1
        return answer if isinstance(answer, int) else 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
                data = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(headers.get("webhook-id", ""), data, headers)
                try:
                    self.send_response(int(status))
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
