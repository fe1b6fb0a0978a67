"""Hot queries built once (`Statement`) return what their peewee queries return."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from gateway import keyring
from gateway.store.consents import consent_receipts, consent_records
from gateway.store.db import database
from gateway.store.models import AuditEntry, ConsentRecord, Subject
from gateway.store.statements import Statement
from gateway.store.subjects import find_subject
from tests.conftest import Caller

CONSENT = {"source": "cookie_banner", "notice_version": "2026-05"}


def change_consents(shop: Caller, subject: str, *granted: bool) -> None:
    for value in granted:
        body = {**CONSENT, "granted": value}
        response = shop.put(f"/v1/subjects/{subject}/consents/recommendations", body)
        assert response.status_code == 200, response.get_json()


def as_read(instance: Any) -> tuple[dict[str, Any], set[Any]]:
    return instance.__data__, set(instance._dirty)


def test_models_and_rows_are_those_of_the_query(app: Flask, shop: Caller) -> None:
    change_consents(shop, "ann", True, False, True)
    change_consents(shop, "bob", True)
    history = Statement(
        lambda subject_id: (
            ConsentRecord.select()
            .where(ConsentRecord.subject == subject_id)
            .order_by(ConsentRecord.recorded_at, ConsentRecord.id)
        )
    )
    head = Statement(
        lambda: (
            AuditEntry.select(AuditEntry.seq, AuditEntry.hash)
            .order_by(AuditEntry.seq.desc())
            .limit(2)
        )
    )
    with app.app_context(), database.connection_context():
        for subject in Subject.select():
            query = history.build(subject.id)
            assert [as_read(r) for r in history.models(subject.id)] == [as_read(r) for r in query]
        assert head.rows() == list(head.build().tuples())
        assert len(head.rows()) == 2


def test_the_first_model_or_none(app: Flask, shop: Caller) -> None:
    change_consents(shop, "ann", True)
    by_name = Statement(lambda name: Subject.select().where(Subject.pseudonym == name))
    with app.app_context(), database.connection_context():
        pseudonym = keyring().pseudonym("ann")
        assert as_read(by_name.first(pseudonym)) == as_read(Subject.get(pseudonym=pseudonym))
        assert by_name.first("v1:nobody") is None


@pytest.mark.parametrize(
    "build, params",
    [
        (lambda name: Subject.select().where(Subject.pseudonym.is_null()), ("x",)),
        (
            lambda subject_id, name: Subject.select().where(
                (Subject.pseudonym == name) & (Subject.id == subject_id)
            ),
            (1, "x"),
        ),
    ],
    ids=["parameter not in the SQL", "parameters in another order"],
)
def test_a_query_that_does_not_take_the_parameters_given_is_refused(
    app: Flask, build: Any, params: tuple[Any, ...]
) -> None:
    with app.app_context(), database.connection_context(), pytest.raises(ValueError):
        Statement(build).execute(*params)


def test_a_statement_reads_the_database_bound_now(make_app: Any, tmp_path: Any) -> None:
    pseudonyms = Statement(lambda: Subject.select(Subject.pseudonym).order_by(Subject.id))
    seen = []
    for home in ("one", "two"):
        app = make_app(HOME=str(tmp_path / home))
        with app.app_context(), database.connection_context():
            Subject.create(pseudonym=f"v1:{home}", created_at="2026-01-01 00:00:00")
            seen.append(pseudonyms.rows())
    assert seen == [[("v1:one",)], [("v1:two",)]]


def test_receipts_are_those_of_the_subjects_history(app: Flask, shop: Caller) -> None:
    change_consents(shop, "ann", True, False, True)
    change_consents(shop, "bob", False)
    with app.app_context(), database.connection_context():
        for name in ("ann", "bob", "nobody"):
            pseudonym = keyring().pseudonym(name)
            history = consent_records(find_subject(pseudonym))
            assert consent_receipts(pseudonym) == [r.receipt_id for r in history]
        assert len(consent_receipts(keyring().pseudonym("ann"))) == 3
