"""Long reads (verification, exports) stream rows instead of loading the whole result."""

from __future__ import annotations

from typing import Any

from flask import Flask

from gateway.audit.verification import stored_records
from gateway.store.db import database, stream_rows, write_transaction
from gateway.store.models import AuditEntry
from tests.conftest import Caller, verify_audit
from tests.stores import POSTGRES

CONSENT = {"granted": True, "source": "cookie_banner", "notice_version": "2026-05"}


def write_entries(shop: Caller, count: int) -> None:
    for n in range(count):
        granted = n % 2 == 0
        body = {**CONSENT, "granted": granted}
        response = shop.put(f"/v1/subjects/s-{n}/consents/recommendations", body)
        assert response.status_code == 200, response.get_json()


def open_cursors() -> list[str]:
    """The server-side cursors of this connection (PostgreSQL's pg_cursors)."""
    rows: Any = database.execute_sql("SELECT name FROM pg_cursors").fetchall()
    return [row[0] for row in rows]


def test_streamed_rows_are_the_stored_rows_in_order(app: Flask, shop: Caller) -> None:
    write_entries(shop, 25)
    with app.app_context(), database.connection_context():
        query = AuditEntry.select().order_by(AuditEntry.seq)
        streamed = list(stream_rows(query, batch=4))
        stored = list(query.dicts())
    assert [row["seq"] for row in streamed] == list(range(1, 26))
    assert streamed == stored


def test_a_half_read_stream_reads_on_after_a_write(app: Flask, shop: Caller) -> None:
    """On PostgreSQL the unread rows wait in a server-side cursor of the connection."""
    write_entries(shop, 30)
    with app.app_context(), database.connection_context():
        rows = stream_rows(AuditEntry.select().order_by(AuditEntry.seq), batch=5)
        first = next(rows)
        assert first["seq"] == 1
        if POSTGRES:
            # the rest waits on the server, in a cursor of this connection
            assert [name for name in open_cursors() if name.startswith("stream_")]
        # rows written after the stream began do not disturb it
        with write_transaction():
            AuditEntry.update(actor="changed").where(AuditEntry.seq == 30).execute()
        rest = list(rows)
        assert [row["seq"] for row in rest] == list(range(2, 31))
        if POSTGRES:
            assert not [name for name in open_cursors() if name.startswith("stream_")]


def test_verification_streams_entries_with_checkpoints_after_them(
    make_app: Any, new_caller: Any
) -> None:
    app = make_app(AUDIT_CHECKPOINT_EVERY=4)
    shop = new_caller("app", ("recommendations",))
    write_entries(shop, 12)
    with app.app_context(), database.connection_context():
        records = list(stored_records())
    kinds = [(kind, record["seq"]) for kind, record in records]
    entries = [seq for kind, seq in kinds if kind == "entry"]
    assert entries == list(range(1, len(entries) + 1))
    for kind, seq in kinds:
        if kind == "checkpoint":
            assert kinds.index(("entry", seq)) < kinds.index((kind, seq))
    assert verify_audit(app).ok
