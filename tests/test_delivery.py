"""Consent changes and erasures delivered to the recipients: a real receiver on loopback checks
every signature with the `standardwebhooks` package; the scheduler's delivery job runs in-process
here (tests/test_delivery_processes.py runs real `gateway scheduler` processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from peewee import PeeweeException
from prometheus_client.parser import text_string_to_metric_families

from gateway import keyring, policies
from gateway.delivery import Courier
from gateway.errors import ConfigurationError
from gateway.store.consents import record_consent, report_lapsed
from gateway.store.db import database, write_transaction
from gateway.store.subjects import ensure_subject
from tests.api.test_erasure_fail_closed import commit_fails
from tests.conftest import Caller
from tests.receiver import WebhookReceiver
from tests.stores import count_rows, raw

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
OTHER_SECRET = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBvZiAzMiBieXRlcw=="
CONSENT = {"source": "web_banner", "notice_version": "2026-01"}


def write_recipients(registry: Path, url: str, other_url: str | None = None) -> None:
    """`crm_sync` hears of email_marketing; `analytics` (if given a URL) of recommendations."""
    text = (
        "recipients:\n"
        "  crm_sync:\n"
        "    name: CRM sync\n"
        "    purposes: [email_marketing]\n"
        f"    url: {url}\n"
        "    secret_env: TEST_CRM_SECRET\n"
    )
    if other_url:
        text += (
            "  analytics:\n"
            "    name: Analytics processor\n"
            "    purposes: [recommendations]\n"
            f"    url: {other_url}\n"
            "    secret_env: TEST_ANALYTICS_SECRET\n"
        )
    (registry / "recipients.yaml").write_text(text, encoding="utf-8")


@pytest.fixture(name="receiver")
def delivery_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, hang_seconds=1.5) as running:
        yield running


QUICK: dict[str, Any] = {"DELIVERY_RETRIES": "0s,0s", "DELIVERY_TIMEOUT_SECONDS": 0.5}


def hooked_app(
    make_app: Any,
    registry: Path,
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
    other_url: str | None = None,
    **settings: Any,
) -> Flask:
    """An app whose recipient `crm_sync` is the receiver (and `analytics` at `other_url`, if
    given), with `settings`."""
    write_recipients(registry, receiver.url, other_url)
    monkeypatch.setenv("TEST_CRM_SECRET", SECRET)
    built: Flask = make_app(**settings)
    return built


@pytest.fixture(name="app")
def delivery_app(
    make_app: Any,
    documents: tuple[Path, Path],
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> Flask:
    """The fixtures `app` and `receiver` of every module on deliveries (which import them):
    `crm_sync` is the receiver: two quick retries, then failed; no answer within half a
    second is a timeout."""
    return hooked_app(make_app, documents[1], receiver, monkeypatch, **QUICK)


def deliveries(app: Flask) -> list[dict[str, Any]]:
    """The outbox as stored, oldest first."""
    with raw(app.config) as db:
        cursor = db.execute(
            "SELECT message_id, recipient, type, subject, payload, status, attempts, last_error"
            " FROM delivery ORDER BY id"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def stored_text(app: Flask) -> str:
    """Every value of every outbox row, as one text to search."""
    with raw(app.config) as db:
        rows = db.execute("SELECT * FROM delivery").fetchall()
    return "\n".join(str(value) for row in rows for value in row)


DELIVERY_ACTIONS = ("delivery.delivered", "delivery.failed", "delivery.retry")


def audit_outcomes(app: Flask, *actions: str) -> list[tuple[str, str, str]]:
    """The audit entries of deliveries (or of `actions`), chained or still pending:
    (action, outcome, fields)."""
    actions = actions or DELIVERY_ACTIONS
    marks = ", ".join("?" for _ in actions)
    with raw(app.config) as db:
        rows = db.execute(
            f"SELECT action, outcome, fields FROM audit_pending WHERE action IN ({marks})"
            f" UNION ALL SELECT action, outcome, fields FROM audit_entry WHERE action IN ({marks})",
            (*actions, *actions),
        ).fetchall()
    return [(str(a), str(o), str(f)) for a, o, f in rows]


def grant(caller: Caller, subject: str, granted: bool = True, purpose: str = "email_marketing"):
    response = caller.put(
        f"/v1/subjects/{subject}/consents/{purpose}", {"granted": granted, **CONSENT}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_grant_reaches_its_recipient_signed_and_is_then_dropped_from_the_outbox(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    record = grant(mailer, "dora")
    [waiting] = deliveries(app)
    assert (waiting["recipient"], waiting["type"], waiting["status"]) == (
        "crm_sync",
        "consent.changed",
        "pending",
    )

    Courier(app).tick()

    [message] = receiver.received
    assert receiver.rejected == []
    assert message.message_id == waiting["message_id"]
    assert message.body["type"] == "consent.changed"
    assert message.body["data"] == {
        "subject_id": "dora",
        "purpose": "email_marketing",
        "state": "granted",
        "effective_at": record["recorded_at"],
        "source": "web_banner",
        "receipt_id": record["receipt"]["payload"]["receipt_id"],
    }
    [done] = deliveries(app)
    assert (done["status"], done["attempts"], done["payload"]) == ("delivered", 1, None)
    assert "dora" not in stored_text(app)
    [(action, outcome, fields)] = audit_outcomes(app)
    assert (action, outcome) == ("delivery.delivered", "delivered")
    assert waiting["message_id"] in fields and '"attempts": 1' in fields


def test_the_payload_is_encrypted_while_it_waits(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    grant(mailer, "subject-with-a-findable-id")

    [waiting] = deliveries(app)

    assert waiting["payload"].startswith("v1:")
    assert "subject-with-a-findable-id" not in stored_text(app)
    assert waiting["subject"].startswith("v1:")  # the pseudonym


def test_a_purpose_no_recipient_lists_queues_nothing(app: Flask, shop: Caller) -> None:
    grant(shop, "dora", purpose="recommendations")

    assert deliveries(app) == []


def test_a_failing_recipient_is_retried_with_the_same_id_until_the_message_fails(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 503, 500]
    grant(mailer, "dora", granted=False)
    courier = Courier(app)

    for _ in range(3):
        courier.tick()

    assert [r.answered for r in receiver.received] == [500, 503, 500]
    assert len({r.message_id for r in receiver.received}) == 1
    [failed] = deliveries(app)
    assert (failed["status"], failed["attempts"], failed["last_error"]) == (
        "failed",
        3,
        "HTTP 500",
    )
    assert failed["payload"] is not None  # kept so that it can be retried
    [(action, outcome, fields)] = audit_outcomes(app)
    assert (action, outcome) == ("delivery.failed", "failed") and '"attempts": 3' in fields


def test_a_recipient_that_does_not_answer_in_time_is_retried(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    receiver.answers = ["hang"]
    grant(mailer, "dora")
    courier = Courier(app)

    courier.tick()
    [waiting] = deliveries(app)
    assert (waiting["status"], waiting["attempts"], waiting["last_error"]) == (
        "pending",
        1,
        "timeout",
    )
    courier.tick()

    assert len(receiver.delivered()) == 1
    assert deliveries(app)[0]["status"] == "delivered"


def test_a_retry_waits_for_its_time(
    make_app: Any,
    documents: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    receiver: WebhookReceiver,
) -> None:
    patient = hooked_app(make_app, documents[1], receiver, monkeypatch, DELIVERY_RETRIES="1h")
    receiver.answers = [500]
    grant(_admin(patient), "hana")

    Courier(patient).tick()
    Courier(patient).tick()  # the retry is an hour away

    assert [r.answered for r in receiver.received] == [500]
    [waiting] = deliveries(patient)
    assert (waiting["status"], waiting["attempts"]) == ("pending", 1)


def test_a_later_change_waits_for_an_earlier_one_of_the_same_subject(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    receiver.answers = [500]
    grant(mailer, "dora", granted=True)
    grant(mailer, "dora", granted=False)
    grant(mailer, "eric", granted=True)
    courier = Courier(app)

    courier.tick()  # dora's grant fails; her withdrawal may not overtake it; eric's goes

    first_round = [
        (r.body["data"]["subject_id"], r.body["data"]["state"]) for r in receiver.received
    ]
    assert first_round == [("dora", "granted"), ("eric", "granted")]
    courier.tick()
    courier.tick()

    dora = [
        r.body["data"]["state"]
        for r in receiver.delivered()
        if r.body["data"]["subject_id"] == "dora"
    ]
    assert dora == ["granted", "withdrawn"]


def test_a_change_that_rolls_back_queues_nothing(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    with commit_fails(app, "recorded", action="consent.grant"):
        response = mailer.put(
            "/v1/subjects/dora/consents/email_marketing", {"granted": True, **CONSENT}
        )
        assert response.status_code == 503

    assert deliveries(app) == []
    Courier(app).tick()
    assert receiver.received == []


def test_an_erasure_reaches_every_recipient_and_leaves_no_raw_id_once_out(
    make_app: Any,
    documents: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    receiver: WebhookReceiver,
) -> None:
    with WebhookReceiver(OTHER_SECRET) as other:
        monkeypatch.setenv("TEST_ANALYTICS_SECRET", OTHER_SECRET)
        both = hooked_app(make_app, documents[1], receiver, monkeypatch, other.url)
        admin = _admin(both)
        grant(admin, "frida")

        response = admin.request("DELETE", "/v1/subjects/frida")
        assert response.status_code == 200
        assert "frida" not in stored_text(both)
        Courier(both).tick()
        Courier(both).tick()  # the erasure after the grant it follows

    assert [r.body["type"] for r in receiver.delivered()] == ["consent.changed", "subject.erased"]
    [erased] = other.delivered()
    assert erased.body["type"] == "subject.erased"
    assert erased.body["data"]["subject_id"] == "frida"
    assert other.rejected == [] and receiver.rejected == []
    assert {d["status"] for d in deliveries(both)} == {"delivered"}
    assert "frida" not in stored_text(both)


def _admin(app: Flask) -> Caller:
    from datetime import UTC, datetime

    from gateway.store.clients import Role, create_client
    from gateway.store.db import database

    with app.app_context(), database.connection_context():
        _, key = create_client("hooks-admin", Role.ADMIN, [], datetime.now(UTC))
    return Caller(app.test_client(), key)


def test_finished_messages_are_dropped_after_the_keep(
    make_app: Any,
    documents: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    receiver: WebhookReceiver,
) -> None:
    brief = hooked_app(make_app, documents[1], receiver, monkeypatch, DELIVERY_KEEP="PT0S")
    grant(_admin(brief), "gus")

    Courier(brief).tick()  # delivered, then dropped in the same round
    assert len(receiver.delivered()) == 1
    Courier(brief).tick()

    assert deliveries(brief) == []


def test_two_couriers_racing_never_send_one_message_twice_at_once(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    receiver.answers = [0.05] * 40
    for index in range(20):
        grant(mailer, f"subject-{index}")
    couriers = [Courier(app), Courier(app)]

    def run(courier: Courier) -> None:
        for _ in range(4):
            courier.tick()

    threads = [threading.Thread(target=run, args=(c,)) for c in couriers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    ids = [r.message_id for r in receiver.received]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert receiver.overlaps == []
    assert {d["status"] for d in deliveries(app)} == {"delivered"}


def metric(app: Flask, name: str, **labels: str) -> float | None:
    """One sample of the app's /metrics; None when it is absent."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def test_metrics_show_the_outbox_by_recipient_and_status(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    assert metric(app, "gateway_delivery_queue_depth") == 0
    assert metric(app, "gateway_delivery_oldest_pending_seconds") == 0
    receiver.answers = [500]
    grant(mailer, "dora")
    grant(mailer, "eric")
    time.sleep(0.2)

    assert metric(app, "gateway_delivery_queue_depth") == 2
    assert metric(app, "gateway_delivery_oldest_pending_seconds") >= 0.2  # type: ignore[operator]
    Courier(app).tick()  # dora's first attempt fails, eric's message is delivered

    assert metric(app, "gateway_deliveries", recipient="crm_sync", status="pending") == 1
    assert metric(app, "gateway_deliveries", recipient="crm_sync", status="delivered") == 1
    assert metric(app, "gateway_delivery_queue_depth") == 1


def grant_until(caller: Caller, subject: str, seconds: float) -> dict[str, Any]:
    lapses = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
    body = {"granted": True, **CONSENT, "expires_at": lapses}
    response = caller.put(f"/v1/subjects/{subject}/consents/email_marketing", body)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def states(receiver: WebhookReceiver, subject: str) -> list[str]:
    """The consent states the receiver was told of for a subject, in arrival order."""
    return [
        r.body["data"]["state"]
        for r in receiver.delivered()
        if r.body["type"] == "consent.changed" and r.body["data"]["subject_id"] == subject
    ]


def marked(app: Flask) -> int:
    """The grants whose lapse the scheduler has still to look at."""
    return count_rows(
        app.config, "SELECT COUNT(*) FROM consent_record WHERE expiry_notice_at IS NOT NULL"
    )


def look_at_lapses(app: Flask, now: datetime, limit: int = 100) -> int:
    """One call of the scheduler's look at lapsed grants, as it would run at `now`."""
    with app.app_context(), database.connection_context():
        return report_lapsed(policies(), keyring(), now, limit)


def test_a_grant_that_lapses_is_reported_once_as_expired(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    record = grant_until(mailer, "ida", seconds=1.5)
    courier = Courier(app)
    courier.tick()
    assert states(receiver, "ida") == ["granted"]
    assert [d["status"] for d in deliveries(app)] == ["delivered"]  # nothing waits for the lapse
    assert marked(app) == 1

    time.sleep(1.6)
    courier.tick()
    courier.tick()
    courier.tick()

    assert states(receiver, "ida") == ["granted", "expired"]
    expired = receiver.delivered()[-1].body
    assert expired["data"]["effective_at"] == record["expires_at"]
    assert expired["data"]["receipt_id"] == record["receipt"]["payload"]["receipt_id"]
    assert expired["timestamp"] == record["expires_at"]
    assert marked(app) == 0


def test_a_grant_that_never_ends_is_not_marked(app: Flask, mailer: Caller) -> None:
    grant(mailer, "ida")  # email_marketing has no consent_max_age, and no expires_at is given

    assert marked(app) == 0


def test_a_lapse_found_while_the_grant_is_still_being_retried_waits_for_it(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    receiver.answers = [500]
    grant_until(mailer, "ida", seconds=1.0)
    courier = Courier(app)
    courier.tick()  # the grant's first attempt fails

    time.sleep(1.1)
    courier.tick()  # the lapse is queued behind the grant, which goes first
    courier.tick()

    assert states(receiver, "ida") == ["granted", "expired"]
    assert [r.answered for r in receiver.received] == [500, 200, 200]


@pytest.mark.parametrize("change", ["withdrawal", "new_grant", "erasure"])
def test_a_grant_superseded_or_erased_before_it_lapses_is_never_reported_expired(
    app: Flask, mailer: Caller, admin: Caller, receiver: WebhookReceiver, change: str
) -> None:
    grant_until(mailer, "lea", seconds=1.0)
    if change == "withdrawal":
        grant(mailer, "lea", granted=False)
    elif change == "new_grant":
        grant(mailer, "lea")
    else:
        assert admin.request("DELETE", "/v1/subjects/lea").status_code == 200

    time.sleep(1.1)
    Courier(app).tick()
    Courier(app).tick()

    expected = {
        "withdrawal": ["granted", "withdrawn"],
        "new_grant": ["granted", "granted"],
        "erasure": ["granted"],
    }[change]
    assert states(receiver, "lea") == expected
    assert [r.body["type"] for r in receiver.delivered()][-1] == (
        "subject.erased" if change == "erasure" else "consent.changed"
    )
    assert deliveries(app)[-1]["status"] == "delivered"
    assert "lea" not in stored_text(app)
    assert marked(app) == 0  # looked at once, then never again


def test_lapses_are_looked_at_in_batches_oldest_lapse_first(app: Flask, mailer: Caller) -> None:
    names = [f"sub-{n}" for n in range(7)]
    for n, name in enumerate(names):  # the later granted, the sooner it lapses
        grant_until(mailer, name, seconds=600 - n)
    later = datetime.now(UTC) + timedelta(seconds=601)

    assert [look_at_lapses(app, later, limit=3) for _ in range(4)] == [3, 3, 1, 0]

    with app.app_context():
        lapse_order = [keyring().pseudonym(name) for name in reversed(names)]
    queued = [d["subject"] for d in deliveries(app)]
    assert queued[len(names) :] == lapse_order  # after the grants, in the order they lapsed


def test_two_schedulers_looking_at_once_report_each_lapse_once(app: Flask, mailer: Caller) -> None:
    subjects = 40
    for n in range(subjects):
        grant_until(mailer, f"sub-{n}", seconds=600)
    later = datetime.now(UTC) + timedelta(seconds=601)
    looked: list[int] = []
    start = threading.Barrier(2)

    def scheduler() -> None:
        start.wait()
        while found := look_at_lapses(app, later, limit=3):
            looked.append(found)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(looked) == subjects
    assert count_rows(app.config, "SELECT COUNT(*) FROM delivery") == 2 * subjects
    assert marked(app) == 0


# A fault at COMMIT of any transaction that writes to the outbox: a row breaking a deferred
# foreign key (SQLite), a deferred constraint trigger that raises (PostgreSQL).
OUTBOX_FAULT = {
    "sqlite": [
        "CREATE TABLE commit_fault (subject_id INTEGER"
        " REFERENCES subject (id) DEFERRABLE INITIALLY DEFERRED)",
        "CREATE TRIGGER commit_fault_delivery AFTER INSERT ON delivery"
        " BEGIN INSERT INTO commit_fault VALUES (-1); END",
    ],
    "postgresql": [
        "CREATE FUNCTION commit_fault() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'fault at commit'; END $$",
        "CREATE CONSTRAINT TRIGGER commit_fault AFTER INSERT ON delivery"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION commit_fault()",
    ],
}
OUTBOX_REPAIR = {
    "sqlite": ["DROP TRIGGER commit_fault_delivery", "DROP TABLE commit_fault"],
    "postgresql": ["DROP TRIGGER commit_fault ON delivery", "DROP FUNCTION commit_fault()"],
}


def test_a_lapse_whose_notice_cannot_commit_is_reported_by_the_next_look(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    grant_until(mailer, "ida", seconds=600)
    later = datetime.now(UTC) + timedelta(seconds=601)
    with raw(app.config) as db:
        for sql in OUTBOX_FAULT["postgresql" if db.postgres else "sqlite"]:
            db.execute(sql)

    with pytest.raises(PeeweeException):
        look_at_lapses(app, later)

    assert marked(app) == 1  # the mark is cleared only with the notice it queues
    assert len(deliveries(app)) == 1
    with raw(app.config) as db:
        for sql in OUTBOX_REPAIR["postgresql" if db.postgres else "sqlite"]:
            db.execute(sql)
    assert look_at_lapses(app, later) == 1
    assert marked(app) == 0
    assert [d["type"] for d in deliveries(app)] == ["consent.changed", "consent.changed"]


def test_a_lapse_of_a_purpose_no_recipient_lists_is_looked_at_and_queues_nothing(
    app: Flask, shop: Caller
) -> None:
    lapses = (datetime.now(UTC) + timedelta(seconds=600)).isoformat()
    body = {"granted": True, **CONSENT, "expires_at": lapses}
    assert shop.put("/v1/subjects/ida/consents/recommendations", body).status_code == 200
    assert marked(app) == 1

    assert look_at_lapses(app, datetime.now(UTC) + timedelta(seconds=601)) == 1

    assert (marked(app), deliveries(app)) == (0, [])


def test_a_lease_that_would_not_outlast_an_attempt_is_refused(app: Flask) -> None:
    app.config.update(DELIVERY_LEASE_SECONDS=2, DELIVERY_TIMEOUT_SECONDS=5)

    with pytest.raises(ConfigurationError) as caught:
        Courier(app)

    assert "GATEWAY_DELIVERY_LEASE_SECONDS" in str(caught.value)


def test_a_message_signed_with_another_secret_is_refused_by_the_receiver(
    app: Flask, mailer: Caller, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CRM_SECRET", OTHER_SECRET)
    grant(mailer, "max")

    Courier(app).tick()

    assert receiver.rejected == ["No matching signature found"]
    assert receiver.received == []
    [waiting] = deliveries(app)
    assert (waiting["status"], waiting["last_error"]) == ("pending", "HTTP 401")


def test_a_change_timed_before_one_that_committed_first_loses_none_of_its_messages(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    """A change recorded with a time before that of one that committed first (as a request
    that read the clock before waiting for the lock would): both messages go, in the order
    they were queued."""
    grant(mailer, "max", granted=False)
    earlier = datetime.now(UTC) - timedelta(seconds=5)
    with app.app_context(), database.connection_context(), write_transaction():
        ring = keyring()
        subject = ensure_subject(ring, ring.pseudonym("max"), earlier)
        record_consent(
            subject,
            subject_id="max",
            purpose="email_marketing",
            granted=True,
            source="web_banner",
            notice_version="2026-01",
            expires_at=None,
            client="racer",
            policies=policies(),
            keyring=ring,
            now=earlier,
        )

    Courier(app).tick()
    Courier(app).tick()

    assert states(receiver, "max") == ["withdrawn", "granted"]


def test_a_purge_keeps_a_lapsed_grant_until_the_scheduler_has_reported_it(
    app: Flask, mailer: Caller, admin: Caller, receiver: WebhookReceiver
) -> None:
    grant_until(mailer, "ida", seconds=1.0)
    time.sleep(1.1)
    held = "SELECT COUNT(*) FROM consent_record"

    assert admin.post("/v1/purges", {"dry_run": False}).status_code == 200
    assert count_rows(app.config, held) == 1  # lapsed, but not yet told: it stays

    Courier(app).tick()
    Courier(app).tick()
    assert states(receiver, "ida") == ["granted", "expired"]
    assert admin.post("/v1/purges", {"dry_run": False}).status_code == 200
    assert count_rows(app.config, held) == 0
