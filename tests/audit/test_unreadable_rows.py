"""A stored row edited into a value its column type cannot hold fails verification, never a 500.

Only SQLite lets a column hold a value of another type, so these tests run on SQLite.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Caller


@pytest.mark.sqlite
@pytest.mark.parametrize(
    "tampering",
    [
        "UPDATE audit_checkpoint SET seq = 'x' WHERE seq = (SELECT MIN(seq) FROM audit_checkpoint)",
        "UPDATE audit_checkpoint SET seq = 'x' WHERE seq = (SELECT MAX(seq) FROM audit_checkpoint)",
    ],
)
def test_an_unreadable_row_is_reported_not_a_crash(
    make_app: Any, auditor: Caller, runner: Any, db_path: Path, tampering: str
) -> None:
    for _ in range(3):
        response = auditor.post("/v1/audit/checkpoints")
        assert response.status_code == 201
    assert auditor.get("/v1/audit/verify").get_json()["ok"] is True
    with closing(sqlite3.connect(db_path)) as connection, connection:
        connection.execute(tampering)

    response = auditor.get("/v1/audit/verify")
    cli = runner.invoke(args=["audit", "verify"])

    assert response.status_code == 200
    assert response.get_json()["ok"] is False
    assert cli.exit_code == 1
