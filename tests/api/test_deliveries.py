"""GET /v1/deliveries, POST /v1/deliveries/{id}/retry and GET /v1/registry/recipients, over a real
receiver; the CLI's `gateway deliveries` reads and retries the same way."""

from __future__ import annotations

import json

from flask import Flask

from gateway.delivery import Courier
from tests.conftest import Caller
from tests.receiver import WebhookReceiver
from tests.test_delivery import audit_outcomes, delivery_app, delivery_receiver, grant  # noqa: F401 (fixtures `app`, `receiver`)


def failed_message(app: Flask, mailer: Caller, receiver: WebhookReceiver) -> str:
    """A withdrawal whose three attempts all got a 500; its message id."""
    receiver.answers = [500, 500, 500]
    grant(mailer, "dora", granted=False)
    courier = Courier(app)
    for _ in range(3):
        courier.tick()
    return receiver.received[0].message_id


def test_deliveries_are_listed_by_recipient_and_status(
    app: Flask, mailer: Caller, auditor: Caller, receiver: WebhookReceiver
) -> None:
    failed = failed_message(app, mailer, receiver)
    grant(mailer, "eric")

    listed = auditor.get("/v1/deliveries").get_json()["deliveries"]
    only_failed = auditor.get("/v1/deliveries?status=failed").get_json()["deliveries"]
    elsewhere = auditor.get("/v1/deliveries?recipient=analytics").get_json()["deliveries"]

    assert [(d["type"], d["status"], d["attempts"]) for d in listed] == [
        ("consent.changed", "pending", 0),
        ("consent.changed", "failed", 3),
    ]
    [shown] = only_failed
    assert shown["id"] == failed and shown["recipient"] == "crm_sync"
    assert (shown["last_error"], shown["next_attempt_at"]) == ("HTTP 500", None)
    assert shown["subject"].startswith("v1:") and "dora" not in str(listed)
    assert listed[0]["next_attempt_at"] is not None
    assert elsewhere == []


def test_an_admin_retries_a_failed_delivery_with_the_same_id(
    app: Flask, mailer: Caller, admin: Caller, receiver: WebhookReceiver
) -> None:
    failed = failed_message(app, mailer, receiver)

    response = admin.post(f"/v1/deliveries/{failed}/retry")

    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["status"], response.get_json()["attempts"]) == ("pending", 0)
    Courier(app).tick()
    [delivered] = receiver.delivered()
    assert delivered.message_id == failed
    assert delivered.body["data"]["subject_id"] == "dora"
    actions = [action for action, _, _ in audit_outcomes(app)]
    assert sorted(actions) == ["delivery.delivered", "delivery.failed", "delivery.retry"]


def test_only_a_failed_delivery_can_be_retried(
    app: Flask, mailer: Caller, admin: Caller, receiver: WebhookReceiver
) -> None:
    grant(mailer, "dora")
    Courier(app).tick()
    [delivered] = receiver.delivered()

    response = admin.post(f"/v1/deliveries/{delivered.message_id}/retry")
    unknown = admin.post("/v1/deliveries/msg_00000000000000000000000000000000/retry")

    assert (response.status_code, response.get_json()["code"]) == (409, "not_failed")
    assert (unknown.status_code, unknown.get_json()["code"]) == (404, "unknown_delivery")
    assert len(receiver.received) == 1


def test_the_recipients_are_listed_without_their_secrets(
    app: Flask, auditor: Caller, receiver: WebhookReceiver
) -> None:
    body = auditor.get("/v1/registry/recipients").get_json()

    assert body["recipients"] == [
        {
            "id": "crm_sync",
            "name": "CRM sync",
            "purposes": ["email_marketing"],
            "url": receiver.url,
            "secret_env": "TEST_CRM_SECRET",
        }
    ]
    assert "whsec_" not in str(body)


def test_the_cli_lists_and_retries_like_the_api(
    app: Flask, mailer: Caller, receiver: WebhookReceiver
) -> None:
    failed = failed_message(app, mailer, receiver)
    runner = app.test_cli_runner()

    listed = runner.invoke(args=["deliveries", "list", "--status", "failed"])
    retried = runner.invoke(args=["deliveries", "retry", failed])
    again = runner.invoke(args=["deliveries", "retry", failed])

    assert listed.exit_code == 0, listed.output
    [line] = listed.output.splitlines()
    assert json.loads(line)["id"] == failed and json.loads(line)["attempts"] == 3
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.output)["status"] == "pending"
    assert again.exit_code != 0 and "Only a failed delivery can be retried" in again.output
