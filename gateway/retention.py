"""Retention purges: delete what is past its retention, in bounded batches, one run at a time.

    outcome = purge_expired(policies, now, actor="cli:ops", batch_size=1000, dry_run=False)
    outcome.run.status, outcome.results      # per category: found, deleted, seconds

Events and attributes go once older than their data category's retention; a consent grant goes
once past its expiry (its own, or the purpose's consent_max_age) plus the purpose's
consent_history_retention, with the grants before it, and those first: no batch lets a consent
count again. Every batch is its own transaction and the cutoffs are fixed when the run starts, so
a run killed at any point leaves only whole batches of expired rows deleted, and the next run
finishes the job. A database lease keeps a second purge (another process or host) out: every
write of a run renews it in the same transaction, so a run that lost it (paused past its expiry
while another took it over) stops with LeaseLost and writes nothing more.
"""

from __future__ import annotations

import json
import statistics
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import or_
from time import perf_counter, sleep
from typing import Any, cast

from flask import current_app
from peewee import SQL, Expression, Model, PeeweeException, fn
from playhouse.shortcuts import model_to_dict

from gateway.audit import audit, key_destroyed
from gateway.audit.chain import Action, AuditRecord, AuditUnavailable
from gateway.errors import EXIT_TEMPFAIL, Conflict, Unavailable
from gateway.observability import PURGED_ROWS
from gateway.policy.model import LegalBasis, PolicySet, Purpose
from gateway.store.db import data_version, database, write_transaction
from gateway.store.leases import acquire, holder_of, new_holder, release, renew
from gateway.store.models import Attribute, ConsentRecord, Event, KeyDestruction, PurgeRun
from gateway.store.subjects import finish_destructions

LEASE = "retention-purge"
# How long a batch's DELETE may hold the write lock, which every other writer waits for: the rows
# a batch deletes follow from it (a row costs more with more indexes, triggers or a cold cache).
BATCH_SECONDS = 0.008
FIRST_BATCH_ROWS = 1000  # until a target's cost per row is known
# A pause after each batch's commit: long enough for writers polling for the lock to take it.
BATCH_PAUSE_SECONDS = 0.0005
# Writers that committed during a pause may have others queued behind them: pause again, while
# others keep committing, up to this long in all.
YIELD_SECONDS = 0.005


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
class _Hold:
    """A purge's hold on the lease: each of its writes happens inside `write()`."""

    holder: str
    ttl: timedelta

    @contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction that first renews the lease, or raises LeaseLost having written
        nothing. In the same transaction: another purge takes the lease over only between two
        of ours, so nothing we write can follow its takeover."""
        with write_transaction():
            if not renew(LEASE, self.holder, ttl=self.ttl, now=datetime.now(UTC)):
                raise LeaseLost(
                    "the purge lost its lease to another purge and stopped; "
                    "the next run finishes the job"
                )
            yield


@dataclass
class _Pace:
    """How many rows a target's next batch deletes: at most `most`, and about as many as take
    `seconds` at the cost per row of the last batches. That cost is their median, so one batch
    slowed by something other than its rows (a stall, another process on the cores) does not
    shrink the next; a batch grows at most twofold on the one before."""

    most: int
    seconds: float
    rows: int = 0
    costs: deque[float] = field(default_factory=lambda: deque(maxlen=3))

    def __post_init__(self) -> None:
        self.rows = min(self.most, FIRST_BATCH_ROWS)

    def record(self, rows: int, seconds: float) -> None:
        self.costs.append(seconds / rows)
        fits = int(self.seconds / max(statistics.median(self.costs), 1e-9))
        self.rows = max(1, min(self.most, 2 * self.rows, fits))


def _make_way(seen: int | None) -> int | None:
    """Pause after a batch so that writers waiting for the lock take it, and again while they
    keep committing (`seen`, the database's data version, moves), up to YIELD_SECONDS; returns
    the version seen last. Each waiting writer polls on its own: while one commits, another may
    still be asleep, and would otherwise wait a whole batch more."""
    deadline = perf_counter() + YIELD_SECONDS
    while True:
        sleep(BATCH_PAUSE_SECONDS)
        version = data_version()
        if version == seen or perf_counter() >= deadline:
            return version
        seen = version


@dataclass(frozen=True)
class Target:
    """What one purge target deletes: `condition` picks the rows a batch may delete now, `due`
    (when it differs) every row the run deletes in all, some only once others are gone."""

    category: str
    kind: str  # events, attributes or consents
    model: type[Model]
    condition: Expression
    due: Expression | None = None


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
        told = any(purpose.id in r.purposes for r in policies.recipients.values())
        yield _consent_target(purpose, now, recipients=told)


def _consent_target(purpose: Purpose, now: datetime, *, recipients: bool) -> Target:
    """A purpose's ended grants, and the grants before them, in an order such that no batch (nor
    a run killed between two) makes a consent count again once it has stopped counting.

    Of a subject's records for the purpose, ordered as the engine orders them (recorded_at, then
    id), a run deletes the latest ended grant and every grant before it; withdrawals and records
    made after `now` stay. The older grants go first: while the ended grant after them stays,
    none of them is the latest record, so deleting them changes nothing. The ended grant goes
    once no grant before it is left, so the latest record becomes a withdrawal or none, and,
    where the purpose has `recipients`, once the scheduler has queued the notice of its lapse.
    """
    kept_until = now - (purpose.consent_history_retention or timedelta(0))
    this, other = cast(Any, ConsentRecord), ConsentRecord.alias()
    tied = other.recorded_at == this.recorded_at
    later = (other.recorded_at > this.recorded_at) | (tied & (other.id > this.id))
    earlier = (other.recorded_at < this.recorded_at) | (tied & (other.id < this.id))

    def exists(condition: Expression) -> Expression:
        mine = (other.subject == this.subject) & (other.purpose == purpose.id) & condition
        return cast(Expression, fn.EXISTS(other.select(other.id).where(mine)))

    grant = (this.purpose == purpose.id) & this.granted
    superseded = exists(later & _ended(other, purpose, kept_until, now))
    due = _ended(this, purpose, kept_until, now)
    if purpose.legal_basis is LegalBasis.LEGITIMATE_INTEREST:
        # Here a withdrawal is an objection and an expired grant is not: the last grant after an
        # objection stays, or deleting it would make the objection count again.
        last = ~exists(later & (other.recorded_at <= now))
        due = due & ~(last & exists(earlier & ~other.granted))
    if recipients:  # a lapse the scheduler has not looked at yet is still to be told of
        due = due & this.expiry_notice_at.is_null()
    first = ~exists(earlier & other.granted)
    return Target(
        purpose.id,
        "consents",
        ConsentRecord,
        condition=grant & (superseded | (due & first)),
        due=grant & (superseded | due),
    )


def _ended(record: Any, purpose: Purpose, kept_until: datetime, now: datetime) -> Expression:
    """Grants for `purpose` recorded by `now` and past their expiry (their own or
    consent_max_age) by `kept_until`."""
    ended = [record.expires_at <= kept_until]
    if purpose.consent_max_age is not None:
        ended.append(record.recorded_at <= kept_until - purpose.consent_max_age)
    recorded = (record.purpose == purpose.id) & record.granted & (record.recorded_at <= now)
    return recorded & reduce(or_, ended)


def _purge_target(
    target: Target,
    *,
    run: PurgeRun,
    progress: dict[str, int],
    pace: _Pace,
    hold: _Hold,
) -> CategoryResult:
    started = perf_counter()
    model = target.model
    key: Any = model._meta.primary_key  # type: ignore[attr-defined]
    due = target.condition if target.due is None else target.due
    found = model.select().where(due).count()
    deleted, name = 0, f"{target.kind}:{target.category}"
    # One statement: the database picks the batch and deletes it, no ids travel. Its SQL is
    # built once, the batch's size its last parameter: building it again per batch cost as
    # much as a third of the run.
    batch = model.select(key).where(target.condition).limit(SQL(database.param))
    delete_sql, delete_params = model.delete().where(key.in_(batch)).sql()
    seen = data_version()
    while not run.dry_run and deleted < found:
        with hold.write():
            began = perf_counter()
            removed = database.execute_sql(delete_sql, [*delete_params, pace.rows]).rowcount
            if not removed:
                break
            pace.record(removed, perf_counter() - began)
            deleted += removed
            # In the batch's transaction, so a killed run's record says what it deleted.
            progress[name] = deleted
            PurgeRun.update(progress=json.dumps(progress)).where(PurgeRun.id == run.id).execute()
        # Writers waiting for the lock (requests appending to the audit log) go first.
        seen = _make_way(seen)
    return CategoryResult(
        target.category, target.kind, found, deleted, round(perf_counter() - started, 6)
    )


def _close_unfinished(run: PurgeRun, status: str, actor: str, now: datetime) -> None:
    """Mark a run that did not finish (`interrupted` or `failed`) and audit what it deleted."""
    run.status = status
    run.save()
    record = AuditRecord(
        actor=actor,
        action=Action.PURGE,
        policy_hash=run.policy_hash,
        outcome=status,
        fields={"run": run.id, "deleted": json.loads(run.progress)},
    )
    audit(record, now)


def _close_interrupted(actor: str, now: datetime) -> None:
    """We hold the lease, so a run still marked running was cut off: record what it did."""
    for run in PurgeRun.select().where(PurgeRun.status == "running"):
        _close_unfinished(run, "interrupted", actor, now)


def _start_run(hold: _Hold, policies: PolicySet, dry_run: bool, actor: str) -> PurgeRun:
    with hold.write():
        _close_interrupted(actor, datetime.now(UTC))
        return PurgeRun.create(
            # The clock, not `now`: waiting for the lease may have outlasted the previous run.
            started_at=datetime.now(UTC),
            status="running",
            dry_run=dry_run,
            holder=hold.holder,
            policy_hash=policies.hash,
        )


def _finish_run(run: PurgeRun, results: list[CategoryResult], actor: str, hold: _Hold) -> None:
    finished = datetime.now(UTC)
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
    with hold.write():
        run.status, run.finished_at = "finished", finished
        run.report = json.dumps([asdict(r) for r in results])
        run.save()
        audit(record, finished)


def _fail_run(run: PurgeRun, hold: _Hold, actor: str) -> None:
    """Mark the run failed and audit what it deleted, while the lease is still ours. When that
    cannot be written (the audit log or the database is down, the lease was lost), the run is
    left `running`, and the purge that holds the lease next closes it as interrupted, audited."""
    with suppress(LeaseLost, AuditUnavailable, PeeweeException), hold.write():
        stored = PurgeRun.get_by_id(run.id)  # with the progress its batches wrote
        stored.finished_at = datetime.now(UTC)
        _close_unfinished(stored, "failed", actor, stored.finished_at)


def _finish_key_destructions(actor: str, policy_hash: str) -> None:
    """Destroy the keys of erasures cut short after their ordering entry was committed, each
    confirmed by an entry, so no order waits longer than until the next purge."""

    def confirm(order: KeyDestruction) -> None:
        audit(key_destroyed(order, actor, policy_hash), datetime.now(UTC))

    finish_destructions(confirm)


def purge_expired(
    policies: PolicySet,
    now: datetime,
    *,
    actor: str,
    batch_size: int = 10_000,
    batch_seconds: float = BATCH_SECONDS,
    dry_run: bool = False,
    lease_ttl: timedelta = timedelta(minutes=2),
) -> PurgeOutcome:
    """Run one purge (or count what it would delete); raise PurgeBusy if another is running,
    LeaseLost if another took the lease over meanwhile (this one then stops, writing nothing).
    A batch deletes at most `batch_size` rows, fewer if they take longer than `batch_seconds`."""
    hold = _Hold(new_holder(), lease_ttl)
    if not acquire(LEASE, hold.holder, ttl=lease_ttl, now=datetime.now(UTC)):
        raise PurgeBusy(holder_of(LEASE))
    run: PurgeRun | None = None
    try:
        if not dry_run:
            _finish_key_destructions(actor, policies.hash)
        run = _start_run(hold, policies, dry_run, actor)
        progress: dict[str, int] = {}
        results = [
            _purge_target(
                t, run=run, progress=progress, pace=_Pace(batch_size, batch_seconds), hold=hold
            )
            for t in expired_targets(policies, now)
        ]
        _finish_run(run, results, actor, hold)
        for result in results:
            PURGED_ROWS.labels(result.kind, result.category).inc(result.deleted)
        return PurgeOutcome(run, results)
    except BaseException:
        if run is not None:
            _fail_run(run, hold, actor)
        raise
    finally:
        release(LEASE, hold.holder)


def run_report(run: PurgeRun) -> dict[str, Any]:
    """A stored run as plain data (the lease holder is internal)."""
    report: dict[str, Any] = model_to_dict(
        run, exclude=[PurgeRun.holder, PurgeRun.report, PurgeRun.progress]
    )
    report["categories"] = json.loads(run.report)
    return report


def recent_runs(limit: int) -> list[dict[str, Any]]:
    """The last `limit` runs, newest first, each with its per-category report."""
    runs = PurgeRun.select().order_by(PurgeRun.id.desc()).limit(limit)
    return [run_report(run) for run in runs]


def purge_now(*, actor: str, dry_run: bool = False) -> PurgeOutcome:
    """One purge with the running app's policies and GATEWAY_PURGE_* settings."""
    from gateway import policies

    config = current_app.config
    return purge_expired(
        policies(),
        datetime.now(UTC),
        actor=actor,
        batch_size=int(config["PURGE_BATCH_SIZE"]),
        batch_seconds=float(config["PURGE_BATCH_SECONDS"]),
        dry_run=dry_run,
        lease_ttl=timedelta(seconds=int(config["PURGE_LEASE_SECONDS"])),
    )
