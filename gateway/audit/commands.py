"""`gateway audit ...`: verify (also an export, offline), export, summary, checkpoint.

gateway audit verify                        # exit 1 when the chain is broken
gateway audit verify --resume               # only the entries since the last verified head
gateway audit export --since 2026-01-01T00:00:00Z --format jsonl --output audit.jsonl
gateway audit verify --file audit.jsonl --public-key <base64url>   # no database needed
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click
from flask import current_app
from flask.cli import with_appcontext

from gateway.audit import audited_export, checkpoint_now
from gateway.audit.chain import Action, AuditRecord
from gateway.audit.export import FORMATS, verify_export
from gateway.audit.queries import summary
from gateway.audit.resume import verify_recorded
from gateway.audit.verification import Verification
from gateway.exits import GatewayCommand, GatewayCommands
from gateway.store.db import database
from gateway.store.migrations import check_keyring

# A plain group: `audit verify --file` must work without the app, its documents or database;
# the other commands load the app through `with_appcontext`.
audit_group = GatewayCommands("audit", help="Verify, export and summarize the audit log.")


class AwareDateTime(click.ParamType):
    name = "datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date-time", param, ctx)
        if parsed.tzinfo is None:
            self.fail(f"{value!r} needs a UTC offset, e.g. 2026-01-01T00:00:00Z", param, ctx)
        return parsed


def _report(result: Verification, **extra: Any) -> None:
    shown = {**{k: v for k, v in asdict(result).items() if k != "last_hash"}, **extra}
    click.echo(json.dumps(shown, indent=2))
    if not result.ok:
        sys.exit(1)


def _operator() -> str:
    from gateway.cli import operator

    return operator()


def _record(action: Action, **fields: Any) -> AuditRecord:
    from gateway import policies

    return AuditRecord(
        actor=_operator(),
        action=action,
        policy_hash=policies().hash,
        outcome="recorded",
        fields=fields,
    )


@click.command("verify", cls=GatewayCommand)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Verify this export offline instead of the database.",
)
@click.option("--public-key", default=None, help="The key the export must be signed with.")
@click.option(
    "--resume",
    is_flag=True,
    help="Verify only the entries after the last verified head (AUDIT_VERIFIED_STATE).",
)
def verify_command(path: str | None, public_key: str | None, resume: bool) -> None:
    """Verify the chain and its checkpoints; exit 1 naming the first bad seq."""
    if path is not None:
        if resume:
            raise click.UsageError("--resume verifies the database, not an export (--file)")
        with open(path, encoding="utf-8", newline="") as handle:
            _report(verify_export(handle, public_key))
        return
    _verify_database(resume)


@with_appcontext
def _verify_database(resume: bool) -> None:
    from gateway import keyring

    ring = keyring()
    state = Path(current_app.config["AUDIT_VERIFIED_STATE"])
    with database.connection_context():
        # another keyring's key fails every checkpoint, which would read as tampering
        check_keyring(ring)
        found = verify_recorded(state, ring, resume=resume, now=datetime.now(UTC))
    _report(found.result, from_seq=found.from_seq)


@audit_group.command("export")
@with_appcontext
@click.option("--since", type=AwareDateTime(), default=None, help="Inclusive, with offset.")
@click.option("--until", type=AwareDateTime(), default=None, help="Exclusive, with offset.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    help="A file, or - for standard output.",
)
def export_command(since: datetime | None, until: datetime | None, fmt: str, output: str) -> None:
    """Export entries of a time window with their hashes, checkpoints and signatures."""
    record = _record(Action.AUDIT_EXPORT, output=output)
    with database.connection_context():
        lines = audited_export(record, fmt, since, until, datetime.now(UTC))
        if output == "-":
            _write(lines, sys.stdout)
        else:
            with Path(output).open("w", encoding="utf-8", newline="") as handle:
                _write(lines, handle)


def _write(lines: Any, handle: TextIO) -> None:
    for line in lines:
        handle.write(line)


@audit_group.command("summary")
@with_appcontext
@click.option("--since", type=AwareDateTime(), default=None)
@click.option("--until", type=AwareDateTime(), default=None)
def summary_command(since: datetime | None, until: datetime | None) -> None:
    """Decisions by purpose and outcome, refusals by reason, consent changes, other actions."""
    if since and until and since >= until:
        raise click.BadParameter("must be later than --since", param_hint="--until")
    with database.connection_context():
        found = summary(since, until)
    found["since"], found["until"] = since and since.isoformat(), until and until.isoformat()
    click.echo(json.dumps(found, indent=2))


@audit_group.command("checkpoint")
@with_appcontext
def checkpoint_command() -> None:
    """Sign the chain head now."""
    with database.connection_context():
        checkpoint = checkpoint_now(_record(Action.AUDIT_CHECKPOINT), datetime.now(UTC))
    click.echo(
        f"signed seq {checkpoint['seq']} ({checkpoint['hash']}) with key {checkpoint['key_id']}"
    )


audit_group.add_command(verify_command)
