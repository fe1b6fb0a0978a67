"""`gateway audit verify` without the keyring that wrote the database: one line, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from flask import Flask

from gateway.crypto import Keyring
from tests.conftest import GATEWAY, gateway_environment

# how the keyring is wrong -> the exit code and what the line says
CASES = {
    "missing": (1, "no keyring"),
    "unreadable": (1, "unreadable keyring"),
    "another": (2, "did not write this database"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_audit_verify_without_its_keyring_is_one_line(
    app: Flask, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "keyring.json"
    if case == "unreadable":
        path.write_text("{not json", encoding="utf-8")
    elif case == "another":
        Keyring.generate().save(path)

    result = subprocess.run(
        [str(GATEWAY), "audit", "verify"],
        env=gateway_environment(app, KEYRING=str(path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    exit_code, says = CASES[case]
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert says in line
    assert "GATEWAY_KEYRING" in line
