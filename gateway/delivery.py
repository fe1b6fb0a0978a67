"""Delivering the outbox to the recipients as Standard Webhooks, from `gateway scheduler`.

    secrets = recipient_secrets(policies, home)    # ConfigurationError naming each recipient
    Courier(app).tick()                            # one round: lapses, claim, send, record, drop

Each message is signed with its recipient's secret by the `standardwebhooks` package; its
`webhook-id` is the message id, the same on every attempt, so a recipient can drop a repeat.
A 2xx answer delivers it; anything else, or no answer within the timeout, schedules a retry on
GATEWAY_DELIVERY_RETRIES, and once those are spent the message fails. Each final outcome is an
audit entry. Secrets come from the variable a recipient's `secret_env` names or, where that is
unset, from the file `$GATEWAY_HOME/secrets/<secret_env>` (mode 0600), which `gateway demo`
writes for the demo's recipient.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import isodate
from flask import Flask
from peewee import PeeweeException
from standardwebhooks.webhooks import Webhook

from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.crypto import Keyring, KeyringError
from gateway.errors import ConfigurationError, GatewayError
from gateway.policy.model import PolicySet, Recipient
from gateway.store.consents import report_lapsed
from gateway.store.db import database, write_transaction
from gateway.store.leases import new_holder
from gateway.store.models import Delivery
from gateway.store.outbox import DeliveryStatus, claim_due, drop_finished, opened_body
from gateway.store.outbox import record_attempt as store_attempt

log = logging.getLogger("gateway.delivery")
SECRET_PREFIX = "whsec_"
DROP_EVERY = timedelta(minutes=1)


class RecipientSecretError(ConfigurationError):
    """A recipient's webhook secret is missing or malformed: no message may go unsigned."""

    code = "recipient_secret"


def _secret_text(recipient: Recipient, home: Path) -> str | None:
    value = os.environ.get(recipient.secret_env)
    if value is None:
        path = home / "secrets" / recipient.secret_env
        value = path.read_text(encoding="utf-8").strip() if path.is_file() else None
    return value


def _valid_secret(text: str) -> bool:
    if not text.startswith(SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        return False
    return 24 <= len(key) <= 64


def recipient_secrets(policies: PolicySet, home: str | Path) -> dict[str, str]:
    """Every recipient's `whsec_` secret; raise naming each recipient whose secret is unset or
    malformed, so a gateway never starts unable to sign."""
    found, problems = {}, []
    for recipient in policies.recipients.values():
        text = _secret_text(recipient, Path(home))
        if text is None:
            problems.append(f"recipients.{recipient.id}: {recipient.secret_env} is not set")
        elif not _valid_secret(text):
            problems.append(
                f"recipients.{recipient.id}: {recipient.secret_env} is not a whsec_ secret"
                " (whsec_ and 24 to 64 bytes in base64)"
            )
        else:
            found[recipient.id] = text
    if problems:
        raise RecipientSecretError(
            "A recipient's webhook secret is missing or malformed: " + "; ".join(problems),
            {"recipients": problems},
        )
    return found


def new_secret() -> str:
    """A fresh Standard Webhooks secret (`whsec_` and 32 random bytes in base64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def ensure_secret_file(home: str | Path, name: str) -> Path:
    """The file `home/secrets/name`, created owner-only with a new secret if it is missing."""
    folder = Path(home) / "secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(new_secret() + "\n")
    return path


def parse_retries(text: str) -> list[timedelta]:
    """`5s,5m,30m,2h` (or ISO 8601 durations) as the waits before each retry."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    waits = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part[-1] in units and part[:-1].replace(".", "", 1).isdigit():
            waits.append(timedelta(**{units[part[-1]]: float(part[:-1])}))
        else:
            waits.append(isodate.parse_duration(part))
    return waits


def signed_headers(message_id: str, body: str, secret: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed by the `standardwebhooks` package."""
    signature = Webhook(secret).sign(message_id, now, body)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def send(
    http: httpx.Client, url: str, message_id: str, body: str, secret: str, now: datetime
) -> str | None:
    """Post one message; None when the recipient answered 2xx, else what went wrong."""
    headers = signed_headers(message_id, body, secret, now)
    try:
        response = http.post(url, content=body.encode("utf-8"), headers=headers)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError as exc:
        return f"{exc.__class__.__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


class Courier:
    """The delivery job of one scheduler process: each tick queues the notices of grants that
    lapsed, claims due messages, sends them, records each attempt, and drops messages finished
    longer ago than GATEWAY_DELIVERY_KEEP."""

    def __init__(self, app: Flask) -> None:
        from gateway import policies

        self.app = app
        self.holder = new_holder()
        config = app.config
        with app.app_context():
            self.policies = policies()
        self.secrets = recipient_secrets(self.policies, config["HOME"])
        self.retries = parse_retries(str(config["DELIVERY_RETRIES"]))
        self.keep = isodate.parse_duration(str(config["DELIVERY_KEEP"]))
        self.lease = timedelta(seconds=float(config["DELIVERY_LEASE_SECONDS"]))
        self.batch = int(config["DELIVERY_BATCH"])
        self.timeout = float(config["DELIVERY_TIMEOUT_SECONDS"])
        self.dropped_at: datetime | None = None
        if self.lease.total_seconds() <= self.timeout + 1:
            raise ConfigurationError(
                "GATEWAY_DELIVERY_LEASE_SECONDS must exceed GATEWAY_DELIVERY_TIMEOUT_SECONDS by"
                " more than a second: a claim must outlast an attempt",
                {"DELIVERY_LEASE_SECONDS": ["Must exceed the timeout by more than a second."]},
            )

    def tick(self) -> dict[str, int]:
        """One round, with its own app context and connection; errors are logged, not raised."""
        with self.app.app_context(), database.connection_context():
            try:
                return self._round()
            except (GatewayError, PeeweeException) as caught:
                log.error("delivery round failed: %s", caught)
                return {}

    def _round(self) -> dict[str, int]:
        from gateway import keyring

        counts = {status.value: 0 for status in DeliveryStatus}
        report_lapsed(self.policies, keyring(), datetime.now(UTC), self.batch)
        claimed = claim_due(self.holder, now=datetime.now(UTC), lease=self.lease, limit=self.batch)
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
            for message in claimed:
                if not self._still_ours(message):
                    break  # the rest of the claims lapse and go to whoever claims them next
                status = self._attempt(http, message, keyring())
                if status is not None:
                    counts[status.value] += 1
        self._drop_old()
        return counts

    def _still_ours(self, message: Delivery) -> bool:
        """Whether the claim outlasts a whole attempt: past that, another sender may take the
        message, and two must never send it at once."""
        deadline = datetime.now(UTC) + timedelta(seconds=self.timeout + 1)
        return bool(message.claim_expires_at > deadline)

    def _drop_old(self) -> None:
        """Delete what finished longer than GATEWAY_DELIVERY_KEEP ago, once a minute at most."""
        now = datetime.now(UTC)
        if self.dropped_at is not None and now - self.dropped_at < DROP_EVERY:
            return
        with write_transaction():
            drop_finished(now - self.keep)
        self.dropped_at = now

    def _attempt(
        self, http: httpx.Client, message: Delivery, keyring: Keyring
    ) -> DeliveryStatus | None:
        recipient = self.policies.recipients.get(str(message.recipient))
        if recipient is None:
            error: str | None = "recipient no longer registered"
        else:
            try:
                body = opened_body(message, keyring)
            except KeyringError as exc:
                error = f"payload unreadable: {exc}"
            else:
                now = datetime.now(UTC)
                secret = self.secrets[recipient.id]
                error = send(http, recipient.url, str(message.message_id), body, secret, now)
        return self._record(message, error)

    def _record(self, message: Delivery, error: str | None) -> DeliveryStatus | None:
        from gateway import policies

        now = datetime.now(UTC)
        with write_transaction():
            status = store_attempt(
                message,
                self.holder,
                delivered=error is None,
                error=error,
                retries=self.retries,
                now=now,
            )
            if status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED):
                audit(outcome_record(message, status, policies().hash), now)
        return status


def outcome_record(message: Delivery, status: DeliveryStatus, policy_hash: str) -> AuditRecord:
    """The audit entry of a message's final outcome."""
    delivered = status is DeliveryStatus.DELIVERED
    action = Action.DELIVERY_DELIVERED if delivered else Action.DELIVERY_FAILED
    details: Mapping[str, Any] = {
        "recipient": message.recipient,
        "message_id": message.message_id,
        "type": message.type,
        "attempts": message.attempts,
    }
    return AuditRecord(
        actor="scheduler",
        action=action,
        policy_hash=policy_hash,
        subject=str(message.subject),
        outcome=status.value,
        fields=details,
    )
