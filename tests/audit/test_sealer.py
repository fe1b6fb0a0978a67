"""The sealer: the chain head is signed and handed to the witness, once per new head, by
`seal_now()`, by every `gateway serve` worker in the background, and by `gateway scheduler`.

Each test copies a real chain written through the API (TOTAL entries, a checkpoint required
every EVERY, the head unsigned) and seals it: directly, or through real gateway processes on
the same databases (SQLite or PostgreSQL). What is signed is checked with the public key the
gateway publishes (GET /v1/keys/signing), and what the witness file holds is read from disk.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask

from gateway.audit.chain import checkpoint_payload
from gateway.audit.witness import head_of
from gateway.crypto import verify_signature
from gateway.scheduler import SEAL_JOB_ID, build_scheduler
from gateway.store.clients import KEY_PREFIX
from tests.audit import (
    CALENDAR,
    CANDIDATES,
    Template,
    build_history,
    build_template,
    checkpoints,
    copy_template,
    entries,
)
from tests.audit.sealing import Json, seal, witness_heads, witness_path
from tests.conftest import GATEWAY, Caller, free_port, gateway_environment, running_server
from tests.stores import count_rows, drop_store, raw

EVERY = 5
TOTAL = 12  # required checkpoints at 5 and 10; entries 11 and 12 unsigned
REQUIRED = [5, 10]
HEAD_SECONDS = 0.2  # how often the sealer of a real process ticks here
DEADLINE_SECONDS = 10.0  # how long a real process may take to start sealing


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the date (the clock still ticks): the demo registrations' review dates hold."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    built = build_template(tmp_path_factory.mktemp("template"), TOTAL, EVERY)
    yield built
    drop_store(built.store)


@pytest.fixture
def app(make_app: Any, tmp_path: Path, template: Template) -> Flask:
    return copy_template(
        template,
        make_app,
        tmp_path / "instance",
        AUDIT_CHECKPOINT_EVERY=EVERY,
        AUDIT_HEAD_SECONDS=HEAD_SECONDS,
    )


@pytest.fixture
def auditor(app: Flask, template: Template) -> Caller:
    return Caller(app.test_client(), template.keys["auditor"])


def append(app: Flask, template: Template, count: int) -> None:
    """Append `count` entries through the API, as the template's shop and mailer."""
    http = app.test_client()
    shop, mailer = (Caller(http, template.keys[name]) for name in ("shop", "mailer"))
    build_history(shop, mailer, count, prefix="later")


def assert_signs_the_head(app: Flask, auditor: Caller, checkpoint: Json, seq: int) -> None:
    """`checkpoint` signs entry `seq`, the interval included, with the published key."""
    key = auditor.get("/v1/keys/signing").get_json()
    head = entries(app)[-1]
    assert (head["seq"], checkpoint["seq"], checkpoint["hash"]) == (seq, seq, head["hash"])
    assert (checkpoint["key_id"], checkpoint["every"]) == (key["key_id"], EVERY)
    fields = (checkpoint["seq"], checkpoint["hash"], checkpoint["at"], checkpoint["key_id"])
    payload = checkpoint_payload(*fields, EVERY)
    assert verify_signature(key["public_key"], checkpoint["signature"], payload)
    # the interval is signed: the same fields without it do not verify
    assert not verify_signature(
        key["public_key"], checkpoint["signature"], checkpoint_payload(*fields)
    )


# --- seal_now -----------------------------------------------------------------------------------


def test_sealing_signs_the_head_and_publishes_it_once(
    app: Flask, template: Template, auditor: Caller
) -> None:
    assert [c["seq"] for c in checkpoints(app)] == REQUIRED
    assert not witness_path(app).exists()

    head = seal(app)

    assert head is not None
    stored = checkpoints(app)
    assert [c["seq"] for c in stored] == [*REQUIRED, TOTAL]
    assert stored[-1] == head
    assert_signs_the_head(app, auditor, head, TOTAL)
    assert witness_heads(app) == [head_of(head)]
    assert stat.S_IMODE(witness_path(app).stat().st_mode) == 0o600

    # nothing new: nothing signed, nothing published
    assert seal(app) is None
    assert witness_heads(app) == [head_of(head)]
    assert checkpoints(app) == stored

    append(app, template, 2)
    later = seal(app)

    assert later is not None
    assert_signs_the_head(app, auditor, later, TOTAL + 2)
    assert witness_heads(app) == [head_of(head), head_of(later)]
    assert [c["seq"] for c in checkpoints(app)] == [*REQUIRED, TOTAL, TOTAL + 2]


def test_a_required_checkpoint_at_the_head_is_published_without_another_signature(
    app: Flask, template: Template
) -> None:
    append(app, template, 3)  # the head, 15, is a required checkpoint already
    before = checkpoints(app)
    assert [c["seq"] for c in before] == [*REQUIRED, 15]

    head = seal(app)

    assert head == before[-1]
    assert checkpoints(app) == before
    assert witness_heads(app) == [head_of(before[-1])]


def test_an_empty_chain_is_not_sealed(make_app: Any) -> None:
    app = make_app()
    assert entries(app) == []

    assert seal(app) is None

    assert checkpoints(app) == []
    assert not witness_path(app).exists()


# --- real processes -----------------------------------------------------------------------------


def call(base: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(found: Callable[[], Any], seconds: float = DEADLINE_SECONDS) -> Any:
    """Poll until `found()` is truthy; returns it, or fails once `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while not (value := found()):
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)
    return value


def seq_of_decision(app: Flask, decision_id: str) -> int | None:
    with raw(app.config) as db:
        row = db.execute("SELECT seq FROM audit_entry WHERE decision_id = ?", (decision_id,))
        found = row.fetchone()
    return None if found is None else int(found[0])


def witnessed_seq(app: Flask) -> int:
    return max((head["seq"] for head in witness_heads(app)), default=0)


def personalize(base: str, key: str) -> str:
    """One decision through the running server; returns its id."""
    body = {"subject_id": "served-1", "purpose": "recommendations", "candidates": CANDIDATES}
    status, answer = call(base, key, "POST", "/v1/personalize", body)
    assert status == 200, answer
    return str(answer["decision_id"])


def serving_environment(app: Flask, head_seconds: float) -> dict[str, str]:
    return gateway_environment(
        app, AUDIT_CHECKPOINT_EVERY=str(EVERY), AUDIT_HEAD_SECONDS=str(head_seconds)
    )


def test_served_decisions_are_sealed_and_witnessed_within_seconds(
    app: Flask, template: Template
) -> None:
    env = serving_environment(app, HEAD_SECONDS)
    with running_server(app, 2, env) as (base, _process):
        decision_id = personalize(base, template.keys["shop"])
        seq = wait_for(lambda: seq_of_decision(app, decision_id))

        wait_for(lambda: witnessed_seq(app) >= seq)

        status, report = call(base, template.keys["auditor"], "GET", "/v1/audit/verify")
    assert status == 200
    assert report["ok"] is True, report
    latest = max(witness_heads(app), key=lambda head: head["seq"])
    signed = {c["seq"]: c for c in checkpoints(app)}
    assert head_of(signed[latest["seq"]]) == latest  # the witnessed head is a stored checkpoint


def test_a_stopping_worker_seals_what_its_last_requests_appended(
    app: Flask, template: Template
) -> None:
    """With a sealer too slow to tick during the test, the request itself publishes nothing;
    the worker seals once more as it stops."""
    env = serving_environment(app, 3600)
    with running_server(app, 1, env) as (base, _process):
        decision_id = personalize(base, template.keys["shop"])
        seq = wait_for(lambda: seq_of_decision(app, decision_id))
        time.sleep(1)
        assert witnessed_seq(app) < seq  # not sealed by the request

    assert witnessed_seq(app) == seq


def test_the_scheduler_seals_on_the_configured_interval(app: Flask) -> None:
    scheduler = build_scheduler(app)

    job = scheduler.get_job(SEAL_JOB_ID)

    assert job is not None
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval == timedelta(seconds=HEAD_SECONDS)
    assert not witness_path(app).exists()
    job.func()  # one tick, as the scheduler runs it
    assert [head["seq"] for head in witness_heads(app)] == [TOTAL]


def test_a_running_scheduler_seals_the_head(app: Flask, tmp_path: Path) -> None:
    env = {**serving_environment(app, HEAD_SECONDS), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "scheduler.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(GATEWAY), "scheduler"], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: witness_heads(app) or process.poll() is not None)
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=15)

    assert witness_heads(app) == [head_of(checkpoints(app)[-1])]
    assert witness_heads(app)[0]["seq"] == TOTAL


# --- command-line writes ------------------------------------------------------------------------


def add_client(app: Flask, name: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`gateway clients add NAME --role auditor`, a real process on the app's instance."""
    return subprocess.run(
        [str(GATEWAY), "clients", "add", name, "--role", "auditor"],
        env=gateway_environment(app, AUDIT_CHECKPOINT_EVERY=str(EVERY), **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def clients_named(app: Flask, name: str) -> int:
    return count_rows(app.config, "SELECT count(*) FROM api_client WHERE name = ?", (name,))


def test_a_cli_write_seals_its_entry_after_the_commit(app: Flask) -> None:
    result = add_client(app, "compliance-2")

    assert result.returncode == 0, result.stderr
    head = entries(app)[-1]
    assert (head["seq"], head["action"]) == (TOTAL + 1, "client.create")
    assert witness_heads(app) == [head_of(checkpoints(app)[-1])]
    assert witness_heads(app)[0]["seq"] == TOTAL + 1


def test_a_cli_write_while_the_witness_is_down_still_shows_what_it_committed(
    app: Flask,
) -> None:
    """The client is created whether or not its head can be published then (a sealer
    publishes it later): its key, shown once, must reach the operator."""
    result = add_client(app, "compliance-2", AUDIT_WITNESS=f"http://127.0.0.1:{free_port()}/")

    assert clients_named(app, "compliance-2") == 1  # committed
    shown = result.stdout.splitlines()
    assert shown and shown[-1].startswith(KEY_PREFIX), result.stderr
