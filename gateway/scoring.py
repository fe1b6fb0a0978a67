"""The explainable scoring engine: pure functions, no I/O.

    ranking = rank(candidates, profile, rules, now=now, limit=10)    # personalized
    ranking = rank_popular(candidates, limit=10)                     # without personal data

A personalized score is the sum of a category affinity (the subject's recent events, decayed
exponentially with age) and the weights of the segment rules the candidate matches. Items bought
within the policy's window are left out. Ties keep the caller's order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gateway.policy.model import Duration, ScoringRules

PURCHASE = "purchase"
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
class Profile:
    """The minimized profile: only what the decision allowed the store to read."""

    attributes: Mapping[str, Scalar] = field(default_factory=dict)
    events: Sequence[ProfileEvent] = ()


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
    events: Sequence[ProfileEvent], rules: ScoringRules, now: datetime
) -> dict[str, float]:
    """Decayed, weighted event counts per product category, scaled so the top one is 1."""
    half_life = _seconds(rules.half_life, now)
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        age = max((now - event.at).total_seconds(), 0.0)
        weight = rules.event_weights.get(event.type, 1.0)
        totals[event.item_category] += weight * 0.5 ** (age / half_life)
    top = max(totals.values(), default=0.0)
    return {c: v / top for c, v in totals.items()} if top > 0 else {}


def recently_bought(events: Sequence[ProfileEvent], rules: ScoringRules, now: datetime) -> set[str]:
    if rules.exclude_purchased_within is None:
        return set()
    since = now - rules.exclude_purchased_within
    return {e.item_id for e in events if e.type == PURCHASE and e.at >= since}


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
    affinity = category_affinity(profile.events, rules, now)
    bought = recently_bought(profile.events, rules, now)
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
