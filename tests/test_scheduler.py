"""The purge scheduler: cron lines, the job's settings, one guarded run, and two real schedulers.

The last test starts two `gateway scheduler` processes on one database (SQLite file or PostgreSQL),
purging every second over enough expired rows that one run outlasts a tick, and reads the purge_run
table afterwards: the runs' intervals never overlap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask

from gateway import keyring
from gateway.retention import LEASE
from gateway.scheduler import (
    DELIVERY_JOB_ID,
    JOB_ID,
    build_scheduler,
    cron_trigger,
    scheduled_purge,
)
from gateway.store.db import database, write_transaction
from gateway.store.leases import acquire, holder_of, new_holder
from gateway.store.models import AuditEntry, PurgeRun, Subject
from gateway.store.subjects import ensure_subject
from tests.api.test_personalize import break_audit, repair_audit
from tests.conftest import GATEWAY, gateway_environment, stop_all, verify_audit
from tests.stores import count_rows, insert_events, raw

MONDAY = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EXPIRED_AGE = timedelta(days=200)  # browsing keeps P90D
FRESH_KINDS = (
    ("view", timedelta(days=1)),
    ("click", timedelta(days=80)),
    ("purchase", timedelta(days=300)),
)


# -- cron lines --------------------------------------------------------------------------------

NEXT_FIRE = {
    "default_daily_at_03_utc": ("0 3 * * *", MONDAY, datetime(2026, 6, 2, 3, 0, tzinfo=UTC)),
    "one_second_before_03": (
        "0 3 * * *",
        datetime(2026, 6, 1, 2, 59, 59, tzinfo=UTC),
        datetime(2026, 6, 1, 3, 0, tzinfo=UTC),
    ),
    "asked_from_utc_plus_2_still_utc": (
        "0 3 * * *",
        datetime(2026, 6, 1, 4, 30, tzinfo=timezone(timedelta(hours=2))),  # 02:30 UTC
        datetime(2026, 6, 1, 3, 0, tzinfo=UTC),
    ),
    "every_15_minutes": (
        "*/15 * * * *",
        datetime(2026, 6, 1, 12, 7, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 15, tzinfo=UTC),
    ),
    "weekday_by_name": ("30 2 * * sun", MONDAY, datetime(2026, 6, 7, 2, 30, tzinfo=UTC)),
    "six_fields_every_second": (
        "*/1 * * * * *",
        datetime(2026, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 1, tzinfo=UTC),
    ),
    "six_fields_seconds_first": (
        "30 15 3 * * *",
        MONDAY,
        datetime(2026, 6, 2, 3, 15, 30, tzinfo=UTC),
    ),
    "six_fields_weekday_by_name": (
        "0 0 3 * * sat",
        MONDAY,
        datetime(2026, 6, 6, 3, 0, tzinfo=UTC),
    ),
}


@pytest.mark.parametrize(
    ("expression", "now", "expected"), list(NEXT_FIRE.values()), ids=list(NEXT_FIRE)
)
def test_cron_trigger_fires_next_at_the_utc_instant(
    expression: str, now: datetime, expected: datetime
) -> None:
    fire = cron_trigger(expression).get_next_fire_time(None, now)
    assert fire == expected
    assert fire is not None and fire.utcoffset() == timedelta(0)


SHAPE, RANGE, WEEKDAY = "5 or 6 fields", "higher than the maximum", "name the weekdays"
REJECTED = {
    "empty": ("", SHAPE),
    "four_fields": ("0 3 * *", SHAPE),
    "seven_fields": ("0 0 3 * * * 2026", SHAPE),
    "words": ("daily at three", SHAPE),
    "minute_out_of_range": ("61 3 * * *", RANGE),
    "hour_out_of_range": ("0 24 * * *", RANGE),
    "second_out_of_range": ("60 0 3 * * *", RANGE),
    "unknown_weekday_name": ("0 3 * * someday", "Invalid weekday name"),
    # cron counts weekdays from Sunday = 0, APScheduler 3 from Monday = 0: a number is ambiguous
    "numeric_weekday": ("0 3 * * 0", WEEKDAY),
    "numeric_weekday_range": ("0 3 * * 1-5", WEEKDAY),
    "numeric_weekday_seven": ("0 3 * * 7", WEEKDAY),
    "six_fields_numeric_weekday": ("0 0 3 * * 0", WEEKDAY),
}


@pytest.mark.parametrize(("expression", "problem"), list(REJECTED.values()), ids=list(REJECTED))
def test_cron_trigger_rejects_other_shapes(expression: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        cron_trigger(expression)


# -- the scheduler's one job -------------------------------------------------------------------

SETTINGS = {
    "defaults": ({}, {}, "0 3 * * *", 3600),
    "environment": (
        {"GATEWAY_PURGE_CRON": "15 4 * * mon-fri", "GATEWAY_PURGE_MISFIRE_GRACE_SECONDS": "90"},
        {},
        "15 4 * * mon-fri",
        90,
    ),
    "overrides": (
        {},
        {"PURGE_CRON": "*/1 * * * * *", "PURGE_MISFIRE_GRACE_SECONDS": 7},
        "*/1 * * * * *",
        7,
    ),
}


@pytest.mark.parametrize(
    ("environment", "overrides", "cron", "grace"), list(SETTINGS.values()), ids=list(SETTINGS)
)
def test_build_scheduler_registers_one_guarded_utc_job(
    make_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    overrides: dict[str, Any],
    cron: str,
    grace: int,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = make_app(**overrides)

    scheduler = build_scheduler(app)

    assert scheduler.state == STATE_STOPPED
    assert scheduler.timezone == UTC
    assert sorted(job.id for job in scheduler.get_jobs()) == ["audit-seal", DELIVERY_JOB_ID, JOB_ID]
    delivery = scheduler.get_job(DELIVERY_JOB_ID)
    assert isinstance(delivery.trigger, IntervalTrigger)
    assert delivery.trigger.interval == timedelta(seconds=1)
    job = scheduler.get_job(JOB_ID)
    assert job.id == JOB_ID == "retention-purge"
    # Until the scheduler starts, a job keeps only what was given to add_job; the scheduler
    # fills in the rest from its job defaults then, exactly like this.
    defaults = scheduler._job_defaults
    effective = {
        name: getattr(job, name, defaults[name])
        for name in ("coalesce", "max_instances", "misfire_grace_time")
    }
    assert effective == {"coalesce": True, "max_instances": 1, "misfire_grace_time": grace}
    assert isinstance(job.trigger, CronTrigger)
    assert str(job.trigger) == str(cron_trigger(cron))
    assert job.trigger.get_next_fire_time(None, MONDAY) == cron_trigger(cron).get_next_fire_time(
        None, MONDAY
    )
    assert (job.func, job.args) == (scheduled_purge, (app,))


# -- one scheduled run -------------------------------------------------------------------------


def event_row(subject_id: int, kind: str, item_id: str, at: datetime) -> tuple[Any, ...]:
    database_id = "crm" if kind == "purchase" else "shop_events"
    return (subject_id, database_id, kind, item_id, "shoes", False, at, at)


def seed(app: Flask, expired: int, fresh: int) -> None:
    """`expired` browsing events 200 days old and `fresh` events well inside their retention."""
    now = datetime.now(UTC)
    with app.app_context(), database.connection_context(), write_transaction():
        ring = keyring()
        subject = ensure_subject(ring, ring.pseudonym("scheduled-subject"), now).id
        rows = [
            event_row(subject, "view", f"expired-{i}", now - EXPIRED_AGE) for i in range(expired)
        ]
        for i in range(fresh):
            kind, age = FRESH_KINDS[i % len(FRESH_KINDS)]
            rows.append(event_row(subject, kind, f"fresh-{i}", now - age))
        insert_events(rows)


def expired_left(app: Flask) -> int:
    return count_rows(app.config, "SELECT count(*) FROM event WHERE item_id LIKE ?", ["expired-%"])


def fresh_ids(app: Flask) -> list[str]:
    with raw(app.config) as db:
        rows = db.execute("SELECT item_id FROM event WHERE item_id LIKE ?", ["fresh-%"]).fetchall()
    return sorted(row[0] for row in rows)


def test_a_scheduled_run_purges_and_reports_finished(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    seed(app, expired=30, fresh=6)
    caplog.set_level(logging.INFO, logger="gateway.scheduler")

    outcome = scheduled_purge(app)

    assert outcome["status"] == "finished"
    assert outcome["deleted"] == 30
    assert expired_left(app) == 0
    assert fresh_ids(app) == sorted(f"fresh-{i}" for i in range(6))
    with app.app_context(), database.connection_context():
        run = PurgeRun.get_by_id(outcome["run"])
        entry = AuditEntry.select().order_by(AuditEntry.seq.desc()).first()
        lease = holder_of(LEASE)
    assert (run.status, run.dry_run) == ("finished", False)
    assert run.holder.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    assert (entry.action, entry.actor, entry.outcome) == ("purge", "scheduler", "finished")
    assert json.loads(entry.fields)["run"] == run.id
    assert lease is None
    assert f"purge run {run.id} finished: 30 rows deleted" in caplog.text
    assert verify_audit(app).ok


def dead_local_holder() -> str:
    """A holder naming a process on this host that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return f"{socket.gethostname()}:{process.pid}:deadbeef"


LEASES = {
    # name: (holder, lease taken this long ago, for this long, expected status)
    "live_process_here": (new_holder, timedelta(0), timedelta(minutes=10), "skipped"),
    "other_host_unexpired": (
        lambda: "otherhost:1:abcd1234",
        timedelta(0),
        timedelta(minutes=10),
        "skipped",
    ),
    "other_host_expired": (
        lambda: "otherhost:1:abcd1234",
        timedelta(minutes=5),
        timedelta(minutes=2),
        "finished",
    ),
    "dead_process_here": (dead_local_holder, timedelta(0), timedelta(minutes=10), "finished"),
}


# An event row the database refuses to delete, as a constraint or a failing disk would.
POISON = {
    "sqlite": [
        "CREATE TRIGGER poison BEFORE DELETE ON event WHEN OLD.item_id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poison'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF OLD.item_id = 'poison' THEN RAISE EXCEPTION 'poison'; END IF; RETURN OLD; END $$",
        "CREATE TRIGGER poison BEFORE DELETE ON event FOR EACH ROW EXECUTE FUNCTION poison()",
    ],
}


def test_a_scheduled_run_that_fails_is_audited_with_what_it_deleted(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(PURGE_BATCH_SIZE=10)
    seed(app, expired=30, fresh=6)
    with app.app_context(), database.connection_context(), write_transaction():
        subject = Subject.select().first().id
        insert_events([event_row(subject, "view", "poison", datetime.now(UTC) - EXPIRED_AGE)])
    with raw(app.config) as db:
        for sql in POISON["postgresql" if db.postgres else "sqlite"]:
            db.execute(sql)
    caplog.set_level(logging.INFO, logger="gateway.scheduler")

    outcome = scheduled_purge(app)

    assert outcome == {"status": "failed", "code": "database_unavailable"}
    assert "purge failed: database_unavailable:" in caplog.text
    with app.app_context(), database.connection_context():
        run = PurgeRun.select().first()
        entry = AuditEntry.select().where(AuditEntry.action == "purge").first()
    # three whole batches went before the fourth failed, and the log says so
    assert expired_left(app) == 0
    assert run.status == "failed" and run.finished_at is not None
    assert (entry.outcome, json.loads(entry.fields)) == (
        "failed",
        {"run": run.id, "deleted": {"events:browsing": 30}},
    )
    assert verify_audit(app).ok


def test_a_scheduled_run_that_cannot_audit_fails_in_one_line_and_the_next_run_audits_it(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    seed(app, expired=30, fresh=6)
    caplog.set_level(logging.INFO, logger="gateway.scheduler")
    break_audit(app)

    failed = scheduled_purge(app)

    assert failed == {"status": "failed", "code": "audit_unavailable"}
    assert "purge failed: audit_unavailable:" in caplog.text
    assert "Traceback" not in caplog.text
    # its batches were deleted, but no entry says so yet: the run stays open for the next one
    assert expired_left(app) == 0
    with app.app_context(), database.connection_context():
        first = PurgeRun.select().order_by(PurgeRun.id).first()
        assert (first.status, json.loads(first.progress)) == ("running", {"events:browsing": 30})

    repair_audit(app)
    again = scheduled_purge(app)

    assert again["status"] == "finished"
    with app.app_context(), database.connection_context():
        first = PurgeRun.get_by_id(first.id)
        closing = AuditEntry.select().where(AuditEntry.action == "purge").first()
    assert first.status == "interrupted"
    assert (closing.outcome, json.loads(closing.fields)) == (
        "interrupted",
        {"run": first.id, "deleted": {"events:browsing": 30}},
    )
    assert verify_audit(app).ok


@pytest.mark.parametrize(
    ("holder_of_lease", "taken_ago", "ttl", "status"), list(LEASES.values()), ids=list(LEASES)
)
def test_a_scheduled_run_skips_only_while_a_live_holder_has_the_lease(
    app: Flask,
    caplog: pytest.LogCaptureFixture,
    holder_of_lease: Any,
    taken_ago: timedelta,
    ttl: timedelta,
    status: str,
) -> None:
    seed(app, expired=12, fresh=3)
    holder = holder_of_lease()
    with app.app_context(), database.connection_context():
        assert acquire(LEASE, holder, ttl=ttl, now=datetime.now(UTC) - taken_ago)
    caplog.set_level(logging.INFO, logger="gateway.scheduler")

    outcome = scheduled_purge(app)

    assert outcome["status"] == status
    with app.app_context(), database.connection_context():
        runs = list(PurgeRun.select())
        purges = AuditEntry.select().where(AuditEntry.action == "purge").count()
        lease = holder_of(LEASE)
    assert fresh_ids(app) == ["fresh-0", "fresh-1", "fresh-2"]
    if status == "skipped":
        assert outcome == {"status": "skipped"}
        assert (runs, purges, lease) == ([], 0, holder)
        assert expired_left(app) == 12
        assert f"purge skipped: another purge is running ({holder})" in caplog.text
    else:
        assert [(r.id, r.status) for r in runs] == [(outcome["run"], "finished")]
        assert (outcome["deleted"], purges, lease) == (12, 1, None)
        assert expired_left(app) == 0


# -- two scheduler processes on one database ---------------------------------------------------

EXPIRED = 40_000
FRESH = 60
BATCH = 20  # 2,000 delete transactions: the first run outlasts the one-second tick
# MAX_SECONDS only bounds the wait (it ends once the runs settle): generous, since a loaded
# machine or a shared PostgreSQL server can slow the first run several times over.
MIN_SECONDS, MAX_SECONDS = 6.0, 60.0
ACTIVITY = re.compile(r"purge (run (\d+) finished|skipped)")


@dataclass(frozen=True)
class Run:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    holder: str
    deleted: int

    @property
    def pid(self) -> int:
        return int(self.holder.split(":")[1])


def stored_time(value: str | datetime | None) -> datetime | None:
    """A stored naive UTC time: text on SQLite, a timestamp on PostgreSQL."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert moment.tzinfo is None, value
    return moment.replace(tzinfo=UTC)


def purge_runs(app: Flask) -> list[Run]:
    sql = "SELECT id, started_at, finished_at, status, holder, report, dry_run FROM purge_run"
    with raw(app.config) as db:
        rows = db.execute(sql + " ORDER BY started_at, id").fetchall()
    runs = []
    for run_id, started, finished, status, holder, report, dry_run in rows:
        assert not dry_run
        deleted = sum(result["deleted"] for result in json.loads(report))
        started_at = stored_time(started)
        assert started_at is not None
        runs.append(Run(run_id, started_at, stored_time(finished), status, holder, deleted))
    return runs


def scheduler_environment(app: Flask) -> dict[str, str]:
    environment = gateway_environment(app, PURGE_CRON="*/1 * * * * *", PURGE_BATCH_SIZE=str(BATCH))
    return {**environment, "PYTHONUNBUFFERED": "1"}


def start_scheduler(app: Flask, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(GATEWAY), "scheduler"],
            env=scheduler_environment(app),
            cwd=log.parent,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def activity(log: Path) -> list[re.Match[str]]:
    return list(ACTIVITY.finditer(log.read_text(encoding="utf-8", errors="replace")))


def settled(app: Flask, logs: list[Path]) -> bool:
    finished = [run for run in purge_runs(app) if run.status == "finished"]
    return len(finished) >= 2 and expired_left(app) == 0 and all(activity(log) for log in logs)


def test_two_scheduler_processes_never_purge_at_the_same_time(app: Flask, tmp_path: Path) -> None:
    seed(app, expired=EXPIRED, fresh=FRESH)
    logs = [tmp_path / "scheduler-a.log", tmp_path / "scheduler-b.log"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes = [start_scheduler(app, log) for log in logs]
        began = time.monotonic()
        while time.monotonic() - began < MAX_SECONDS:
            assert all(p.poll() is None for p in processes), [log.read_text() for log in logs]
            if time.monotonic() - began >= MIN_SECONDS and settled(app, logs):
                break
            time.sleep(0.25)
    finally:
        stop_all(processes, timeout=5)

    runs = purge_runs(app)
    finished = [run for run in runs if run.status == "finished"]
    assert len(finished) >= 2, runs
    # Only a run cut off by the SIGTERM may lack an end, and no run may start after it began.
    cut_off = [run for run in runs if run.finished_at is None]
    assert all(run.status == "running" for run in cut_off), runs
    assert cut_off in ([], runs[-1:]), runs
    assert {run.status for run in runs} <= {"finished", "running"}, runs
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert earlier.finished_at is not None
        assert earlier.finished_at <= later.started_at, (earlier, later)
    assert {run.pid for run in runs} <= {p.pid for p in processes}
    # The first run really outlasted a tick, so the other scheduler fired while it ran.
    assert finished[0].deleted == EXPIRED
    assert finished[0].finished_at is not None
    assert finished[0].finished_at - finished[0].started_at > timedelta(seconds=1)
    assert sum(run.deleted for run in finished) == EXPIRED
    assert expired_left(app) == 0
    assert fresh_ids(app) == sorted(f"fresh-{i}" for i in range(FRESH))

    found = [activity(log) for log in logs]
    assert all(found), [log.read_text() for log in logs]
    assert any(m.group(0) == "purge skipped" for matches in found for m in matches)
    for process, matches in zip(processes, found, strict=True):
        logged = {int(m.group(2)) for m in matches if m.group(2)}
        assert logged <= {run.id for run in finished if run.pid == process.pid}

    with app.app_context(), database.connection_context():
        entries = AuditEntry.select().where(AuditEntry.action == "purge")
        audited = sorted(json.loads(entry.fields)["run"] for entry in entries)
    assert audited == sorted(run.id for run in finished)
    assert verify_audit(app).ok


@pytest.mark.parametrize("expression", ["nope", "0 3 * * 0", "61 * * * *"])
def test_the_scheduler_refuses_a_bad_cron_line_naming_the_setting(
    make_app: Any, expression: str
) -> None:
    app = make_app(PURGE_CRON=expression)

    result = app.test_cli_runner().invoke(args=["scheduler"])

    assert result.exit_code == 1
    assert "GATEWAY_PURGE_CRON" in result.output
    assert "Traceback" not in result.output
