"""(i) Consent signals in and out: a TC string forwarded with each personalize call, and consent
changes written to the outbox and delivered to the recipients.

    .venv/bin/python -m bench.run --only i

The letter is (i): (f) is taken by bench/commits.py and (g) belongs to the policy preview. Every
arm runs a real two-worker server (bench/server.py) on an instance of its own.

- personalize with `tcf` against without: one subject, the same 20 candidates, one client, the
  two bodies interleaved; the `tcf` body forwards one unchanged IAB-made string (the first call
  records the grant, every later one must cost a read, not a write). p50 and p99 of each.
- consent changes per second, two recipients against none: `PUT .../consents/recommendations`
  from 4 clients, each subject granted then withdrawn, on an instance whose registry has two
  recipients of that purpose against one without recipients (copies of the demo documents). No
  scheduler runs: this is the cost of writing the outbox in the change's transaction. The arms
  alternate (none, two, two, none), each half of `seconds` a round. Then 100,000 delivered
  messages of other subjects are written into the two-recipient outbox, as a month of changes
  leaves it, and the two-recipient arm runs once more.
- delivery lag: `gateway scheduler` (a real process) delivers to two local receivers that check
  every signature with `standardwebhooks` (tests/receiver.py); grants of distinct subjects go in
  at a steady rate (10 a second on average, Poisson arrivals), and each message's lag runs from
  its change's PUT response to its receiver getting it. Once at the default
  GATEWAY_DELIVERY_SECONDS and once at a shorter one.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.personalize import CANDIDATES, CONSENT, Server, _ok, percentile, throughput
from gateway import create_app
from gateway.cli import initialize
from gateway.delivery import new_secret
from gateway.store.clients import Role, create_client
from gateway.store.db import database
from tests.receiver import WebhookReceiver
from tests.stores import count_rows, raw
from tests.tcf_strings import iab_string

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "recommendations"
# vendor 755 has consent for purposes 1 and 3-6 and is disclosed: recommendations is granted
TC_STRING = iab_string("all consent purposes")
RECIPIENTS = {"crm_sync": "BENCH_CRM_SECRET", "analytics": "BENCH_ANALYTICS_SECRET"}
RATE = 10.0  # consent changes per second while the delivery lag is timed
SHORT_DELIVERY_SECONDS = 0.2
# Delivered messages stay in the outbox for GATEWAY_DELIVERY_KEEP (30 days): a shop telling two
# recipients of 1,700 changes a day holds about 100,000 of them.
KEPT = 100_000


def documents(folder: Path, urls: dict[str, str] | None) -> Path:
    """A copy of the demo policies and registry in `folder`, without the demo's recipient, and
    with a recipient of `recommendations` per name in `urls` if given; returns the folder."""
    shutil.copytree(ROOT / "policies", folder / "policies")
    shutil.copytree(ROOT / "registry", folder / "registry")
    recipients = folder / "registry" / "recipients.yaml"
    recipients.unlink()
    if urls:
        text = "recipients:\n"
        for name, url in urls.items():
            text += (
                f"  {name}:\n    name: Benchmark recipient {name}\n"
                f"    purposes: [{PURPOSE}]\n    url: {url}\n"
                f"    secret_env: {RECIPIENTS[name]}\n"
            )
        recipients.write_text(text, encoding="utf-8")
    return folder


def instance(folder: Path) -> tuple[Any, str]:
    """An initialised app over the documents in `folder`, and an app client's key."""
    app = create_app(
        {
            "HOME": str(folder / "instance"),
            "POLICIES": str(folder / "policies"),
            "REGISTRY": str(folder / "registry"),
            "RATELIMIT_ENABLED": False,
        }
    )
    with app.app_context():
        initialize(app)
        with database.connection_context():
            _, key = create_client("bench-app", Role.APP, [PURPOSE], datetime.now(UTC))
    return app, key


def serve(app: Any, folder: Path, secrets: dict[str, str] | None = None) -> Server:
    profile = folder / "profile.json"
    profile.write_text("[]")
    return Server(app, profile, workers=2, settings=secrets)


def seed_events(app: Any, key: str, subject: str, events: int) -> None:
    """`events` recent events of the subject, stored before any consent: the first call with
    the string is the one that records it."""
    now = datetime.now(UTC)
    stored = [
        {
            "type": ["view", "click", "add_to_cart"][n % 3],
            "item_id": f"seen-{n}",
            "category": ["shoes", "books", "garden"][n % 3],
            "at": (now - timedelta(hours=n + 1)).isoformat(),
        }
        for n in range(events)
    ]
    body = {"database": "shop_events", "events": stored}
    headers = {"Authorization": f"Bearer {key}"}
    result = _ok(
        app.test_client().post(f"/v1/subjects/{subject}/events", json=body, headers=headers)
    )
    assert len(result["accepted"]) == events, result


def bench_tcf(folder: Path, samples: int) -> dict[str, float]:
    """p50 and p99 of personalize with an unchanged TC string and without one."""
    app, key = instance(documents(folder, None))
    seed_events(app, key, "tcf-subject", 30)
    headers = {"Authorization": f"Bearer {key}"}
    plain = {"subject_id": "tcf-subject", "purpose": PURPOSE, "candidates": CANDIDATES}
    forwarded = {**plain, "tcf": TC_STRING}
    server = serve(app, folder)
    try:
        server.request("POST", "/v1/personalize", forwarded, headers)  # records the grant
        for body in (plain, forwarded) * 50:  # warm up
            server.request("POST", "/v1/personalize", body, headers)
        without, with_tcf = [], []
        for _ in range(samples):  # interleaved, so drift hits both alike
            without.append(server.request("POST", "/v1/personalize", plain, headers) * 1000)
            with_tcf.append(server.request("POST", "/v1/personalize", forwarded, headers) * 1000)
    finally:
        server.stop()
    records = count_rows(app.config, "SELECT COUNT(*) FROM consent_record")
    assert records == 1, f"{records} consent records: an unchanged string must write nothing"
    p50, p99 = percentile(with_tcf, 0.5), percentile(with_tcf, 0.99)
    base_p50, base_p99 = percentile(without, 0.5), percentile(without, 0.99)
    return {
        "samples": samples,
        "p50": p50,
        "p99": p99,
        "base_p50": base_p50,
        "base_p99": base_p99,
        "added_p50": p50 - base_p50,
        "added_p99": p99 - base_p99,
        "ratio": p50 / base_p50,
    }


def change_call(server: Server, key: str) -> tuple[Callable[[], float], itertools.count[int]]:
    """A call that grants a subject, then withdraws it, then goes on to the next, and a counter
    of the calls started. Each client thread has subjects of its own: two changes of one
    subject at once race for its lock, which is not what this measures (and can lose a
    message: see bench/RESULTS.md (i))."""
    started, clients = itertools.count(), itertools.count()
    mine = threading.local()
    headers = {"Authorization": f"Bearer {key}"}

    def change() -> float:
        if not hasattr(mine, "client"):
            mine.client, mine.calls = next(clients), itertools.count()
        n = next(mine.calls)
        next(started)
        body = {**CONSENT, "granted": n % 2 == 0}
        path = f"/v1/subjects/change-{mine.client}-{n // 2}/consents/{PURPOSE}"
        return server.request("PUT", path, body, headers)

    return change, started


def bench_changes(folder: Path, seconds: float, threads: int = 4) -> dict[str, float]:
    """Consent changes per second with two recipients of the purpose and with none."""
    secrets = {env: new_secret() for env in RECIPIENTS.values()}
    # nothing listens there, and no scheduler runs: the messages stay in the outbox
    urls = {name: f"http://127.0.0.1:9/{name}" for name in RECIPIENTS}
    arms: dict[str, tuple[Any, Server, Callable[[], float], itertools.count[int]]] = {}
    try:
        for name, listening in (("none", None), ("two", urls)):
            app, key = instance(documents(folder / name, listening))
            server = serve(app, folder / name, secrets)
            arms[name] = (app, server, *change_call(server, key))
        for _, _, change, _ in arms.values():
            for _ in range(50):  # warm up
                change()
        rates: dict[str, list[float]] = {"none": [], "two": []}
        for name in ("none", "two", "two", "none"):
            rates[name].append(throughput(arms[name][2], threads, seconds / 2))
        seed_delivered(arms["two"][0], KEPT)
        kept = throughput(arms["two"][2], threads, seconds / 2)
    finally:
        for _, server, _, _ in arms.values():
            server.stop()
    for name, (app, _, _, started) in arms.items():  # every change, and its messages
        made = next(started)
        records = count_rows(app.config, "SELECT COUNT(*) FROM consent_record")
        sql = "SELECT COUNT(*) FROM delivery WHERE status = 'pending'"
        expected = made * len(RECIPIENTS) if name == "two" else 0
        assert (records, count_rows(app.config, sql)) == (made, expected), (name, records, made)
    two, none = statistics.mean(rates["two"]), statistics.mean(rates["none"])
    return {
        "threads": threads,
        "two": two,
        "none": none,
        "ratio": two / none,
        "kept": kept,
        "kept_ratio": kept / two,
    }


def seed_delivered(app: Any, count: int) -> None:
    """`count` delivered messages of other subjects, half per recipient, written in bulk as
    the courier leaves them: payload dropped, kept until GATEWAY_DELIVERY_KEEP runs out."""
    now = datetime.now(UTC)
    at = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    names = list(RECIPIENTS)
    rows = [
        (f"msg_bench{n:027d}", names[n % 2], "consent.changed", f"v1:bench:{n // 2:064d}")
        + (PURPOSE, None, "delivered", 1, at, at, at)
        for n in range(count)
    ]
    with raw(app.config) as db:
        db.executemany(
            "INSERT INTO delivery (message_id, recipient, type, subject, purpose, payload,"
            " status, attempts, created_at, next_attempt_at, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def start_scheduler(app: Any, secrets: dict[str, str], seconds: float, log: Path) -> Any:
    """`gateway scheduler` on the app's instance, delivering every `seconds`."""
    env = {
        **os.environ,
        **secrets,
        "GATEWAY_HOME": app.config["HOME"],
        "GATEWAY_DATABASE_URL": app.config["DATABASE_URL"],
        "GATEWAY_KEYSTORE_URL": app.config["KEYSTORE_URL"],
        "GATEWAY_POLICIES": app.config["POLICIES"],
        "GATEWAY_REGISTRY": app.config["REGISTRY"],
        "GATEWAY_DELIVERY_SECONDS": str(seconds),
        # this checkout's gateway, whichever the virtualenv's script would find
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "gateway"), "scheduler"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def steady_grants(server: Server, key: str, subjects: list[str]) -> dict[str, float]:
    """Grant each subject, RATE a second on average; when each PUT's response came
    (time.monotonic()). The gaps are random (Poisson arrivals): at even gaps the changes kept
    step with the scheduler's polls, and the lags fell on two or three values."""
    headers = {"Authorization": f"Bearer {key}"}
    gaps = random.Random(len(subjects))
    committed = {}
    due = time.monotonic()
    for subject in subjects:
        due += gaps.expovariate(RATE)
        time.sleep(max(0.0, due - time.monotonic()))
        server.request("PUT", f"/v1/subjects/{subject}/consents/{PURPOSE}", CONSENT, headers)
        committed[subject] = time.monotonic()
    return committed


def arrivals(
    receivers: dict[str, WebhookReceiver], subjects: set[str], scheduler: Any, log: Path
) -> dict[tuple[str, str], float]:
    """When each recipient first got the change of each subject; waits for all of them."""
    deadline = time.monotonic() + 60
    while True:
        found: dict[tuple[str, str], float] = {}
        for name, receiver in receivers.items():
            with receiver.lock:
                received = list(receiver.received)
            for message in received:
                subject = message.body["data"]["subject_id"]
                if subject in subjects:
                    found.setdefault((name, subject), message.at)
        if len(found) == len(receivers) * len(subjects):
            return found
        if scheduler.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{len(found)} messages delivered, scheduler log:\n{tail}")
        time.sleep(0.05)


def timed_deliveries(
    app: Any,
    server: Server,
    key: str,
    receivers: dict[str, WebhookReceiver],
    secrets: dict[str, str],
    seconds: float,
    changes: int,
) -> dict[str, Any]:
    """The lag of each message of `changes` grants, with the scheduler polling every
    `seconds`; a few grants first wait for the scheduler to be up."""
    log = Path(app.config["HOME"]).parent / f"scheduler-{seconds}.log"
    scheduler = start_scheduler(app, secrets, seconds, log)
    try:
        warm = steady_grants(server, key, [f"warm-{seconds}-{n}" for n in range(5)])
        arrivals(receivers, set(warm), scheduler, log)
        committed = steady_grants(server, key, [f"lag-{seconds}-{n}" for n in range(changes)])
        arrived = arrivals(receivers, set(committed), scheduler, log)
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)
    lags = sorted((at - committed[subject]) * 1000 for (_, subject), at in arrived.items())
    return {
        "seconds": seconds,
        "changes": changes,
        "messages": len(lags),
        "p50": percentile(lags, 0.5),
        "p99": percentile(lags, 0.99),
        "max": lags[-1],
    }


def bench_lag(folder: Path, changes: int) -> list[dict[str, Any]]:
    """Delivery lag at the default GATEWAY_DELIVERY_SECONDS and at a shorter one."""
    secrets = {env: new_secret() for env in RECIPIENTS.values()}
    receivers = {name: WebhookReceiver(secrets[env]) for name, env in RECIPIENTS.items()}
    with ExitStack() as stack:
        for receiver in receivers.values():
            stack.enter_context(receiver)
        urls = {name: receiver.url for name, receiver in receivers.items()}
        app, key = instance(documents(folder, urls))
        server = serve(app, folder, secrets)
        try:
            lags = [
                timed_deliveries(app, server, key, receivers, secrets, seconds, changes)
                for seconds in (float(app.config["DELIVERY_SECONDS"]), SHORT_DELIVERY_SECONDS)
            ]
        finally:
            server.stop()
    for receiver in receivers.values():
        assert not receiver.rejected, receiver.rejected[:3]
    return lags


def bench_signals(folder: Path, samples: int, seconds: float, changes: int) -> dict[str, Any]:
    return {
        "tcf": bench_tcf(folder / "tcf", samples),
        "changes": bench_changes(folder / "changes", seconds),
        "lags": bench_lag(folder / "lag", changes),
    }


def print_signals(result: dict[str, Any]) -> None:
    tcf, changes = result["tcf"], result["changes"]
    print(
        f"| (i) personalize p50 with an unchanged TC string, one client | {tcf['p50']:.2f} ms "
        f"({tcf['added_p50']:+.2f} ms) | without tcf: {tcf['base_p50']:.2f} ms | "
        f"{tcf['ratio']:.2f} | <= 0.3 ms added |"
    )
    print(
        f"| (i) personalize p99 with an unchanged TC string | {tcf['p99']:.2f} ms "
        f"({tcf['added_p99']:+.2f} ms) | without tcf: {tcf['base_p99']:.2f} ms | "
        f"{tcf['p99'] / tcf['base_p99']:.2f} | |"
    )
    print(
        f"| (i) consent changes, two recipients of the purpose, {changes['threads']} clients | "
        f"{changes['two']:.0f} changes/s | no recipients: {changes['none']:.0f} changes/s | "
        f"{changes['ratio']:.2f} | >= 0.9 |"
    )
    print(
        f"| (i) consent changes, two recipients, {KEPT:,} delivered messages kept | "
        f"{changes['kept']:.0f} changes/s | none kept: {changes['two']:.0f} changes/s | "
        f"{changes['kept_ratio']:.2f} | |"
    )
    for lag in result["lags"]:
        print(
            f"| (i) delivery lag, GATEWAY_DELIVERY_SECONDS={lag['seconds']}, "
            f"{lag['changes']} changes at {RATE:g}/s ({lag['messages']} messages) | "
            f"p50 {lag['p50']:.0f} ms, p99 {lag['p99']:.0f} ms, max {lag['max']:.0f} ms | | | |"
        )
