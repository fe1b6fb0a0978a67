"""`gateway serve --workers N`: one /metrics over every worker, in a folder the server manages."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

from flask import Flask

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
