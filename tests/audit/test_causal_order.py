"""Causal order in the audit log: no decision allowed after the withdrawal or erasure forbidding it.

A real multi-worker server (`gateway serve`, SQLite or PostgreSQL) is raced RACES times, each on
a subject of its own: the subject grants consent, several threads hammer POST /v1/personalize
for it, and in the middle the consent is withdrawn (PUT .../consents/recommendations) or the
subject erased (DELETE /v1/subjects/{id}, by an admin). After the chain is sealed, the log is
read in seq order, and for each subject and purpose no `decision` entry with outcome `allow`
may follow the `consent.withdraw` or `subject.erase` entry that forbids it (until a later
`consent.grant`): a reader of the log must never see a decision the consent did not allow at
that point. Every answer the server gave must agree with its entry (decision id -> outcome), each
decision is chained exactly once, and no decision started after the change had returned allows.

The last test makes deterministic, in process, the way such a race can go wrong: a decision whose
clock reads just before a withdrawal that has already committed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask

from gateway import keyring
from gateway.audit import seal_now, verify_database
from gateway.store.db import database
from tests.audit import register_callers
from tests.audit.test_sequencer import (
    CANDIDATES,
    NOTICE,
    call,
    consent_path,
    keep_registrations_active,
)
from tests.conftest import gateway_environment, running_server
from tests.stores import raw

RACES = 15  # subjects, each raced once
DECIDERS = 4  # threads deciding for the raced subject
BEFORE = 12  # decisions answered before the change is sent
AFTER = 12  # decisions started after the change returned, before the deciders stop
WORKERS = 3
DEADLINE = 60.0  # seconds for any one wait on the server
PURPOSE = "recommendations"

Json = dict[str, Any]


@dataclass(frozen=True)
class Answer:
    """What the server answered one decision request, and when it was sent and answered."""

    subject: str
    status: int
    body: Json
    started: float
    ended: float


@dataclass(frozen=True)
class Race:
    subject: str
    answers: list[Answer]
    change_sent: float
    change_returned: float


@dataclass(frozen=True)
class Server:
    base: str
    shop: str  # an app client for recommendations
    admin: str


@pytest.fixture
def server(make_app: Any, documents: tuple[Path, Path]) -> Iterator[tuple[Flask, Server]]:
    """`gateway serve --workers 3` on a fresh instance; yields the app and the server."""
    keep_registrations_active(documents[1])
    app = make_app()
    callers = register_callers(app)
    env = gateway_environment(app, RATELIMIT_DEFAULT="1000000 per minute")
    with running_server(app, WORKERS, env) as (base, _process):
        yield app, Server(base, callers["shop"].key, callers["admin"].key)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def withdraw(server: Server, subject: str) -> None:
    body = {"granted": False, **NOTICE}
    status, answer = call(server.base, server.shop, "PUT", consent_path(subject), body)
    assert status == 200, answer


def erase(server: Server, subject: str) -> None:
    status, answer = call(server.base, server.admin, "DELETE", f"/v1/subjects/{subject}")
    assert status == 200, answer
    assert answer["erased"] is True


Change = Callable[[Server, str], None]


def race(server: Server, subject: str, change: Change) -> Race:
    """Grant, then decide from DECIDERS threads while `change` runs in the middle."""
    grant = {"granted": True, **NOTICE}
    status, answer = call(server.base, server.shop, "PUT", consent_path(subject), grant)
    assert status == 200, answer
    at = datetime.now(UTC).isoformat()
    events = [{"type": "view", "item_id": "s-1", "category": "shoes", "at": at}]
    path = f"/v1/subjects/{subject}/events"
    body = {"database": "shop_events", "events": events}
    assert call(server.base, server.shop, "POST", path, body)[0] == 200

    answers: list[Answer] = []
    lock = threading.Lock()
    stop = threading.Event()
    changed = [float("inf")]  # when the change returned

    def decide() -> None:
        body = {"subject_id": subject, "purpose": PURPOSE, "candidates": CANDIDATES}
        while not stop.is_set():
            started = time.monotonic()
            status, answer = call(server.base, server.shop, "POST", "/v1/personalize", body)
            with lock:
                answers.append(Answer(subject, status, answer, started, time.monotonic()))

    def started_after_change() -> int:
        with lock:
            return sum(1 for a in answers if a.started > changed[0])

    threads = [threading.Thread(target=decide) for _ in range(DECIDERS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= BEFORE, "decisions before the change")
        sent = time.monotonic()
        change(server, subject)
        changed[0] = time.monotonic()
        wait_for(lambda: started_after_change() >= AFTER, "decisions after the change")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=DEADLINE)
    return Race(subject, answers, sent, changed[0])


def read_log(app: Flask) -> list[Json]:
    """Every chained entry in seq order, once all pending ones are chained."""
    with app.app_context(), database.connection_context():
        seal_now(wait=True)
    with raw(app.config) as db:
        assert db.execute("SELECT COUNT(*) FROM audit_pending").fetchone()[0] == 0
        rows = db.execute(
            "SELECT seq, at, action, subject, purpose, outcome, decision_id FROM audit_entry"
            " ORDER BY seq"
        ).fetchall()
        return [dict(zip(row.keys(), row, strict=True)) for row in rows]


def allowed_after_forbidden(log: list[Json]) -> list[str]:
    """Every `allow` decision that follows, in seq order, a withdrawal for its subject and
    purpose or its subject's erasure with no grant between: said with the entry forbidding it."""
    forbidden: dict[tuple[str, str | None], Json] = {}  # (subject, purpose or None for all)
    found = []
    for entry in log:
        subject, purpose = entry["subject"], entry["purpose"]
        if entry["action"] == "consent.grant":
            forbidden.pop((subject, purpose), None)
            forbidden.pop((subject, None), None)
        elif entry["action"] == "consent.withdraw":
            forbidden[(subject, purpose)] = entry
        elif entry["action"] == "subject.erase" and entry["outcome"] == "erased":
            forbidden[(subject, None)] = entry
        elif entry["action"] == "decision" and entry["outcome"] == "allow":
            by = forbidden.get((subject, purpose)) or forbidden.get((subject, None))
            if by is not None:
                found.append(
                    f"decision {entry['seq']} (at {entry['at']}) allowed after {by['action']}"
                    f" {by['seq']} (at {by['at']})"
                )
    return found


def check_races(app: Flask, races: list[Race], change: tuple[str, str]) -> None:
    """Check the log and the answers of `races`, each of which made one `change` entry
    (action, outcome)."""
    log = read_log(app)
    with app.app_context():
        pseudonyms = {keyring().pseudonym(r.subject): r.subject for r in races}

    # The claim: in seq order, no decision allowed after the change that forbids it.
    assert allowed_after_forbidden(log) == []

    answers = [a for r in races for a in r.answers]
    assert {a.status for a in answers} == {200}, [a.body for a in answers if a.status != 200]
    # Every answer agrees with its one entry, which names the raced subject.
    decisions = {e["decision_id"]: e for e in log if e["action"] == "decision"}
    assert Counter(e["decision_id"] for e in log if e["decision_id"]).most_common(1)[0][1] == 1
    for a in answers:
        entry = decisions[a.body["decision_id"]]
        assert (entry["outcome"], pseudonyms[entry["subject"]]) == (a.body["outcome"], a.subject)
        assert a.body["personalized"] is (a.body["outcome"] == "allow")
    made = [e for e in log if (e["action"], e["outcome"]) == change]
    changes = Counter(pseudonyms.get(e["subject"]) for e in made)
    assert changes == Counter(r.subject for r in races)

    for r in races:
        outcomes = [a.body["outcome"] for a in r.answers]
        # both sides of the race happened: allowed before the change, refused after it
        assert "allow" in outcomes and "fallback" in outcomes, (r.subject, outcomes)
        # and what started once the change had returned was refused
        late = [a for a in r.answers if a.started > r.change_returned]
        assert len(late) >= AFTER
        assert {a.body["outcome"] for a in late} == {"fallback"}, r.subject
    # decisions were in flight while the change was made
    overlapping = [
        a
        for r in races
        for a in r.answers
        if a.started < r.change_returned and a.ended > r.change_sent
    ]
    assert len(overlapping) >= RACES

    with app.app_context(), database.connection_context():
        result = verify_database()
    assert (result.ok, result.problem) == (True, None)


def test_no_decision_is_allowed_in_the_log_after_the_withdrawal_it_raced(
    server: tuple[Flask, Server],
) -> None:
    app, running = server
    races = [race(running, f"withdraw-{n}", withdraw) for n in range(RACES)]
    check_races(app, races, ("consent.withdraw", "recorded"))


def test_no_decision_is_allowed_in_the_log_after_the_erasure_it_raced(
    server: tuple[Flask, Server],
) -> None:
    app, running = server
    races = [race(running, f"erase-{n}", erase) for n in range(RACES)]
    check_races(app, races, ("subject.erase", "erased"))


def test_a_decision_clocked_before_a_committed_withdrawal_is_not_allowed_after_it(
    make_app: Any, documents: tuple[Path, Path]
) -> None:
    """A decision whose `now` reads 1 ms earlier than a withdrawal that has committed must not
    be `allow`, chained after that withdrawal.

    In the race above this happens when a decision takes its `now` just before the withdrawal
    takes its own and reads the consent records just after the withdrawal committed; and on a
    gateway host whose clock runs a little behind another's it can happen at any time. Here the
    clock is set, in process, so that it happens every time. Consent status ignores records
    "recorded after now", and the decision's re-check compares only which records it read, so
    the decision must be made no earlier than the changes it read."""
    keep_registrations_active(documents[1])
    app = make_app()
    shop = register_callers(app)["shop"]
    start = datetime.now(UTC)
    path = consent_path("dana")
    with time_machine.travel(start, tick=False):
        assert shop.put(path, {"granted": True, **NOTICE}).status_code == 200
    with time_machine.travel(start + timedelta(milliseconds=2), tick=False):
        assert shop.put(path, {"granted": False, **NOTICE}).status_code == 200
    with time_machine.travel(start + timedelta(milliseconds=1), tick=False):
        body = {"subject_id": "dana", "purpose": PURPOSE, "candidates": CANDIDATES}
        response = shop.post("/v1/personalize", body)

    assert response.status_code == 200, response.get_json()
    assert allowed_after_forbidden(read_log(app)) == []
    assert response.get_json()["outcome"] == "fallback"
