"""Run the app under gunicorn, configured from code rather than a config file.

With several workers, /metrics must add up every worker's numbers: prometheus-client's
multiprocess mode, which reads PROMETHEUS_MULTIPROC_DIR when it is first imported. `gateway serve`
therefore starts itself again with a fresh, private folder set there (and removes the folder when
it stops), unless the operator chose one.
"""

from __future__ import annotations

import atexit
import contextvars
import gc
import os
import shutil
import sys
import tempfile
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from prometheus_client import multiprocess

from gateway.audit.sealer import Sealer
from gateway.store import close_connections

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
OWNED_DIR = "_GATEWAY_SERVE_METRICS_DIR"


def ensure_metrics_folder(workers: int) -> None:
    """With several workers and no metrics folder yet, run this same command again (same
    interpreter and arguments) with a fresh one; the new process removes it when it exits."""
    if workers > 1 and not os.environ.get(MULTIPROC_DIR):
        folder = tempfile.mkdtemp(prefix="gateway-metrics-")
        env = {**os.environ, MULTIPROC_DIR: folder, OWNED_DIR: folder}
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    owned = os.environ.pop(OWNED_DIR, None)
    if owned and owned == os.environ.get(MULTIPROC_DIR):
        atexit.register(shutil.rmtree, owned, ignore_errors=True)


def _start_sealer(worker: Any) -> None:
    """Each worker signs and publishes the chain head every AUDIT_HEAD_SECONDS."""
    app = worker.app.callable
    worker.gateway_sealer = app.extensions["gateway.sealer"] = Sealer(app)
    worker.gateway_sealer.start()


def _stop_sealer(worker: Any) -> None:
    sealer = getattr(worker, "gateway_sealer", None)
    if sealer is not None:
        sealer.stop()


def _worker_exited(_server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


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
        "child_exit": _worker_exited,
        "post_worker_init": _start_sealer,
        "worker_exit": lambda _server, worker: _stop_sealer(worker),
    }
    close_connections()  # each worker opens its own; none may share the master's
    # The app's modules, schemas and policies (some 75,000 objects) live as long as the process:
    # frozen before the fork, the workers' full collections skip them. Unfrozen, each full
    # collection took 40-80 ms of a request (on two busy cores), holding the write lock if the
    # request was in its transaction, so a purge and every other writer waited too.
    gc.freeze()
    # The CLI runs commands inside an app context. Were the workers to inherit it, every request
    # would reuse it, and with it `flask.g`: a request would be logged and rate-limited as the
    # client of the request before it. In an empty context each request pushes its own.
    contextvars.Context().run(GatewayServer(app, options).run)
