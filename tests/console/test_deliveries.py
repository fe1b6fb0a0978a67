"""The console's deliveries page: the outbox by recipient and status, and an admin's retry of a
failed message through the API's own code, CSRF-checked and audited."""

from __future__ import annotations

from flask import Flask

from gateway.delivery import Courier
from tests.api.test_deliveries import failed_message
from tests.conftest import Caller
from tests.console.conftest import Browser, name_of, text
from tests.receiver import WebhookReceiver
from tests.stores import raw
from tests.test_delivery import audit_outcomes, deliveries, delivery_app, delivery_receiver  # noqa: F401 (fixtures `app`, `receiver`)


def test_the_page_lists_deliveries_and_offers_no_retry_to_an_auditor(
    app: Flask, mailer: Caller, as_auditor: Browser, receiver: WebhookReceiver
) -> None:
    failed = failed_message(app, mailer, receiver)

    page = as_auditor.get("/console/deliveries?status=failed")
    none = as_auditor.get("/console/deliveries?status=delivered")

    assert page.status_code == 200
    assert f'id="delivery-{failed}"' in text(page) and "HTTP 500" in text(page)
    assert f'id="retry-{failed}"' not in text(page)
    assert failed not in text(none)
    refused = as_auditor.post(f"/console/deliveries/{failed}/retry")
    assert refused.status_code == 403
    assert deliveries(app)[0]["status"] == "failed"


def test_an_admin_retries_a_failed_delivery_from_the_console(
    app: Flask, mailer: Caller, admin: Caller, as_admin: Browser, receiver: WebhookReceiver
) -> None:
    failed = failed_message(app, mailer, receiver)
    page = as_admin.get("/console/deliveries")
    assert f'id="retry-{failed}"' in text(page)

    forged = as_admin.post(f"/console/deliveries/{failed}/retry", token="")
    assert deliveries(app)[0]["status"] == "failed"
    response = as_admin.post(f"/console/deliveries/{failed}/retry", follow_redirects=True)

    assert forged.status_code == 400
    assert response.status_code == 200
    assert f"Queued {failed} again" in text(response)
    Courier(app).tick()
    assert [r.message_id for r in receiver.delivered()] == [failed]
    [(_, outcome, fields)] = audit_outcomes(app, "delivery.retry")
    assert outcome == "queued" and failed in fields
    assert retry_actors(app) == [name_of(app, admin)]


def retry_actors(app: Flask) -> list[str]:
    with raw(app.config) as db:
        rows = db.execute(
            "SELECT actor FROM audit_pending WHERE action = ?"
            " UNION ALL SELECT actor FROM audit_entry WHERE action = ?",
            ("delivery.retry", "delivery.retry"),
        ).fetchall()
    return [str(row[0]) for row in rows]
