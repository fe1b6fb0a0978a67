"""POST /v1/recipients/{id}/resync: every subject's current state queued for one recipient, in
batches, delivered like any other message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gateway.delivery import Courier
from tests.conftest import Caller
from tests.receiver import WebhookReceiver
from tests.stores import raw
from tests.test_delivery import SECRET, audit_outcomes, deliveries, grant, hooked_app


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as running:
        yield running


@pytest.fixture(params=[1, 500], ids=["batches-of-1", "batches-of-500"])
def app(
    request: pytest.FixtureRequest,
    make_app: Any,
    documents: tuple[Path, Path],
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> Flask:
    return hooked_app(make_app, documents[1], receiver, monkeypatch, RESYNC_BATCH=request.param)


def told(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    return sorted(
        (r.body["data"]["subject_id"], r.body["data"]["state"]) for r in receiver.delivered()
    )


def test_a_resync_queues_each_subjects_current_state_for_the_recipient(
    app: Flask, mailer: Caller, shop: Caller, admin: Caller, receiver: WebhookReceiver
) -> None:
    grant(mailer, "dora")
    grant(mailer, "eric")
    grant(mailer, "eric", granted=False)
    grant(shop, "fay", purpose="recommendations")  # nothing crm_sync hears of
    with raw(app.config) as db:  # as if the recipient had never been told
        db.execute("DELETE FROM delivery")

    response = admin.post("/v1/recipients/crm_sync/resync")

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "recipient": "crm_sync",
        "subjects": 3,
        "messages": 2,
        "skipped": 0,
    }
    Courier(app).tick()
    assert told(receiver) == [("dora", "granted"), ("eric", "withdrawn")]
    assert receiver.rejected == []
    [(action, outcome, fields)] = [a for a in audit_outcomes(app, "recipient.resync")]
    assert (action, outcome) == ("recipient.resync", "queued") and '"messages": 2' in fields


def test_a_subject_that_cannot_be_named_is_skipped(
    app: Flask, mailer: Caller, admin: Caller, receiver: WebhookReceiver
) -> None:
    grant(mailer, "gil")
    grant(mailer, "hal")
    grant(mailer, "ivy")
    assert admin.request("DELETE", "/v1/subjects/hal").status_code == 200
    with raw(app.config) as db:
        db.execute("DELETE FROM delivery")
        # a subject from before resyncs: its id was never sealed
        db.execute("UPDATE subject SET sealed_id = NULL WHERE id = (SELECT MIN(id) FROM subject)")

    body = admin.post("/v1/recipients/crm_sync/resync").get_json()

    assert (body["subjects"], body["messages"], body["skipped"]) == (2, 1, 1)
    Courier(app).tick()
    assert told(receiver) == [("ivy", "granted")]
    assert len(deliveries(app)) == 1


def test_an_unknown_recipient_is_404(app: Flask, admin: Caller) -> None:
    response = admin.post("/v1/recipients/nobody/resync")

    assert (response.status_code, response.get_json()["code"]) == (404, "unknown_recipient")
