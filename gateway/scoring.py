"""The explainable scoring engine: pure functions, no I/O.

    ranking = rank(candidates, profile, rules, now=now, limit=10)    # personalized
    ranking = rank_popular(candidates, limit=10)                     # without personal data

A personalized score is the sum of a category affinity (the subject's recent events, decayed
exponentially with age) and the weights of the segment rules the candidate matches. Items bought
within the policy's window are left out. Ties keep the caller's order.

The store hands the events over as tallies (so many events of a type and item category, at their
mean time) rather than one by one, so a long history costs no more than a short one. A tally of
events spread over one day decays as if all were at their mean time: since the decay is convex,
that underestimates their weight, by a share of at most (ln 2 * spread / half-life)^2 / 8 (0.03%
for a day's spread and a half-life of 14 days).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gateway.policy.model import PURCHASE, Duration, ScoringRules

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Candidate:
    id: str
    category: str
    features: Mapping[str, Scalar] = field(default_factory=dict)
    popularity: float | None = None


@dataclass(frozen=True)
class ProfileEvent:
    type: str
    item_id: str
    item_category: str
    at: datetime


@dataclass(frozen=True)
class Tally:
    """`count` events of one type and item category, at `at` on average."""

    type: str
    item_category: str
    count: int
    at: datetime


@dataclass(frozen=True)
class Profile:
    """The minimized profile: only what the decision allowed the store to read.

    `tallies` count the events the affinity weighs; `bought` gives the items the scorer may
    leave out (the candidates bought within the purpose's window) with their latest purchase."""

    attributes: Mapping[str, Scalar] = field(default_factory=dict)
    tallies: Sequence[Tally] = ()
    bought: Mapping[str, datetime] = field(default_factory=dict)

    @classmethod
    def of_events(
        cls, events: Sequence[ProfileEvent], attributes: Mapping[str, Scalar] | None = None
    ) -> Profile:
        """A profile of events given one by one: each its own tally."""
        tallies = tuple(Tally(e.type, e.item_category, 1, e.at) for e in events)
        bought: dict[str, datetime] = {}
        for event in events:
            if event.type == PURCHASE:
                bought[event.item_id] = max(bought.get(event.item_id, event.at), event.at)
        return cls(attributes or {}, tallies, bought)


@dataclass(frozen=True)
class ScoredItem:
    id: str
    score: float
    contributions: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Ranking:
    items: tuple[ScoredItem, ...]
    excluded: tuple[str, ...] = ()


def _seconds(duration: Duration, now: datetime) -> float:
    return (now - (now - duration)).total_seconds()


def category_affinity(
    tallies: Sequence[Tally], rules: ScoringRules, now: datetime
) -> dict[str, float]:
    """Decayed, weighted event counts per product category, scaled so the top one is 1."""
    half_life = _seconds(rules.half_life, now)
    totals: dict[str, float] = defaultdict(float)
    for tally in tallies:
        age = max((now - tally.at).total_seconds(), 0.0)
        weight = rules.event_weights.get(tally.type, 1.0)
        totals[tally.item_category] += tally.count * weight * 0.5 ** (age / half_life)
    top = max(totals.values(), default=0.0)
    return {c: v / top for c, v in totals.items()} if top > 0 else {}


def recently_bought(bought: Mapping[str, datetime], rules: ScoringRules, now: datetime) -> set[str]:
    if rules.exclude_purchased_within is None:
        return set()
    since = now - rules.exclude_purchased_within
    return {item for item, at in bought.items() if at >= since}


def _contributions(
    candidate: Candidate, profile: Profile, affinity: Mapping[str, float], rules: ScoringRules
) -> dict[str, float]:
    parts: dict[str, float] = {}
    if candidate.category in affinity:
        parts[f"affinity:{candidate.category}"] = round(affinity[candidate.category], 6)
    for segment in rules.segments:
        value = profile.attributes.get(segment.attribute)
        if value is not None and candidate.features.get(segment.candidate_field) == value:
            parts[f"segment:{segment.name}"] = segment.weight
    return parts


def rank(
    candidates: Sequence[Candidate],
    profile: Profile,
    rules: ScoringRules,
    *,
    now: datetime,
    limit: int,
) -> Ranking:
    """Rank candidates on the minimized profile."""
    affinity = category_affinity(profile.tallies, rules, now)
    bought = recently_bought(profile.bought, rules, now)
    scored = []
    for candidate in candidates:
        if candidate.id in bought:
            continue
        parts = _contributions(candidate, profile, affinity, rules)
        scored.append(ScoredItem(candidate.id, round(sum(parts.values()), 6), parts))
    # sorted() is stable, so equal scores keep the caller's order.
    ordered = sorted(scored, key=lambda item: -item.score)
    excluded = tuple(c.id for c in candidates if c.id in bought)
    return Ranking(tuple(ordered[:limit]), excluded)


def rank_popular(candidates: Sequence[Candidate], *, limit: int) -> Ranking:
    """Non-personalized: the popularity the caller supplied, else the caller's own order."""
    scored = [
        ScoredItem(c.id, float(c.popularity or 0.0), {"popularity": float(c.popularity or 0.0)})
        for c in candidates
    ]
    ordered = sorted(scored, key=lambda item: -item.score)
    return Ranking(tuple(ordered[:limit]))
