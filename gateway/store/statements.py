"""Hot queries: SQL built by peewee once per database, then run with new parameters.

    BY_NAME = Statement(lambda name: Subject.select().where(Subject.pseudonym == name))
    BY_NAME.models(name)                  # [Subject], as the select itself returns them
    BY_NAME.first(name)                   # the first of them, or None
    HEAD = Statement(lambda: Entry.select(Entry.seq).order_by(Entry.seq.desc()).limit(1))
    HEAD.rows()                           # [(seq,)], converted by the fields selected

Building a select costs peewee several times what the database takes to answer a lookup by
key, and every request makes several (its client, its subject, the consents, the audit head).
A query whose SQL depends on its values (an IN list, `== None`) cannot be a Statement: the
first call refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from weakref import WeakKeyDictionary

from peewee import Database, Field

from gateway.store.db import database


class Statement:
    """A query of the main database whose SQL peewee builds once per database bound (a select,
    or a write run with `execute`).

    The first call in a database builds the query from the parameters given and checks that
    its SQL takes them first, unchanged and in order; any after them (a LIMIT) are the
    statement's own.
    """

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build
        self._built: WeakKeyDictionary[Database, _Built] = WeakKeyDictionary()

    def _compiled(self, params: Sequence[Any]) -> _Built:
        db = database.obj
        found = self._built.get(db)
        if found is None:
            query = self.build(*params)
            sql, built = query.sql()
            if list(built[: len(params)]) != list(params):
                raise ValueError(f"the query's parameters {built!r} do not start with {params!r}")
            found = self._built[db] = _Built(query, sql, tuple(built[len(params) :]))
        return found

    def execute(self, *params: Any) -> Any:
        """Run the statement; returns the driver's cursor."""
        built = self._compiled(params)
        return database.obj.execute_sql(built.sql, (*params, *built.constants))

    def rows(self, *params: Any) -> list[tuple[Any, ...]]:
        """The rows, each value converted by the field selected for it, as peewee does."""
        converters = self._compiled(params).converters
        return [_converted(converters, row) for row in self.execute(*params)]

    def models(self, *params: Any) -> list[Any]:
        """The rows as instances of the query's model, as the select itself returns them."""
        built = self._compiled(params)
        return [_instance(built.query.model, built.names, row) for row in self.rows(*params)]

    def first(self, *params: Any) -> Any:
        """The first instance `models` returns, or None."""
        found = self.models(*params)
        return found[0] if found else None


class _Built:
    """A statement built for one database: its SQL, its own parameters, its columns' fields."""

    def __init__(self, query: Any, sql: str, constants: tuple[Any, ...]) -> None:
        self.query, self.sql, self.constants = query, sql, constants
        selected = getattr(query, "selected_columns", [])  # none for a write
        self.converters = [c.python_value if isinstance(c, Field) else None for c in selected]
        self.names: list[str] = [getattr(c, "name", "") for c in selected]


def _converted(converters: Sequence[Any], row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        v if convert is None else convert(v) for convert, v in zip(converters, row, strict=True)
    )


def _instance(model: Any, names: Sequence[str], row: Sequence[Any]) -> Any:
    # As peewee's own selects build them: no defaults for what was not selected, nothing dirty.
    instance = model(__no_default__=1, **dict(zip(names, row, strict=True)))
    instance._dirty.clear()
    return instance
