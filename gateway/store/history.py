"""A subject's events as a decision reads them: summed in the database from the day tallies
(gateway/store/tallies.py), so a decision costs the same for a subject with ten events as for
one with ten thousand.

    history = History(subject, event_cutoffs(policies, now))
    history.holdings()                 # per database and type: counts past and within retention
    history.tallies(plan, unseal, half_life=rules.half_life, now=now)    # what the scorer weighs

Two queries answer for the whole history, each returning a row per database, event type (and
item category) rather than per event or day. One more reads events one by one, and only those
of a day that a retention cutoff falls within, so the cutoff stays exact to the microsecond: a
day's tally either lies wholly on one side of it or is not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache, reduce
from operator import or_
from typing import Any, NamedTuple

from gateway.policy.engine import Holding, HoldingKind, ReadPlan
from gateway.policy.model import Duration
from gateway.scoring import Tally
from gateway.store.db import database, serializes_writers
from gateway.store.models import Event, Subject

Unseal = Callable[[str, bool, str], str]  # (stored, sealed, context) -> plaintext

# Below this exponent a day's weight is nil (PostgreSQL's exp() refuses to underflow).
_FLOOR = -700.0


def event_context(database_id: str, event_type: str) -> str:
    """What an event's sealed values are bound to: where they are stored."""
    return f"event:{database_id}:{event_type}"


class _Group(NamedTuple):
    """A subject's tallies of one database and event type, split at the type's cutoff day."""

    database: str
    type: str
    before: int  # events of days before the cutoff's
    after: int  # events of days after it
    last_day: int | None  # the latest day after it
    straddles: bool  # whether the cutoff's own day has events
    sealed: bool  # whether any of them is sealed


class _Raw(NamedTuple):
    database: str
    type: str
    category: str
    sealed: bool
    at: datetime


EPOCH = date(1970, 1, 1)


def day_number(day: date) -> int:
    """A day as `event_tally.day` counts it: days since 1970-01-01."""
    return (day - EPOCH).days


@lru_cache(maxsize=4096)
def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


@lru_cache(maxsize=64)
def _groups_sql(types: tuple[str, ...], param: str) -> str:
    """Per database and type: the counts before and after each type's cutoff day (a parameter
    per type, then one for every other type), the latest day after it, and whether the
    cutoff's day has events. Built once per set of types."""
    whens = " ".join(f"WHEN {param} THEN {param}" for _ in types)
    cut = f"CASE type {whens} ELSE {param} END" if types else param
    return f"""
        SELECT database, type,
               sum(CASE WHEN day < cut THEN count ELSE 0 END),
               sum(CASE WHEN day > cut THEN count ELSE 0 END),
               max(CASE WHEN day > cut THEN day END),
               max(CASE WHEN day = cut THEN 1 ELSE 0 END),
               max(CASE WHEN sealed THEN 1 ELSE 0 END)
        FROM (SELECT database, type, day, count, sealed, {cut} AS cut
              FROM event_tally WHERE subject_id = {param}) AS tallied
        GROUP BY database, type"""


# A day tally's mean event time, in seconds since the epoch, in each dialect.
_SECONDS = {
    "sqlite": "(day * 86400.0 + moment / 1000.0 / count)",
    "postgres": "(day::float8 * 86400.0 + moment::float8 / 1000.0 / count)",
}
_LARGER = {"sqlite": "max", "postgres": "greatest"}


@lru_cache(maxsize=64)
def _weights_sql(pairs: int, dialect: str, param: str) -> str:
    """Per database, type and item category of `pairs` allowed (database, type, after day):
    the count of events on days after the cutoff's, and the sum of their weights decayed to
    now, each day's events at their mean time (parameters: ln 2 / half-life and now, in
    seconds; the subject; then each pair's)."""
    larger, seconds = _LARGER[dialect], _SECONDS[dialect]
    age = f"{larger}(0.0, {param} - {seconds})"
    weight = f"exp({larger}({_FLOOR}, -{param} * {age}))"
    allowed = " OR ".join(
        f"(database = {param} AND type = {param} AND day > {param})" for _ in range(pairs)
    )
    return f"""
        SELECT database, type, sealed, category, sum(count), sum(count * {weight})
        FROM event_tally WHERE subject_id = {param} AND ({allowed})
        GROUP BY database, type, sealed, category"""


class History:
    """What a subject's events are, read once per decision (see the module's docstring)."""

    def __init__(self, subject: Subject | None, cutoffs: Mapping[str, datetime]) -> None:
        self.subject, self.cutoffs = subject, dict(cutoffs)
        self.groups: list[_Group] = []
        self._edges: dict[tuple[str, str, date], list[_Raw]] = {}
        if subject is None:
            return
        types = tuple(sorted(self.cutoffs))
        params: list[Any] = []
        for kind in types:
            params += [kind, day_number(self.cutoffs[kind].date())]
        params += [day_number(date.min), subject.get_id()]
        cursor = database.execute_sql(_groups_sql(types, database.param), params)
        self.groups = [
            _Group(db, kind, before, after, last, bool(straddles), bool(sealed))
            for db, kind, before, after, last, straddles, sealed in cursor.fetchall()
        ]

    def sealed(self, database_id: str, event_type: str) -> bool:
        """Whether any event of this database and type is stored sealed."""
        return any(
            g.sealed for g in self.groups if (g.database, g.type) == (database_id, event_type)
        )

    def edges(
        self, wanted: Iterable[tuple[str, str, date]]
    ) -> dict[tuple[str, str, date], list[_Raw]]:
        """The events of each (database, type, day) one by one, read once in one query; a day
        known to hold none of them costs nothing."""
        wanted = list(wanted)
        empty = {
            (g.database, g.type, self.cutoffs[g.type].date())
            for g in self.groups
            if g.type in self.cutoffs and not g.straddles
        }
        missing = sorted(set(wanted) - empty - set(self._edges))
        if missing and self.subject is not None:
            for key in missing:
                self._edges[key] = []
            in_day = [
                (Event.database == db)
                & (Event.type == kind)
                & (Event.at >= _midnight(day))
                & (Event.at < _midnight(day + timedelta(days=1)))
                for db, kind, day in missing
            ]
            rows: Any = (
                Event.select(
                    Event.database, Event.type, Event.item_category, Event.sealed, Event.at
                )
                .where((Event.subject == self.subject) & reduce(or_, in_day))
                .tuples()
            )
            for row in rows:
                raw = _Raw(*row)
                self._edges[(raw.database, raw.type, raw.at.date())].append(raw)
        return {key: self._edges.get(key, []) for key in wanted}

    def holdings(self) -> list[Holding]:
        """Per database and event type, the events past its retention cutoff and the others,
        each as one group (see `Holding`); types without a cutoff (no category) as one."""
        expired = {(g.database, g.type): g.before for g in self.groups}
        kept = {(g.database, g.type): g.after for g in self.groups}
        latest = {  # a time none of the kept events is after
            (g.database, g.type): _midnight(EPOCH + timedelta(days=g.last_day + 1))
            for g in self.groups
            if g.last_day is not None
        }
        straddled = [
            (g.database, g.type, self.cutoffs[g.type].date()) for g in self.groups if g.straddles
        ]
        for (db, kind, _), events in self.edges(straddled).items():
            for event in events:
                if event.at <= self.cutoffs[kind]:
                    expired[(db, kind)] += 1
                else:
                    kept[(db, kind)] += 1
                    latest[(db, kind)] = max(latest.get((db, kind), event.at), event.at)
        groups = [
            Holding(db, HoldingKind.EVENT, kind, self.cutoffs[kind], count)
            for (db, kind), count in expired.items()
            if count
        ]
        groups += [
            Holding(db, HoldingKind.EVENT, kind, latest[(db, kind)], count)
            for (db, kind), count in kept.items()
            if count
        ]
        return groups

    def tallies(
        self, plan: ReadPlan, unseal: Unseal, *, half_life: Duration, now: datetime
    ) -> list[Tally]:
        """The events `plan` allows, as the scorer weighs them: per type and item category one
        tally of the days after the cutoff's, its `at` the time at which that many events would
        weigh what they weigh together under `half_life`; and the events after the cutoff on
        its own day one by one."""
        if self.subject is None or not plan.events:
            return []
        seconds = (now - (now - half_life)).total_seconds()
        names: dict[tuple[str, str, str, bool], str] = {}

        def category(db: str, kind: str, stored: str, sealed: bool) -> str:
            key = (db, kind, stored, sealed)
            if key not in names:
                names[key] = unseal(stored, sealed, event_context(db, kind))
            return names[key]

        dialect = "sqlite" if serializes_writers() else "postgres"
        params: list[Any] = [math.log(2) / seconds, now.timestamp(), self.subject.get_id()]
        for db, kind, after in plan.events:
            params += [db, kind, day_number(after.date())]
        sql = _weights_sql(len(plan.events), dialect, database.param)
        found = []
        for db, kind, sealed, stored, count, weight in database.execute_sql(sql, params).fetchall():
            age = seconds * math.log2(count / weight) if weight > 0 else seconds * -_FLOOR
            at = now - timedelta(seconds=age)
            found.append(Tally(kind, category(db, kind, stored, bool(sealed)), count, at))
        since = {(db, kind): after for db, kind, after in plan.events}
        edges = self.edges((db, kind, after.date()) for (db, kind), after in since.items())
        for (db, kind, _), events in edges.items():
            for event in events:
                if event.at > since[(db, kind)]:
                    found.append(
                        Tally(kind, category(db, kind, event.category, event.sealed), 1, event.at)
                    )
        return found
