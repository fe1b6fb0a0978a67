"""Run the app under gunicorn, configured from code rather than a config file."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


class GatewayServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def serve(app: Flask, *, host: str, port: int, workers: int) -> None:
    """Serve until stopped; each worker opens its own database connections per request."""
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        # No access log: its lines carry full paths, and paths hold subject ids. The app logs
        # each request as JSON with the route template instead.
        "accesslog": None,
        "graceful_timeout": 10,
    }
    GatewayServer(app, options).run()
