"""The purge scheduler: its own process, never inside the web workers.

    gateway scheduler          # runs purges on GATEWAY_PURGE_CRON (default daily 03:00 UTC)
                               # and delivers the outbox every GATEWAY_DELIVERY_SECONDS

Jobs coalesce (a backlog of missed runs becomes one), never overlap in this process, and run
late within the misfire grace time. Across processes and hosts the purge's database lease keeps
a second run out, so starting two schedulers does no harm.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask
from peewee import PeeweeException

from gateway.audit.sealer import Sealer
from gateway.delivery import Courier
from gateway.errors import GatewayError
from gateway.retention import PurgeBusy, purge_now
from gateway.store.db import database, unavailable

log = logging.getLogger("gateway.scheduler")
JOB_ID = "retention-purge"
SEAL_JOB_ID = "audit-seal"
DELIVERY_JOB_ID = "outbox-delivery"
FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")


def cron_trigger(expression: str) -> CronTrigger:
    """A standard five-field cron line, or six fields with seconds first; always UTC."""
    parts = expression.split()
    if len(parts) in (5, 6) and any(c.isdigit() for c in parts[-1]):
        # cron counts weekdays from Sunday = 0, APScheduler 3 from Monday = 0: "0" would be Monday.
        raise ValueError(f"name the weekdays (mon, tue, ... sun), not numbers: {expression!r}")
    if len(parts) == 5:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    if len(parts) == 6:
        return CronTrigger(**dict(zip(FIELDS, parts, strict=True)), timezone=UTC)
    raise ValueError(f"not a cron expression (5 or 6 fields): {expression!r}")


def scheduled_purge(app: Flask) -> dict[str, Any]:
    """One scheduled run, with its own app context and database connection."""
    with app.app_context(), database.connection_context():
        try:
            outcome = purge_now(actor="scheduler")
        except PurgeBusy as busy:
            log.info("purge skipped: %s", busy)
            return {"status": "skipped"}
        except (GatewayError, PeeweeException) as caught:
            error = unavailable(caught) if isinstance(caught, PeeweeException) else caught
            # one line, and the scheduler goes on: the next run finishes the job
            log.error("purge failed: %s: %s", error.code, error)
            return {"status": "failed", "code": error.code}
        deleted = sum(r.deleted for r in outcome.results)
        log.info("purge run %s finished: %s rows deleted", outcome.run.id, deleted)
        return {"status": "finished", "run": outcome.run.id, "deleted": deleted}


def build_scheduler(app: Flask) -> BlockingScheduler:
    scheduler = BlockingScheduler(
        timezone=UTC,
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": int(app.config["PURGE_MISFIRE_GRACE_SECONDS"]),
        },
    )
    scheduler.add_job(
        Sealer(app).tick,
        trigger=IntervalTrigger(seconds=float(app.config["AUDIT_HEAD_SECONDS"])),
        id=SEAL_JOB_ID,
        name="audit head seal",
        replace_existing=True,
    )
    scheduler.add_job(
        Courier(app).tick,
        trigger=IntervalTrigger(seconds=float(app.config["DELIVERY_SECONDS"])),
        id=DELIVERY_JOB_ID,
        name="outbox delivery",
        replace_existing=True,
    )
    scheduler.add_job(
        scheduled_purge,
        trigger=cron_trigger(app.config["PURGE_CRON"]),
        args=[app],
        id=JOB_ID,
        name="retention purge",
        replace_existing=True,
    )
    return scheduler
