"""Prometheus metrics and JSON request logs that carry no personal data.

    GET /metrics        # requests, decisions by purpose and outcome, audit append latency, purges,
                        # and the outbox: messages by recipient and status, queue depth, oldest

Under several gunicorn workers /metrics adds up every worker's numbers (prometheus-client's
multiprocess mode, in the folder PROMETHEUS_MULTIPROC_DIR that `gateway serve` sets up).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import structlog
from flask import Flask, Response, g, request
from peewee import PeeweeException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.store.outbox import outbox_stats

REQUESTS = Counter(
    "gateway_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram("gateway_request_seconds", "HTTP request duration", ["route"])
DECISIONS = Counter("gateway_decisions_total", "Personalization decisions", ["purpose", "outcome"])
AUDIT_APPEND_SECONDS = Histogram(
    "gateway_audit_append_seconds",
    "Time to append one audit entry (and its checkpoint)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PURGED_ROWS = Counter(
    "gateway_purge_rows_deleted_total", "Rows deleted by retention purges", ["kind", "category"]
)

log = structlog.get_logger("gateway.http")


def configure_logging() -> None:
    """JSON lines on stderr, UTC timestamps; safe to call more than once."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        # resolved at each call, so the current stderr is used (a test may capture it)
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )


def _route() -> str:
    # The URL rule, never the path: paths hold subject ids.
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _start() -> None:
    g.started = perf_counter()


def _finish(response: Response) -> Response:
    seconds = perf_counter() - g.get("started", perf_counter())
    route = _route()
    REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)
    client = g.get("client")
    log.info(
        "request",
        request_id=g.get("request_id"),
        method=request.method,
        route=route,
        status=response.status_code,
        ms=round(seconds * 1000, 3),
        client=client.name if client is not None else None,
    )
    return response


class OutboxCollector(Collector):
    """The outbox as the database holds it at the scrape, whichever process delivers it."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts, depth, oldest = outbox_stats(datetime.now(UTC))
        except PeeweeException:
            log.warning("metrics: the outbox could not be read")
            return
        held = GaugeMetricFamily(
            "gateway_deliveries",
            "Messages held, by recipient and status",
            labels=["recipient", "status"],
        )
        for (recipient, status), count in sorted(counts.items()):
            held.add_metric([recipient, status], count)
        yield held
        yield GaugeMetricFamily(
            "gateway_delivery_queue_depth", "Messages waiting to be delivered", value=depth
        )
        yield GaugeMetricFamily(
            "gateway_delivery_oldest_pending_seconds",
            "Age of the oldest message waiting to be delivered (0 when none waits)",
            value=oldest or 0.0,
        )


def metrics_text() -> tuple[bytes, str]:
    outbox = CollectorRegistry()
    outbox.register(OutboxCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry) + generate_latest(outbox), CONTENT_TYPE_LATEST
    return generate_latest() + generate_latest(outbox), CONTENT_TYPE_LATEST


def init_app(app: Flask) -> None:
    configure_logging()
    app.before_request(_start)
    app.after_request(_finish)

    @app.get("/metrics")
    def metrics() -> Any:
        body, content_type = metrics_text()
        return Response(body, content_type=content_type)
