"""`gateway serve`: one /metrics over every worker, and each request in a context of its own."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask

from gateway.store.clients import Role, create_client
from gateway.store.db import database
from tests.conftest import gateway_environment, running_server

REQUESTS = 40


def metrics_folder(process: subprocess.Popen[bytes]) -> Path:
    """PROMETHEUS_MULTIPROC_DIR in the environment of the running server's master process."""
    environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    found = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"PROMETHEUS_")]
    assert found, "the server runs without a metrics folder"
    return Path(found[0].decode())


def healthz_count(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'gateway_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def test_several_workers_share_one_metrics_folder_removed_at_stop(app: Flask) -> None:
    env = gateway_environment(app)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with running_server(app, 3, env) as (base, process):
        folder = metrics_folder(process)
        before = healthz_count(base)
        for _ in range(REQUESTS):
            urllib.request.urlopen(base + "/healthz", timeout=10).close()
        # every worker writes its own file there, and /metrics adds them all up
        assert healthz_count(base) == before + REQUESTS
        assert any(folder.glob("counter_*.db"))
    assert not folder.exists()


def test_an_operator_folder_is_used_and_kept(app: Flask, tmp_path: Path) -> None:
    chosen = tmp_path / "metrics"
    chosen.mkdir()
    env = {**gateway_environment(app), "PROMETHEUS_MULTIPROC_DIR": str(chosen)}
    with running_server(app, 2, env) as (base, process):
        assert metrics_folder(process) == chosen
        urllib.request.urlopen(base + "/healthz", timeout=10).close()
        assert any(chosen.glob("counter_*.db"))
    assert chosen.exists()


def call(base: str, path: str, key: str | None = None) -> int:
    """The status of a GET to the running server."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    request = urllib.request.Request(base + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def request_lines(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"event": "request"' in line:
            found.append(json.loads(line))
    return found


def test_each_request_has_its_own_caller_in_logs_and_limits(make_app: Any, tmp_path: Path) -> None:
    """A served request never inherits the client of the request before it: a refused or an
    anonymous request is logged without a client and limited by address, not as that client."""
    app = make_app()
    with app.app_context(), database.connection_context():
        _, key = create_client("compliance", Role.AUDITOR, [], datetime.now(UTC))
    log = tmp_path / "serve.log"
    env = gateway_environment(app, RATELIMIT_DEFAULT="3 per minute")
    with running_server(app, 1, env, log) as (base, _process):
        # the server's start-up check was this address's first /healthz
        anonymous = [call(base, "/healthz") for _ in range(2)]
        known = call(base, "/v1/policies", key)
        unknown = call(base, "/v1/policies", "gwk_not-a-key")
        over_limit = call(base, "/healthz")
    lines = request_lines(log)

    assert (anonymous, known, unknown) == ([200] * 2, 200, 401)
    # this address used up its limit; a client's earlier request does not lend it another
    assert over_limit == 429
    assert [line["client"] for line in lines if line["route"] == "/v1/policies"] == [
        "compliance",
        None,
    ]
    assert {line["client"] for line in lines if line["route"] == "/healthz"} == {None}
