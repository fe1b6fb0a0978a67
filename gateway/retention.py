"""Retention purges: delete what is past its retention, in bounded batches, one run at a time.

    outcome = purge_expired(policies, now, actor="cli:ops", batch_size=1000, dry_run=False)
    outcome.run.status, outcome.results      # per category: found, deleted, seconds

Events and attributes go once older than their data category's retention; a consent grant goes
once past its expiry (its own, or the purpose's consent_max_age) plus the purpose's
consent_history_retention. Every batch is its own transaction and the cutoffs are fixed when the
run starts, so a run killed at any point leaves only whole batches of expired rows deleted, and the
next run finishes the job. A database lease keeps a second purge (another process or host) out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import or_
from time import perf_counter, sleep
from typing import Any, cast

from flask import current_app
from peewee import Expression, Model, fn
from playhouse.shortcuts import model_to_dict

from gateway.audit import audit
from gateway.audit.chain import Action, AuditRecord
from gateway.errors import EXIT_TEMPFAIL, Conflict, Unavailable
from gateway.observability import PURGED_ROWS
from gateway.policy.model import PolicySet, Purpose
from gateway.store.db import database, write_transaction
from gateway.store.leases import acquire, holder_of, new_holder, release, renew
from gateway.store.models import Attribute, ConsentRecord, Event, PurgeRun

LEASE = "retention-purge"
# A pause after each batch's commit: long enough for writers polling for the lock to take it.
BATCH_PAUSE_SECONDS = 0.0005


class PurgeBusy(Conflict):
    """Another purge holds the lease."""

    code, exit_code = "purge_running", EXIT_TEMPFAIL
    client_message = "Another purge is running."

    def __init__(self, holder: str | None) -> None:
        super().__init__(f"another purge is running ({holder})")
        self.holder = holder


class LeaseLost(Unavailable):
    """The lease expired under a running purge; it stops before deleting any more."""

    code = "purge_interrupted"
    client_message = "The purge lost its lease and stopped; the next run finishes the job."


@dataclass(frozen=True)
class Target:
    category: str
    kind: str  # events, attributes or consents
    model: type[Model]
    condition: Expression


@dataclass(frozen=True)
class CategoryResult:
    category: str
    kind: str
    found: int
    deleted: int
    seconds: float


@dataclass(frozen=True)
class PurgeOutcome:
    run: PurgeRun
    results: list[CategoryResult]


def expired_targets(policies: PolicySet, now: datetime) -> Iterator[Target]:
    """Each category's (and each purpose's consent records') expired rows, as conditions."""
    for category in policies.categories.values():
        cutoff = now - category.retention
        if category.events:
            expired = Event.type.in_(category.events) & (Event.at <= cutoff)
            yield Target(category.id, "events", Event, expired)
        if category.attributes:
            stale = Attribute.name.in_(category.attributes) & (Attribute.updated_at <= cutoff)
            yield Target(category.id, "attributes", Attribute, stale)
    for purpose in policies.purposes.values():
        kept_until = now - (purpose.consent_history_retention or timedelta(0))
        newer, this = ConsentRecord.alias(), cast(Any, ConsentRecord)
        later = (newer.recorded_at > this.recorded_at) | (
            (newer.recorded_at == this.recorded_at) & (newer.id > this.id)
        )
        # An older grant goes with a newer one that ended: left behind, it would count again.
        ended_later = (newer.subject == this.subject) & later & _ended(newer, purpose, kept_until)
        superseded = fn.EXISTS(newer.select(newer.id).where(ended_later))
        mine = (ConsentRecord.purpose == purpose.id) & ConsentRecord.granted
        expired = _ended(ConsentRecord, purpose, kept_until) | (mine & superseded)
        yield Target(purpose.id, "consents", ConsentRecord, expired)


def _ended(record: Any, purpose: Purpose, kept_until: datetime) -> Expression:
    """Grants for `purpose` past their expiry (their own or consent_max_age) by `kept_until`."""
    ended = [record.expires_at <= kept_until]
    if purpose.consent_max_age is not None:
        ended.append(record.recorded_at <= kept_until - purpose.consent_max_age)
    return (record.purpose == purpose.id) & record.granted & reduce(or_, ended)


def _purge_target(
    target: Target,
    *,
    run: PurgeRun,
    progress: dict[str, int],
    batch_size: int,
    keep_lease: Callable[[], None],
) -> CategoryResult:
    started = perf_counter()
    model = target.model
    key: Any = model._meta.primary_key  # type: ignore[attr-defined]
    found = model.select().where(target.condition).count()
    deleted, name = 0, f"{target.kind}:{target.category}"
    # One statement: the database picks the batch and deletes it, no ids travel. Its SQL is
    # built once: building it again per batch cost as much as a third of the run.
    batch = model.select(key).where(target.condition).limit(batch_size)
    delete_sql, delete_params = model.delete().where(key.in_(batch)).sql()
    while not run.dry_run and deleted < found:
        with write_transaction():
            keep_lease()
            removed = database.execute_sql(delete_sql, delete_params).rowcount
            if not removed:
                break
            deleted += removed
            # In the batch's transaction, so a killed run's record says what it deleted.
            progress[name] = deleted
            PurgeRun.update(progress=json.dumps(progress)).where(PurgeRun.id == run.id).execute()
        # Writers waiting for the lock (requests appending to the audit log) go first.
        sleep(BATCH_PAUSE_SECONDS)
    return CategoryResult(
        target.category, target.kind, found, deleted, round(perf_counter() - started, 6)
    )


def _close_interrupted(actor: str, now: datetime) -> None:
    """We hold the lease, so a run still marked running was cut off: record what it did."""
    for run in PurgeRun.select().where(PurgeRun.status == "running"):
        run.status = "interrupted"
        record = AuditRecord(
            actor=actor,
            action=Action.PURGE,
            policy_hash=run.policy_hash,
            outcome="interrupted",
            fields={"run": run.id, "deleted": json.loads(run.progress)},
        )
        run.save()
        audit(record, now)


def _start_run(holder: str, policies: PolicySet, dry_run: bool, actor: str) -> PurgeRun:
    with write_transaction():
        _close_interrupted(actor, datetime.now(UTC))
        return PurgeRun.create(
            # The clock, not `now`: waiting for the lease may have outlasted the previous run.
            started_at=datetime.now(UTC),
            status="running",
            dry_run=dry_run,
            holder=holder,
            policy_hash=policies.hash,
        )


def _finish_run(run: PurgeRun, results: list[CategoryResult], actor: str) -> None:
    finished = datetime.now(UTC)
    run.status, run.finished_at = "finished", finished
    run.report = json.dumps([asdict(r) for r in results])
    record = AuditRecord(
        actor=actor,
        action=Action.PURGE,
        policy_hash=run.policy_hash,
        outcome="dry_run" if run.dry_run else "finished",
        fields={
            "run": run.id,
            "found": {f"{r.kind}:{r.category}": r.found for r in results if r.found},
            "deleted": {f"{r.kind}:{r.category}": r.deleted for r in results if r.deleted},
        },
    )
    with write_transaction():
        run.save()
        audit(record, finished)


def purge_expired(
    policies: PolicySet,
    now: datetime,
    *,
    actor: str,
    batch_size: int = 1000,
    dry_run: bool = False,
    lease_ttl: timedelta = timedelta(minutes=2),
) -> PurgeOutcome:
    """Run one purge (or count what it would delete); raise PurgeBusy if another is running."""
    holder = new_holder()
    if not acquire(LEASE, holder, ttl=lease_ttl, now=datetime.now(UTC)):
        raise PurgeBusy(holder_of(LEASE))

    def keep_lease() -> None:
        if not renew(LEASE, holder, ttl=lease_ttl, now=datetime.now(UTC)):
            raise LeaseLost("the purge lease expired; stopping")

    run: PurgeRun | None = None
    try:
        run = _start_run(holder, policies, dry_run, actor)
        progress: dict[str, int] = {}
        results = [
            _purge_target(
                t, run=run, progress=progress, batch_size=batch_size, keep_lease=keep_lease
            )
            for t in expired_targets(policies, now)
        ]
        _finish_run(run, results, actor)
        for result in results:
            PURGED_ROWS.labels(result.kind, result.category).inc(result.deleted)
        return PurgeOutcome(run, results)
    except BaseException:
        if run is not None:
            PurgeRun.update(status="failed", finished_at=datetime.now(UTC)).where(
                PurgeRun.id == run.id
            ).execute()
        raise
    finally:
        release(LEASE, holder)


def run_report(run: PurgeRun) -> dict[str, Any]:
    """A stored run as plain data (the lease holder is internal)."""
    report: dict[str, Any] = model_to_dict(
        run, exclude=[PurgeRun.holder, PurgeRun.report, PurgeRun.progress]
    )
    report["categories"] = json.loads(run.report)
    return report


def purge_now(*, actor: str, dry_run: bool = False) -> PurgeOutcome:
    """One purge with the running app's policies and GATEWAY_PURGE_* settings."""
    from gateway import policies

    config = current_app.config
    return purge_expired(
        policies(),
        datetime.now(UTC),
        actor=actor,
        batch_size=int(config["PURGE_BATCH_SIZE"]),
        dry_run=dry_run,
        lease_ttl=timedelta(seconds=int(config["PURGE_LEASE_SECONDS"])),
    )
