"""The `gateway` command; the same commands answer to `flask --app gateway ...`.

gateway init                                  # instance folder, keyring, tables
gateway clients add web-shop --role app --purpose recommendations
gateway policy check --policies policies --registry registry
gateway serve --host 127.0.0.1 --port 8000 --workers 2
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext

from gateway import policies
from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.audit.clients import audit_client_change, revoke_audited
from gateway.audit.commands import audit_group
from gateway.crypto import Keyring
from gateway.delivery import RecipientSecretError, ensure_secret_file, recipient_secrets
from gateway.exits import GatewayCommand, GatewayCommands, exit_on_error
from gateway.policy.documents import load_policy_set
from gateway.policy.records import records_csv, records_of_processing
from gateway.store.clients import Role, client_purposes, create_client, list_clients
from gateway.store.db import database, sqlite_files, write_transaction
from gateway.store.keystore import keystore_files
from gateway.store.migrations import check_keyring, upgrade
from gateway.store.models import AuditEntry


def _create_app() -> Flask:
    from gateway import create_app

    # A command runs no sealer of its own: it signs and publishes the head after its writes.
    # (`serve` and `scheduler` run sealers in the background instead.)
    return create_app({"AUDIT_SEAL_AFTER_COMMIT": True})


class GatewayGroup(FlaskGroup):
    """The `gateway` command: loading the app and every command map errors through exits.py."""

    command_class = GatewayCommand

    def invoke(self, ctx: click.Context) -> Any:
        with exit_on_error():
            return super().invoke(ctx)


main = GatewayGroup(
    name="gateway",
    create_app=_create_app,
    add_version_option=False,
    load_dotenv=False,
    help="Operate the consent-governed personalization gateway.",
)


def operator() -> str:
    return f"cli:{getpass.getuser()}"


def initialize(app: Flask) -> Keyring:
    """Create the instance folder, the keyring (once, mode 0600) and the tables. Idempotent."""
    home = Path(app.config["HOME"])
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # the owner's alone, like its files
    path = Path(app.config["KEYRING"])
    if not path.exists():
        _create_keyring(path)
    audit_files = [Path(app.config[name]) for name in ("AUDIT_WITNESS", "AUDIT_VERIFIED_STATE")]
    local = [file for file in audit_files if "://" not in str(file)]  # not a witness URL
    _make_owner_only(
        home, [path, home / "demo-clients.json", *local, *sqlite_files(), *keystore_files()]
    )
    from gateway import keyring

    ring = keyring()
    with database.connection_context():
        before, after = upgrade(ring)
    if before is None:
        click.echo(f"created schema version {after}")
    elif before != after:
        click.echo(f"upgraded schema version {before} -> {after}")
    return ring


def _make_owner_only(home: Path, files: list[Path]) -> None:
    """Tighten an instance made before its files were private: the folder 0700, its files
    0600 (those that exist); nothing that is already as private is touched."""
    tightened = [
        found
        for found, mode in [(home, 0o700), *((file, 0o600) for file in files)]
        if found.exists() and stat.S_IMODE(found.stat().st_mode) & ~mode
    ]
    for found in tightened:
        found.chmod(0o700 if found.is_dir() else 0o600)
    if tightened:
        click.echo(f"made owner-only: {', '.join(str(found) for found in tightened)}")


def _create_keyring(path: Path) -> None:
    """Generate and save a keyring, unless the database holds another keyring's data: a new
    one would read none of it, so refuse before a file is left that looks like the right one."""
    generated = Keyring.generate()
    with database.connection_context():
        check_keyring(generated, f"no keyring at {path}, and a new one")
    generated.save(path)
    click.echo(f"created keyring {path}")


def record_policy_load(app: Flask) -> None:
    """Audit the policy set in force whenever it differs from the one last recorded."""
    with database.connection_context():
        _record_policy_load(app, policies().hash)


def _record_policy_load(app: Flask, active: str) -> None:
    last = (
        AuditEntry.select()
        .where(AuditEntry.action == Action.POLICY_LOAD.value)
        .order_by(AuditEntry.seq.desc())
        .first()
    )
    if last is not None and last.policy_hash == active:
        return
    record = AuditRecord(
        actor=operator(),
        action=Action.POLICY_LOAD,
        policy_hash=active,
        outcome="loaded",
        fields={
            "policies": app.config["POLICIES"],
            "registry": app.config["REGISTRY"],
            "previous": last.policy_hash if last else None,
        },
    )
    with write_transaction():
        audit(record, datetime.now(UTC))


@click.command("init", cls=GatewayCommand)
@with_appcontext
def init_command() -> None:
    """Create the instance folder, keyring and database tables (safe to run again)."""
    initialize(current_app)
    record_policy_load(current_app)
    click.echo(f"ready: {current_app.config['DATABASE_URL']}")


policy = GatewayCommands("policy", help="Validate the policy documents and registry.")


@policy.command("check")
@click.option("--policies", "policies_dir", type=click.Path(), default=None)
@click.option("--registry", "registry_dir", type=click.Path(), default=None)
def policy_check(policies_dir: str | None, registry_dir: str | None) -> None:
    """Validate policies/ and registry/; print the policy hash; exit 1 on error."""
    policies_dir = policies_dir or os.environ.get("GATEWAY_POLICIES", "policies")
    registry_dir = registry_dir or os.environ.get("GATEWAY_REGISTRY", "registry")
    found = load_policy_set(policies_dir, registry_dir)
    today = datetime.now(UTC)
    for registration in found.databases.values():
        if registration.expired(today):
            click.echo(
                f"warning: {registry_dir}: databases.{registration.id}.review_by: "
                f"{registration.review_by} has passed; its data is refused until it is reviewed",
                err=True,
            )
    try:  # the documents are fine without them; `serve` and `scheduler` refuse to start
        recipient_secrets(found, os.environ.get("GATEWAY_HOME", "instance"))
    except RecipientSecretError as missing:
        click.echo(f"warning: {registry_dir}: {missing}", err=True)
    click.echo(
        f"ok: {len(found.categories)} categories, {len(found.purposes)} purposes, "
        f"{len(found.databases)} databases, {len(found.recipients)} recipients"
    )
    for recipient in found.recipients.values():
        click.echo(
            f"recipient {recipient.id}: {recipient.url} "
            f"(purposes: {', '.join(recipient.purposes) or 'erasures only'})"
        )
    click.echo(f"policy_hash: {found.hash}")


main.add_command(policy)
main.add_command(audit_group)

registry = GatewayCommands("registry", help="The registry of databases holding personal data.")


@registry.command("export")
@with_appcontext
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    help="A file, or - for standard output.",
)
def registry_export(fmt: str, output: str) -> None:
    """Records of processing (GDPR Art. 30) of the active registry and policies: a record per
    registered database, as JSON or CSV (as GET /v1/registry/records-of-processing gives them)."""
    from gateway import policies

    active = policies()
    records = records_of_processing(active, datetime.now(UTC))
    if fmt == "csv":
        text = records_csv(records)
    else:
        text = json.dumps({"policy_hash": active.hash, "records": records}, indent=2) + "\n"
    if output == "-":
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")


main.add_command(registry)

clients = AppGroup("clients", help="Manage API clients.")
clients.command_class = GatewayCommand


@clients.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--purpose", "purposes", multiple=True, help="A purpose the client may use.")
def clients_add(name: str, role: str, purposes: tuple[str, ...]) -> None:
    """Create a client; its key is printed once, on the last line."""
    from gateway import policies

    unknown = sorted(set(purposes) - set(policies().purposes))
    if unknown:
        raise click.BadParameter(
            f"unknown purpose(s): {', '.join(unknown)}", param_hint="--purpose"
        )
    if role == Role.APP and not purposes:
        raise click.BadParameter("an app client needs at least one purpose", param_hint="--purpose")
    with database.connection_context(), write_transaction():
        client, key = create_client(name, Role(role), list(purposes), datetime.now(UTC))
        granted = {"role": role, "purposes": client_purposes(client)}
        audit_client_change(Action.CLIENT_CREATE, name, granted, actor=operator())
    click.echo(f"created {role} client {name!r}; keep this key, it is not shown again:")
    click.echo(key)


@clients.command("list")
def clients_list() -> None:
    """List clients (never their keys)."""
    with database.connection_context():
        for client in list_clients():
            state = f"revoked {client.revoked_at:%Y-%m-%d}" if client.revoked_at else "active"
            purposes = ",".join(client_purposes(client)) or "-"
            click.echo(f"{client.name}\t{client.role}\t{purposes}\t{state}")


@clients.command("revoke")
@click.argument("name")
def clients_revoke(name: str) -> None:
    """Revoke a client's key at once."""
    with database.connection_context():
        changed = revoke_audited(name, actor=operator())
    click.echo(f"revoked {name!r}" if changed else f"{name!r} was already revoked")


@click.command("serve", cls=GatewayCommand)
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
@click.option("--workers", default=1, type=click.IntRange(1, 64), show_default=True)
def serve_command(host: str, port: int, workers: int) -> None:
    """Serve the API with gunicorn."""
    from gateway.serve import ensure_metrics_folder, serve

    ensure_metrics_folder(workers)
    recipient_secrets(policies(), current_app.config["HOME"])  # none may go unsigned
    initialize(current_app)
    record_policy_load(current_app)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    app.config["AUDIT_SEAL_AFTER_COMMIT"] = False  # each worker runs a sealer
    serve(app, host=host, port=port, workers=workers)


@click.command("purge", cls=GatewayCommand)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@with_appcontext
def purge_command(dry_run: bool) -> None:
    """Delete data past its retention, in batches; exit 1 on failure."""
    from gateway.retention import PurgeBusy, purge_now

    try:
        with database.connection_context():
            outcome = purge_now(actor=operator(), dry_run=dry_run)
    except PurgeBusy as busy:
        click.echo(f"skipped: {busy}")
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"purge run {outcome.run.id} ({'dry run' if dry_run else 'finished'})")
    for result in outcome.results:
        if result.found:
            click.echo(
                f"  {result.kind:<10} {result.category:<20} found {result.found:>8}"
                f"  {verb} {result.deleted if not dry_run else result.found:>8}"
                f"  {result.seconds:.3f}s"
            )
    click.echo(f"total {verb}: {sum(r.found if dry_run else r.deleted for r in outcome.results)}")


@click.command("scheduler", cls=GatewayCommand)
@with_appcontext
def scheduler_command() -> None:
    """Run retention purges on GATEWAY_PURGE_CRON (UTC) until stopped."""
    import logging

    from gateway.scheduler import build_scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    recipient_secrets(policies(), app.config["HOME"])  # none may go unsigned
    initialize(app)
    app.config["AUDIT_SEAL_AFTER_COMMIT"] = False  # the scheduler runs a sealer
    try:
        scheduler = build_scheduler(app)
    except ValueError as exc:
        raise click.ClickException(f"GATEWAY_PURGE_CRON: {exc}") from exc
    click.echo(f"scheduler: purges on '{app.config['PURGE_CRON']}' (UTC), delivers the outbox")

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    # SIGTERM stops scheduling; a purge under way finishes its run (and releases its lease).
    signal.signal(signal.SIGTERM, stop)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        scheduler.shutdown(wait=True)


@click.command("demo", cls=GatewayCommand)
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True, help="For the curl line.")
@click.option("--port", default=8000, type=int, show_default=True, help="For the curl line.")
def demo_command(host: str, port: int) -> None:
    """Initialise, then load the demo clients and data once; print a working curl line."""
    from gateway.demo import load_demo

    for recipient in policies().recipients.values():
        if recipient.secret_env not in os.environ:  # the demo signs with a secret of its own
            ensure_secret_file(current_app.config["HOME"], recipient.secret_env)
    recipient_secrets(policies(), current_app.config["HOME"])
    initialize(current_app)
    record_policy_load(current_app)
    load_demo(current_app, host=host, port=port)


def init_app(app: Flask) -> None:
    commands = (init_command, serve_command, demo_command, purge_command, scheduler_command)
    from gateway.api.delivery_commands import deliveries_group

    for command in (*commands, clients, policy, registry, audit_group, deliveries_group):
        app.cli.add_command(command)
