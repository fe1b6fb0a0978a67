"""`gateway deliveries ...`: the outbox from the command line, through the API's own functions.

gateway deliveries list --status failed --recipient mail_service
gateway deliveries retry msg_2f1c0e8a9b7d4c3e8f6a5b4c3d2e1f00
"""

from __future__ import annotations

import getpass
import json
from typing import Any

import click
from flask.cli import with_appcontext

from gateway.api.deliveries import list_deliveries_for, retry_delivery
from gateway.exits import GatewayCommands
from gateway.store.db import database
from gateway.store.outbox import DeliveryStatus

deliveries_group = GatewayCommands("deliveries", help="Messages to the recipients.")


def _shown(delivery: dict[str, Any]) -> str:
    return json.dumps(delivery, default=str, sort_keys=True)


@deliveries_group.command("list")
@with_appcontext
@click.option("--recipient", default=None, help="Only this recipient's messages.")
@click.option("--status", type=click.Choice([s.value for s in DeliveryStatus]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def deliveries_list(recipient: str | None, status: str | None, limit: int) -> None:
    """Messages, newest first, one JSON object a line."""
    with database.connection_context():
        for delivery in list_deliveries_for(recipient, status, limit):
            click.echo(_shown(delivery))


@deliveries_group.command("retry")
@with_appcontext
@click.argument("message_id")
def deliveries_retry(message_id: str) -> None:
    """Queue a failed message again (same id); exit non-zero if there is none to retry."""
    with database.connection_context():
        click.echo(_shown(retry_delivery(message_id, f"cli:{getpass.getuser()}", None)))
