"""Delivery by real `gateway scheduler` processes: killed mid-delivery, racing, refusing to start
without a recipient's secret; and `gateway demo` providing the demo recipient's secret."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import GATEWAY, gateway_environment, stop_all
from tests.receiver import WebhookReceiver
from tests.test_delivery import SECRET, deliveries, grant, hooked_app

DEADLINE = 60.0


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, hang_seconds=8.0) as running:
        yield running


@pytest.fixture
def app(
    make_app: Any,
    documents: tuple[Path, Path],
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> Flask:
    return hooked_app(make_app, documents[1], receiver, monkeypatch)


def scheduler_environment(app: Flask) -> dict[str, str]:
    settings = {
        "DELIVERY_SECONDS": "0.2",
        "DELIVERY_LEASE_SECONDS": "5",
        "DELIVERY_TIMEOUT_SECONDS": "3",
        "PURGE_CRON": "0 3 * * *",
    }
    return {**gateway_environment(app, **settings), "PYTHONUNBUFFERED": "1"}


def start_scheduler(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(GATEWAY), "scheduler"], env=env, stdout=output, stderr=subprocess.STDOUT
        )


def wait_for(condition: Callable[[], bool], processes: list[subprocess.Popen[bytes]]) -> None:
    began = time.monotonic()
    while not condition():
        assert all(p.poll() is None for p in processes), "a scheduler exited"
        assert time.monotonic() - began < DEADLINE, "timed out"
        time.sleep(0.1)


def test_a_scheduler_killed_mid_delivery_loses_nothing(
    app: Flask, mailer: Any, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    receiver.answers = ["hang"]  # the first attempt is never answered
    grant(mailer, "ines")
    first = start_scheduler(scheduler_environment(app), tmp_path / "first.log")
    processes = [first]
    try:
        wait_for(receiver.arrived.is_set, processes)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        [claimed] = deliveries(app)
        assert (claimed["status"], claimed["attempts"]) == ("pending", 0)

        second = start_scheduler(scheduler_environment(app), tmp_path / "second.log")
        processes = [second]
        wait_for(lambda: bool(receiver.delivered()), processes)
        wait_for(lambda: deliveries(app)[0]["status"] == "delivered", processes)
    finally:
        stop_all(processes, timeout=10)

    ids = {r.message_id for r in receiver.received}
    assert len(receiver.received) == 2 and ids == {claimed["message_id"]}
    assert receiver.delivered()[0].body["data"]["subject_id"] == "ines"


def test_two_scheduler_processes_share_the_work_and_never_send_a_message_twice(
    app: Flask, mailer: Any, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    receiver.answers = [0.05] * 30
    for index in range(30):
        grant(mailer, f"racer-{index}")
    env = scheduler_environment(app)
    processes = [start_scheduler(env, tmp_path / f"s{n}.log") for n in (1, 2)]
    try:
        wait_for(lambda: len(receiver.delivered()) >= 30, processes)
        wait_for(lambda: {d["status"] for d in deliveries(app)} == {"delivered"}, processes)
    finally:
        stop_all(processes, timeout=10)

    ids = [r.message_id for r in receiver.received]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert receiver.overlaps == []


@pytest.mark.parametrize(
    ("secret", "problem"),
    [(None, "TEST_CRM_SECRET is not set"), ("whsec_dG9vc2hvcnQ=", "not a whsec_ secret")],
    ids=["unset", "malformed"],
)
def test_a_scheduler_without_a_recipients_secret_refuses_to_start(
    app: Flask, secret: str | None, problem: str
) -> None:
    env = scheduler_environment(app)
    env.pop("TEST_CRM_SECRET")
    if secret is not None:
        env["TEST_CRM_SECRET"] = secret

    result = subprocess.run(
        [str(GATEWAY), "scheduler"], env=env, capture_output=True, timeout=60, check=False
    )

    assert result.returncode != 0
    output = result.stdout.decode() + result.stderr.decode()
    assert "recipients.crm_sync" in output and problem in output


def test_the_demo_signs_with_a_secret_of_its_own_where_none_is_set(
    make_app: Any, tmp_path: Path
) -> None:
    demo = make_app(HOME=str(tmp_path / "demo-home"))
    env = gateway_environment(demo)
    env.pop("DEMO_MAIL_WEBHOOK_SECRET")

    result = subprocess.run(
        [str(GATEWAY), "demo"], env=env, capture_output=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr.decode()
    secret = Path(demo.config["HOME"]) / "secrets" / "DEMO_MAIL_WEBHOOK_SECRET"
    assert secret.read_text().startswith("whsec_")
    assert secret.stat().st_mode & 0o077 == 0
