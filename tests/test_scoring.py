"""The pure scorer: decayed category affinity, segment rules, purchase exclusion, fallback order."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.model import ScoringRules, Segment
from gateway.scoring import (
    Candidate,
    Profile,
    ProfileEvent,
    Ranking,
    Tally,
    category_affinity,
    rank,
    rank_popular,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HALF_LIFE = timedelta(days=14)
SECOND = timedelta(seconds=1)
RULES = ScoringRules(half_life=HALF_LIFE)


def decay(age: timedelta) -> float:
    """The weight of one event of this age, straight from the formula: 0.5 ** (age / half-life)."""
    return 0.5 ** (age / HALF_LIFE)


def seen(category: str, age: timedelta, kind: str = "view", item: str = "x") -> ProfileEvent:
    return ProfileEvent(kind, item, category, NOW - age)


def scores(ranking: Ranking) -> dict[str, float]:
    return {item.id: item.score for item in ranking.items}


def ids(ranking: Ranking) -> list[str]:
    return [item.id for item in ranking.items]


SHOES, BOOKS, TOYS = Candidate("s1", "shoes"), Candidate("b1", "books"), Candidate("t1", "toys")


# --- category affinity ----------------------------------------------------------------------------


def test_half_life_old_event_weighs_half_a_fresh_one() -> None:
    profile = Profile.of_events([seen("shoes", timedelta(0)), seen("books", HALF_LIFE)])

    ranking = rank([BOOKS, SHOES, TOYS], profile, RULES, now=NOW, limit=10)

    assert scores(ranking) == {"s1": 1.0, "b1": 0.5, "t1": 0.0}
    assert ids(ranking) == ["s1", "b1", "t1"]


@pytest.mark.parametrize("days", [1, 3.5, 7, 21, 40])
def test_affinity_decays_exponentially(days: float) -> None:
    age = timedelta(days=days)
    profile = Profile.of_events([seen("shoes", timedelta(0)), seen("books", age)])

    ranking = rank([SHOES, BOOKS], profile, RULES, now=NOW, limit=10)

    assert scores(ranking)["b1"] == pytest.approx(decay(age), abs=1e-6)


def test_affinity_sums_events_and_is_scaled_to_the_top_category() -> None:
    events = [
        seen("shoes", timedelta(days=2)),
        seen("shoes", timedelta(days=9)),
        seen("books", timedelta(days=1)),
        seen("toys", timedelta(days=30)),
    ]
    shoes = decay(timedelta(days=2)) + decay(timedelta(days=9))
    books = decay(timedelta(days=1))
    toys = decay(timedelta(days=30))

    ranking = rank([TOYS, BOOKS, SHOES], Profile.of_events(events), RULES, now=NOW, limit=10)

    assert ids(ranking) == ["s1", "b1", "t1"]
    assert scores(ranking)["s1"] == 1.0
    assert scores(ranking)["b1"] == pytest.approx(books / shoes, abs=1e-6)
    assert scores(ranking)["t1"] == pytest.approx(toys / shoes, abs=1e-6)
    assert ranking.items[1].contributions == {"affinity:books": round(books / shoes, 6)}


def test_event_weights_multiply_the_decayed_count() -> None:
    rules = ScoringRules(half_life=HALF_LIFE, event_weights={"purchase": 3.0, "view": 0.5})
    events = [
        seen("shoes", timedelta(days=7), "purchase"),
        seen("books", timedelta(0), "view"),
        seen("books", timedelta(days=28), "click"),  # no weight given: counts 1
    ]
    shoes = 3.0 * decay(timedelta(days=7))
    books = 0.5 * decay(timedelta(0)) + 1.0 * decay(timedelta(days=28))

    ranking = rank([BOOKS, SHOES], Profile.of_events(events), rules, now=NOW, limit=10)

    assert ids(ranking) == ["s1", "b1"]
    assert scores(ranking)["b1"] == pytest.approx(books / shoes, abs=1e-6)


def test_zero_event_weight_gives_no_affinity() -> None:
    rules = ScoringRules(half_life=HALF_LIFE, event_weights={"view": 0.0})
    profile = Profile.of_events([seen("shoes", timedelta(0))])

    ranking = rank([SHOES], profile, rules, now=NOW, limit=10)

    assert scores(ranking) == {"s1": 0.0}
    assert ranking.items[0].contributions == {}


def test_event_in_the_future_counts_as_fresh() -> None:
    profile = Profile.of_events([seen("shoes", -timedelta(hours=1)), seen("books", timedelta(0))])

    ranking = rank([BOOKS, SHOES], profile, RULES, now=NOW, limit=10)

    assert scores(ranking) == {"b1": 1.0, "s1": 1.0}


# --- segments -------------------------------------------------------------------------------------

SEGMENTS = ScoringRules(
    half_life=HALF_LIFE,
    segments=(
        Segment("favorite_brand", "favorite_brand", "brand", 0.5),
        Segment("shoe_size", "shoe_size", "size", 0.25),
    ),
)


@pytest.mark.parametrize(
    ("attributes", "features", "expected"),
    [
        ({"favorite_brand": "acme"}, {"brand": "acme"}, {"segment:favorite_brand": 0.5}),
        ({"favorite_brand": "acme"}, {"brand": "globex"}, {}),
        ({"favorite_brand": "acme"}, {}, {}),
        ({}, {"brand": "acme"}, {}),
        ({"shoe_size": 42}, {"size": 42}, {"segment:shoe_size": 0.25}),
        ({"shoe_size": 42}, {"size": "42"}, {}),
        (
            {"favorite_brand": "acme", "shoe_size": 42},
            {"brand": "acme", "size": 42},
            {"segment:favorite_brand": 0.5, "segment:shoe_size": 0.25},
        ),
    ],
)
def test_segment_adds_its_weight_only_on_equal_values(
    attributes: dict[str, str | int], features: dict[str, str | int], expected: dict[str, float]
) -> None:
    candidate = Candidate("s1", "shoes", features)

    ranking = rank([candidate], Profile(attributes=attributes), SEGMENTS, now=NOW, limit=10)

    assert ranking.items[0].contributions == expected
    assert ranking.items[0].score == pytest.approx(sum(expected.values()))


def test_segment_weight_adds_to_affinity() -> None:
    candidates = [Candidate("b1", "books", {"brand": "acme"}), Candidate("s1", "shoes")]
    profile = Profile.of_events(
        [seen("shoes", timedelta(0)), seen("books", HALF_LIFE)], {"favorite_brand": "acme"}
    )

    ranking = rank(candidates, profile, SEGMENTS, now=NOW, limit=10)

    assert scores(ranking) == {"s1": 1.0, "b1": 1.0}
    assert ranking.items[0].contributions == {
        "affinity:books": 0.5,
        "segment:favorite_brand": 0.5,
    }


# --- recently purchased ---------------------------------------------------------------------------

WINDOW = timedelta(days=30)
EXCLUDING = ScoringRules(half_life=HALF_LIFE, exclude_purchased_within=WINDOW)


@pytest.mark.parametrize(
    ("age", "excluded"),
    [
        (timedelta(0), True),
        (WINDOW - SECOND, True),
        (WINDOW + SECOND, False),
        (timedelta(days=300), False),
    ],
)
def test_recent_purchase_is_excluded_within_the_window(age: timedelta, excluded: bool) -> None:
    profile = Profile.of_events([seen("shoes", age, "purchase", item="s1")])

    ranking = rank([SHOES, BOOKS], profile, EXCLUDING, now=NOW, limit=10)

    assert ("s1" not in ids(ranking)) is excluded
    assert ranking.excluded == (("s1",) if excluded else ())
    assert "b1" in ids(ranking)


def test_only_purchases_exclude_items() -> None:
    profile = Profile.of_events([seen("shoes", timedelta(0), "view", item="s1")])

    ranking = rank([SHOES], profile, EXCLUDING, now=NOW, limit=10)

    assert ids(ranking) == ["s1"]
    assert ranking.excluded == ()


def test_no_exclusion_without_a_window() -> None:
    profile = Profile.of_events([seen("shoes", timedelta(0), "purchase", item="s1")])

    ranking = rank([SHOES], profile, RULES, now=NOW, limit=10)

    assert ids(ranking) == ["s1"]


def test_recent_purchase_still_feeds_affinity() -> None:
    profile = Profile.of_events([seen("shoes", timedelta(0), "purchase", item="s1")])
    other_shoes = Candidate("s2", "shoes")

    ranking = rank([BOOKS, SHOES, other_shoes], profile, EXCLUDING, now=NOW, limit=10)

    assert ids(ranking) == ["s2", "b1"]
    assert scores(ranking)["s2"] == 1.0


# --- order and limit ------------------------------------------------------------------------------


def test_ties_keep_caller_order() -> None:
    candidates = [Candidate(f"c{i}", "books" if i % 2 else "toys") for i in range(6)]
    profile = Profile.of_events([seen("shoes", timedelta(0))])

    ranking = rank(candidates, profile, RULES, now=NOW, limit=10)

    assert ids(ranking) == ["c0", "c1", "c2", "c3", "c4", "c5"]


def test_ties_among_scored_items_keep_caller_order() -> None:
    candidates = [Candidate("t1", "toys"), Candidate("s9", "shoes"), Candidate("s1", "shoes")]
    profile = Profile.of_events([seen("shoes", timedelta(0))])

    ranking = rank(candidates, profile, RULES, now=NOW, limit=10)

    assert ids(ranking) == ["s9", "s1", "t1"]


@pytest.mark.parametrize(
    ("limit", "expected"), [(1, ["s1"]), (2, ["s1", "b1"]), (5, ["s1", "b1", "t1"])]
)
def test_limit_keeps_the_top(limit: int, expected: list[str]) -> None:
    profile = Profile.of_events([seen("shoes", timedelta(0)), seen("books", HALF_LIFE)])

    ranking = rank([TOYS, BOOKS, SHOES], profile, RULES, now=NOW, limit=limit)

    assert ids(ranking) == expected


# --- popularity fallback --------------------------------------------------------------------------


def test_rank_popular_orders_by_popularity() -> None:
    candidates = [
        Candidate("a", "books", popularity=3.0),
        Candidate("b", "books", popularity=10.0),
        Candidate("c", "books", popularity=7.5),
    ]

    ranking = rank_popular(candidates, limit=10)

    assert ids(ranking) == ["b", "c", "a"]
    assert scores(ranking) == {"b": 10.0, "c": 7.5, "a": 3.0}
    assert ranking.items[0].contributions == {"popularity": 10.0}


def test_rank_popular_without_popularity_keeps_caller_order() -> None:
    candidates = [Candidate(name, "books") for name in ("z", "m", "a", "q")]

    ranking = rank_popular(candidates, limit=10)

    assert ids(ranking) == ["z", "m", "a", "q"]
    assert scores(ranking) == {"z": 0.0, "m": 0.0, "a": 0.0, "q": 0.0}


def test_rank_popular_puts_unknown_popularity_last_in_caller_order() -> None:
    candidates = [
        Candidate("x", "books"),
        Candidate("a", "books", popularity=1.0),
        Candidate("y", "books"),
        Candidate("b", "books", popularity=1.0),
        Candidate("c", "books", popularity=2.0),
    ]

    ranking = rank_popular(candidates, limit=10)

    assert ids(ranking) == ["c", "a", "b", "x", "y"]


@pytest.mark.parametrize(("limit", "expected"), [(1, ["b"]), (2, ["b", "c"]), (9, ["b", "c", "a"])])
def test_rank_popular_limit(limit: int, expected: list[str]) -> None:
    candidates = [
        Candidate("a", "books", popularity=3.0),
        Candidate("b", "books", popularity=10.0),
        Candidate("c", "books", popularity=7.5),
    ]

    assert ids(rank_popular(candidates, limit=limit)) == expected


# --- tallies --------------------------------------------------------------------------------------


@given(
    ages=st.lists(st.integers(0, 86_400_000), min_size=1, max_size=50),
    start=st.integers(0, 200 * 86_400),
    half_life_days=st.sampled_from([1, 7, 14, 30]),
)
def test_a_tally_at_the_mean_time_weighs_as_its_events_within_the_documented_bound(
    ages: list[int], start: int, half_life_days: int
) -> None:
    """Events within one day, counted as one tally at their mean time: their decayed weight is
    at most (ln 2 * spread / half-life)^2 / 8 of itself lower than theirs one by one, and
    never higher (the decay is convex)."""
    events = [NOW - timedelta(seconds=start, milliseconds=ms) for ms in ages]
    mean = NOW - timedelta(seconds=start, milliseconds=sum(ages) / len(ages))
    rules = ScoringRules(half_life=timedelta(days=half_life_days))
    one_by_one = category_affinity([Tally("view", "shoes", 1, at) for at in events], rules, NOW)
    tallied = category_affinity([Tally("view", "shoes", len(events), mean)], rules, NOW)
    # beside a fixed category, so the shoes' weight shows in the ratio whichever is on top
    fixed = [Tally("view", "books", 1, NOW)]
    exact = category_affinity(fixed + [Tally("view", "shoes", 1, at) for at in events], rules, NOW)
    counted = category_affinity(fixed + [Tally("view", "shoes", len(events), mean)], rules, NOW)
    assert one_by_one == tallied == {"shoes": 1.0}
    spread = (max(events) - min(events)) / timedelta(days=half_life_days)
    bound = (math.log(2) * spread) ** 2 / 8
    weight = exact["shoes"] / exact["books"]
    assert counted["shoes"] / counted["books"] <= weight * (1 + 1e-9)
    assert counted["shoes"] / counted["books"] >= weight * (1 - bound - 1e-9)
