"""GET /v1/audit/entries and /v1/audit/summary (and `gateway audit summary`) over a real history.

The history is seeded through the API at three pinned instants; every call remembers what it
should have written to the log (keyed by the X-Request-Id it sent), so each expectation is
computed from what the test did, never from the endpoint under test.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient

from gateway import keyring
from gateway.api.problems import PROBLEM_MIME
from gateway.store.clients import authenticate
from gateway.store.db import database
from tests.conftest import Caller

CALENDAR = datetime(2026, 6, 1, tzinfo=UTC)
T1 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
T2 = T1 + timedelta(hours=1)
T3 = T1 + timedelta(hours=2)
T4 = T1 + timedelta(hours=3)
TICK = timedelta(microseconds=1)

ALICE, BOB, CAROL = "alice@example.com", "bob.42@example.org", "carol.c-7"
SUBJECTS = (ALICE, BOB, CAROL)
CANDIDATES = [{"id": "b-1", "category": "books"}, {"id": "s-1", "category": "shoes"}]
NOTICE = {"source": "web-banner", "notice_version": "2026-05"}
ENTRY_KEYS = {
    "seq",
    "at",
    "actor",
    "action",
    "subject",
    "purpose",
    "outcome",
    "reasons",
    "fields",
    "policy_hash",
    "request_id",
    "decision_id",
    "prev_hash",
    "hash",
    "scheme",
    "entry_id",
}

Json = dict[str, Any]


@pytest.fixture(autouse=True)
def _calendar() -> Iterator[None]:
    """Pin the day (the clock ticks) so the demo registrations' review dates are known."""
    with time_machine.travel(CALENDAR, tick=True):
        yield


def client_name(app: Flask, caller: Caller) -> str:
    with app.app_context(), database.connection_context():
        found = authenticate(caller.key)
        assert found is not None
        return str(found.name)


def pseudonym(app: Flask, subject_id: str) -> str:
    with app.app_context():
        return keyring().pseudonym(subject_id)


@dataclass(frozen=True)
class Fact:
    """What one seeded call must have appended to the audit log."""

    request_id: str
    action: str
    actor: str  # a caller label: shop, mailer, admin
    subject: str | None  # the raw id
    purpose: str | None
    outcome: str
    reasons: tuple[str, ...]
    at: datetime
    decision_id: str | None = None


class History:
    """Seed calls through the API and remember the audit entry each one should write."""

    def __init__(self, callers: dict[str, Caller]) -> None:
        self.callers = callers
        self.facts: list[Fact] = []

    def _send(self, label: str, method: str, path: str, body: Json, **headers: str) -> Any:
        request_id = f"seed-{len(self.facts) + 1:03d}"
        response = self.callers[label].request(
            method, path, body, headers={"X-Request-Id": request_id, **headers}
        )
        assert response.status_code == 200, response.get_json()
        assert response.headers["X-Request-Id"] == request_id
        return request_id, response.get_json()

    def _remember(self, request_id: str, label: str, action: str, **known: Any) -> Fact:
        fact = Fact(request_id, action, label, at=datetime.now(UTC), **known)
        self.facts.append(fact)
        return fact

    def personalize(
        self, label: str, subject: str, purpose: str, expect: str, gpc: bool = False
    ) -> Fact:
        body = {"subject_id": subject, "purpose": purpose, "candidates": CANDIDATES}
        headers = {"Sec-GPC": "1"} if gpc else {}
        request_id, answer = self._send(label, "POST", "/v1/personalize", body, **headers)
        assert answer["outcome"] == expect, answer
        return self._remember(
            request_id,
            label,
            "decision",
            subject=subject,
            purpose=purpose,
            outcome=expect,
            reasons=tuple(answer["reasons"]),
            decision_id=answer["decision_id"],
        )

    def consent(self, label: str, subject: str, purpose: str, granted: bool) -> Fact:
        path = f"/v1/subjects/{subject}/consents/{purpose}"
        request_id, _ = self._send(label, "PUT", path, {"granted": granted, **NOTICE})
        action = "consent.grant" if granted else "consent.withdraw"
        return self._remember(
            request_id,
            label,
            action,
            subject=subject,
            purpose=purpose,
            outcome="recorded",
            reasons=(),
        )

    def events(self, label: str, subject: str, events: list[Json], expect: str) -> Fact:
        body = {"database": "shop_events", "events": events}
        request_id, answer = self._send(label, "POST", f"/v1/subjects/{subject}/events", body)
        assert bool(answer["accepted"]) is (expect == "accepted"), answer
        return self._remember(
            request_id,
            label,
            "events.collect",
            subject=subject,
            purpose=None,
            outcome=expect,
            reasons=(),
        )

    def attributes(self, label: str, subject: str, values: Json) -> Fact:
        body = {"database": "crm", "attributes": values}
        request_id, answer = self._send(label, "PATCH", f"/v1/subjects/{subject}/attributes", body)
        assert answer["accepted"], answer
        return self._remember(
            request_id,
            label,
            "attributes.collect",
            subject=subject,
            purpose=None,
            outcome="accepted",
            reasons=(),
        )


def event(kind: str, at: datetime) -> Json:
    return {"type": kind, "item_id": "sku-1", "category": "shoes", "at": at.isoformat()}


def seed(history: History) -> None:
    """Three subjects, three purposes, three clients; every outcome; events and attributes."""
    with time_machine.travel(T1, tick=False):
        history.personalize("shop", ALICE, "recommendations", "fallback")
        history.consent("shop", ALICE, "recommendations", granted=True)
        history.personalize("shop", ALICE, "recommendations", "allow")
        history.personalize("mailer", BOB, "email_marketing", "allow")
        history.events("shop", ALICE, [event("view", T1 - timedelta(days=1))], "accepted")
    with time_machine.travel(T2, tick=False):
        history.consent("shop", ALICE, "recommendations", granted=False)
        history.personalize("shop", ALICE, "recommendations", "fallback")
        history.consent("mailer", BOB, "email_marketing", granted=False)
        history.personalize("mailer", BOB, "email_marketing", "deny")
        history.attributes("mailer", BOB, {"favorite_brand": "acme"})
        history.personalize("shop", CAROL, "ads_personalization", "fallback", gpc=True)
    with time_machine.travel(T3, tick=False):
        history.consent("shop", CAROL, "ads_personalization", granted=True)
        history.personalize("shop", CAROL, "ads_personalization", "allow")
        history.personalize("admin", CAROL, "recommendations", "fallback")
        history.attributes("shop", CAROL, {"shoe_size": 42, "home_city": "Haifa"})
        stale = [event("purchase", T3 - timedelta(days=400))]
        history.events("shop", BOB, stale, "refused")


@pytest.fixture
def callers(shop: Caller, mailer: Caller, admin: Caller, auditor: Caller) -> dict[str, Caller]:
    return {"shop": shop, "mailer": mailer, "admin": admin, "auditor": auditor}


@pytest.fixture
def names(app: Flask, callers: dict[str, Caller]) -> dict[str, str]:
    """Each caller label's client name, the `actor` of its entries."""
    return {label: client_name(app, caller) for label, caller in callers.items()}


@pytest.fixture
def history(callers: dict[str, Caller]) -> History:
    seeded = History(callers)
    seed(seeded)
    return seeded


@pytest.fixture(params=["auditor", "admin"])
def reader(request: pytest.FixtureRequest, callers: dict[str, Caller]) -> Caller:
    """Both roles that may read the audit log."""
    return callers[request.param]


def get_page(reader: Caller, **params: Any) -> Json:
    response = reader.get("/v1/audit/entries", query_string=params)
    assert response.status_code == 200, response.get_json()
    page: Json = response.get_json()
    return page


def all_pages(reader: Caller, **params: Any) -> list[Json]:
    """Follow next_cursor to the end; return every page."""
    pages = [get_page(reader, **params)]
    while pages[-1]["next_cursor"] is not None:
        pages.append(get_page(reader, **params, cursor=pages[-1]["next_cursor"]))
        assert len(pages) < 1000, "paging does not end"
    return pages


def all_entries(reader: Caller, **params: Any) -> list[Json]:
    return [entry for page in all_pages(reader, **params) for entry in page["entries"]]


def request_ids(entries: list[Json]) -> list[str]:
    return [entry["request_id"] for entry in entries]


def problem(response: Any, status: int = 422) -> Json:
    assert response.status_code == status, response.get_json()
    assert response.mimetype == PROBLEM_MIME
    body: Json = response.get_json()
    return body


# --- filters -------------------------------------------------------------------------------

# A query as the test thinks of it: subject as the raw id, client as a caller label, times as
# datetimes. `params` turns it into the query string; `matches` decides from the seeded facts.
Query = dict[str, Any]


def params(query: Query, names: dict[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in query.items():
        if key == "client":
            found[key] = names[value]
        elif isinstance(value, datetime):
            found[key] = value.isoformat()
        else:
            found[key] = value
    return found


def matches(fact: Fact, query: Query) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "subject_id": lambda v: fact.subject == v,
        "purpose": lambda v: fact.purpose == v,
        "action": lambda v: fact.action == v,
        "outcome": lambda v: fact.outcome == v,
        "client": lambda v: fact.actor == v,
        "since": lambda v: fact.at >= v,
        "until": lambda v: fact.at < v,
    }
    return all(checks[key](value) for key, value in query.items())


def expected_ids(facts: list[Fact], query: Query) -> list[str]:
    return [fact.request_id for fact in facts if matches(fact, query)]


PLUS_TWO = timezone(timedelta(hours=2))

SINGLE_FILTERS = [
    *({"subject_id": subject} for subject in SUBJECTS),
    *({"purpose": p} for p in ("recommendations", "email_marketing", "ads_personalization")),
    *(
        {"action": a}
        for a in (
            "decision",
            "consent.grant",
            "consent.withdraw",
            "events.collect",
            "attributes.collect",
        )
    ),
    *({"outcome": o} for o in ("allow", "fallback", "deny", "recorded", "accepted", "refused")),
    *({"client": label} for label in ("shop", "mailer", "admin")),
    {"since": T2},
    {"since": T3},
    {"since": T2 + TICK},
    {"since": T2.astimezone(PLUS_TWO)},
    {"until": T2},
    {"until": T3},
    {"until": T2 + TICK},
    {"until": T3.astimezone(PLUS_TWO)},
    {"since": T2, "until": T3},
    {"since": T1 + TICK, "until": T3 + TICK},
]

COMBINED_FILTERS = [
    {"subject_id": ALICE, "purpose": "recommendations"},
    {"subject_id": ALICE, "action": "decision", "outcome": "fallback"},
    {"purpose": "recommendations", "outcome": "fallback", "client": "admin"},
    {"purpose": "recommendations", "action": "decision", "since": T2},
    {"client": "shop", "since": T2, "until": T3},
    {"client": "shop", "outcome": "accepted"},
    {"subject_id": CAROL, "action": "attributes.collect", "client": "shop"},
    {"subject_id": BOB, "until": T2},
    {"outcome": "allow", "purpose": "ads_personalization", "since": T3},
    {"action": "consent.withdraw", "client": "mailer", "subject_id": BOB, "until": T3},
]

NOTHING_MATCHES = [
    {"subject_id": "nobody-at-all"},
    {"purpose": "no_such_purpose"},
    {"outcome": "no_such_outcome"},
    {"client": "admin", "action": "consent.grant"},
    {"subject_id": ALICE, "outcome": "deny"},
    {"since": T4},
    {"until": T1},
    {"since": T1 + TICK, "until": T2},
]


def _query_id(query: Any) -> str | None:
    if not isinstance(query, dict):
        return None  # pytest's own id
    return "&".join(
        f"{k}={v.isoformat() if isinstance(v, datetime) else v}" for k, v in query.items()
    )


@pytest.mark.parametrize("query", SINGLE_FILTERS + COMBINED_FILTERS, ids=_query_id)
def test_a_filter_returns_exactly_the_matching_entries_in_seq_order(
    history: History, reader: Caller, names: dict[str, str], query: Query
) -> None:
    expected = expected_ids(history.facts, query)
    # a filter that keeps everything or nothing would prove nothing here
    assert 0 < len(expected) < len(history.facts)
    entries = all_entries(reader, **params(query, names))
    assert request_ids(entries) == expected
    seqs = [entry["seq"] for entry in entries]
    assert seqs == sorted(set(seqs))


@pytest.mark.parametrize("query", NOTHING_MATCHES, ids=_query_id)
def test_a_filter_that_matches_nothing_returns_an_empty_last_page(
    history: History, reader: Caller, names: dict[str, str], query: Query
) -> None:
    assert expected_ids(history.facts, query) == []
    page = get_page(reader, **params(query, names))
    assert page == {"entries": [], "next_cursor": None}


def test_without_filters_every_seeded_entry_is_listed(history: History, reader: Caller) -> None:
    entries = all_entries(reader)
    assert request_ids(entries) == [fact.request_id for fact in history.facts]
    assert [entry["seq"] for entry in entries] == list(range(1, len(history.facts) + 1))


@pytest.mark.parametrize("subject", SUBJECTS)
def test_the_subject_filter_takes_the_raw_id_and_returns_only_its_pseudonym(
    app: Flask, history: History, reader: Caller, subject: str
) -> None:
    response = reader.get("/v1/audit/entries", query_string={"subject_id": subject})
    assert response.status_code == 200
    entries = response.get_json()["entries"]
    assert entries
    assert {entry["subject"] for entry in entries} == {pseudonym(app, subject)}
    assert pseudonym(app, subject) != subject


def test_no_raw_subject_id_appears_in_any_entry(history: History, reader: Caller) -> None:
    for subject in SUBJECTS:
        response = reader.get("/v1/audit/entries", query_string={"subject_id": subject})
        assert response.status_code == 200
        assert response.get_json()["entries"]
        assert subject not in response.get_data(as_text=True)
    everything = reader.get("/v1/audit/entries", query_string={"limit": 1000})
    text = everything.get_data(as_text=True)
    assert len(everything.get_json()["entries"]) == len(history.facts)
    assert not [subject for subject in SUBJECTS if subject in text]


def test_the_client_filter_is_the_actor_name(
    history: History, reader: Caller, names: dict[str, str]
) -> None:
    for label in ("shop", "mailer", "admin"):
        entries = all_entries(reader, client=names[label])
        assert entries
        assert {entry["actor"] for entry in entries} == {names[label]}
    # the label is not a client name: nothing is found under it
    assert get_page(reader, client="shop")["entries"] == []


# --- the shape of an entry -------------------------------------------------------------------


def test_entries_have_the_documented_shape(
    app: Flask, history: History, reader: Caller, names: dict[str, str]
) -> None:
    response = reader.get("/v1/audit/entries", query_string={"limit": 1000})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"entries", "next_cursor"}
    assert body["next_cursor"] is None
    policy_hash = reader.get("/v1/policies").get_json()["policy_hash"]
    previous = "0" * 64
    for entry, fact in zip(body["entries"], history.facts, strict=True):
        assert set(entry) == ENTRY_KEYS
        assert entry["request_id"] == fact.request_id
        assert datetime.fromisoformat(entry["at"]) == fact.at
        assert entry["actor"] == names[fact.actor]
        assert entry["action"] == fact.action
        assert entry["subject"] == (pseudonym(app, fact.subject) if fact.subject else None)
        assert entry["purpose"] == fact.purpose
        assert entry["outcome"] == fact.outcome
        assert entry["reasons"] == list(fact.reasons)
        assert entry["decision_id"] == fact.decision_id
        assert isinstance(entry["fields"], dict)
        assert entry["policy_hash"] == policy_hash
        assert entry["prev_hash"] == previous
        assert entry["scheme"] == 2 and len(entry["entry_id"]) == 36
        assert len(entry["hash"]) == 64 and entry["hash"] != previous
        previous = entry["hash"]


def test_decision_and_collection_entries_carry_their_fields(
    history: History, reader: Caller
) -> None:
    by_request = {entry["request_id"]: entry for entry in all_entries(reader)}
    allowed = next(f for f in history.facts if f.action == "decision" and f.outcome == "allow")
    assert set(by_request[allowed.request_id]["fields"]) == {"used", "dropped"}
    consent = next(f for f in history.facts if f.action == "consent.grant")
    assert by_request[consent.request_id]["fields"]["source"] == NOTICE["source"]
    refused = next(f for f in history.facts if f.outcome == "refused")
    assert by_request[refused.request_id]["fields"] == {
        "database": "shop_events",
        "accepted": [],
        "refused": {"0": "stale"},
    }


# --- who may read --------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["shop", "mailer"])
@pytest.mark.parametrize(
    "path", ["/v1/audit/entries", "/v1/audit/entries?action=decision", "/v1/audit/summary"]
)
def test_app_clients_may_not_read_the_audit_log(
    history: History, callers: dict[str, Caller], label: str, path: str
) -> None:
    body = problem(callers[label].get(path), 403)
    assert body["code"] == "forbidden"


@pytest.mark.parametrize("path", ["/v1/audit/entries", "/v1/audit/summary"])
def test_the_audit_log_needs_a_key(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 401


# --- bad queries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"action": "decide"}, "action"),
        ({"action": "DECISION"}, "action"),
        ({"action": ""}, "action"),
        ({"since": "2026-06-01T10:00:00"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-13-01T10:00:00Z"}, "since"),
        ({"until": "2026-06-01T10:00:00"}, "until"),
        ({"until": "tomorrow"}, "until"),
        ({"until": "1780000000"}, "until"),
        ({"since": "2026-06-01T10:00:00Z", "until": "2026-06-01T10:00:00Z"}, "until"),
        ({"since": "2026-06-01T10:00:00Z", "until": "2026-06-01T09:00:00Z"}, "until"),
        ({"since": "2026-06-01T10:00:00Z", "until": "2026-06-01T11:00:00+02:00"}, "until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"subject_id": "has space"}, "subject_id"),
        ({"subject_id": "x" * 257}, "subject_id"),
        ({"purpose": ""}, "purpose"),
        ({"subject": "alice@example.com"}, "subject"),
        ({"actor": "shop"}, "actor"),
        ({"page": "2"}, "page"),
    ],
    ids=_query_id,
)
def test_a_bad_query_is_422_naming_the_parameter(
    history: History, reader: Caller, query: dict[str, str], field: str
) -> None:
    body = problem(reader.get("/v1/audit/entries", query_string=query))
    assert body["code"] == "invalid_input"
    assert list(body["errors"]) == [field]


def _encoded(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "not-a-cursor",
        "abc",
        _encoded("seq:"),
        _encoded("seq:abc"),
        _encoded("seq:-1"),
        _encoded("seq:1.5"),
        _encoded("row:3"),
        _encoded("3"),
        _encoded("seq:99999999999999999999"),
        base64.urlsafe_b64encode(b"\xff\xfe:3").decode(),
    ],
)
def test_a_garbage_cursor_is_422_naming_cursor(
    history: History, reader: Caller, cursor: str
) -> None:
    body = problem(reader.get("/v1/audit/entries", query_string={"cursor": cursor}))
    assert list(body["errors"]) == ["cursor"]


@pytest.mark.parametrize("limit", [1, 1000])
def test_the_limit_bounds_are_accepted(history: History, reader: Caller, limit: int) -> None:
    page = get_page(reader, limit=limit)
    assert len(page["entries"]) == min(limit, len(history.facts))


# --- paging --------------------------------------------------------------------------------

PAGED_QUERIES: list[Query] = [
    {},
    {"purpose": "recommendations"},
    {"subject_id": CAROL},
    {"client": "shop", "since": T2},
]


@pytest.mark.parametrize("query", PAGED_QUERIES, ids=_query_id)
@pytest.mark.parametrize("limit", [1, 2, 3, 5, 1000])
def test_cursor_paging_returns_every_matching_entry_once_in_seq_order(
    history: History, reader: Caller, names: dict[str, str], query: Query, limit: int
) -> None:
    expected = expected_ids(history.facts, query)
    pages = all_pages(reader, **params(query, names), limit=limit)
    assert request_ids([e for page in pages for e in page["entries"]]) == expected
    assert len(pages) == max(1, math.ceil(len(expected) / limit))
    assert all(len(page["entries"]) == limit for page in pages[:-1])
    assert 0 < len(pages[-1]["entries"]) <= limit
    assert pages[-1]["next_cursor"] is None


def test_a_full_last_page_has_no_cursor(history: History, reader: Caller) -> None:
    matching = expected_ids(history.facts, {"action": "decision"})
    assert len(matching) == 8  # so pages of 4 fill the last page exactly
    pages = all_pages(reader, action="decision", limit=4)
    assert [len(page["entries"]) for page in pages] == [4, 4]
    assert request_ids([e for page in pages for e in page["entries"]]) == matching
    assert pages[-1]["next_cursor"] is None


def test_a_cursor_can_be_used_again(history: History, reader: Caller) -> None:
    first = get_page(reader, limit=4)
    again = get_page(reader, limit=4, cursor=first["next_cursor"])
    assert get_page(reader, limit=4, cursor=first["next_cursor"]) == again
    assert again["entries"][0]["seq"] == first["entries"][-1]["seq"] + 1


def test_the_cursor_carries_the_filter_forward_only(
    history: History, reader: Caller, names: dict[str, str]
) -> None:
    """A cursor is a position: used with another filter it continues after that position."""
    first = get_page(reader, limit=2)
    after = first["entries"][-1]["seq"]
    rest = all_entries(reader, client=names["shop"], cursor=first["next_cursor"])
    expected = [
        fact.request_id
        for seq, fact in enumerate(history.facts, start=1)
        if seq > after and fact.actor == "shop"
    ]
    assert request_ids(rest) == expected


def append_more(history: History, round_: int) -> None:
    """Entries that match the recommendations filter, and some that do not."""
    at = T4 + timedelta(minutes=round_)
    with time_machine.travel(at, tick=False):
        history.personalize("shop", ALICE, "recommendations", "fallback")
        history.personalize("mailer", BOB, "email_marketing", "deny")
        history.consent("shop", BOB, "recommendations", granted=True)
        history.events("shop", CAROL, [event("click", at - timedelta(hours=1))], "accepted")
        history.personalize("admin", BOB, "recommendations", "allow")


@pytest.mark.parametrize(
    "query",
    [{"purpose": "recommendations"}, {"until": T3}, {"since": T3}, {}],
    ids=_query_id,
)
def test_entries_appended_between_pages_are_neither_repeated_nor_skipped(
    history: History, reader: Caller, names: dict[str, str], query: Query
) -> None:
    seen: list[Json] = []
    page = get_page(reader, **params(query, names), limit=2)
    seen += page["entries"]
    for round_ in range(3):
        append_more(history, round_)
        assert page["next_cursor"] is not None
        page = get_page(reader, **params(query, names), limit=2, cursor=page["next_cursor"])
        seen += page["entries"]
    while page["next_cursor"] is not None:
        page = get_page(reader, **params(query, names), limit=2, cursor=page["next_cursor"])
        seen += page["entries"]
    assert request_ids(seen) == expected_ids(history.facts, query)
    assert page["next_cursor"] is None
    seqs = [entry["seq"] for entry in seen]
    assert seqs == sorted(set(seqs))


def test_entries_appended_after_a_page_show_up_on_the_next_one(
    history: History, reader: Caller
) -> None:
    query = {"purpose": "recommendations"}
    before = expected_ids(history.facts, query)
    first = get_page(reader, **query, limit=len(before) - 1)
    assert first["next_cursor"] is not None
    append_more(history, 0)
    second = get_page(reader, **query, limit=1000, cursor=first["next_cursor"])
    expected = expected_ids(history.facts, query)
    assert len(expected) > len(before)
    assert request_ids(second["entries"]) == expected[len(before) - 1 :]
    assert second["next_cursor"] is None


# --- summary -------------------------------------------------------------------------------


def expected_summary(facts: list[Fact], since: datetime | None, until: datetime | None) -> Json:
    window = [
        f for f in facts if (since is None or f.at >= since) and (until is None or f.at < until)
    ]
    decisions: dict[str, Counter[str]] = {}
    refusals: Counter[str] = Counter()
    consents: dict[str, dict[str, int]] = {}
    for fact in window:
        if fact.action == "decision":
            assert fact.purpose is not None
            decisions.setdefault(fact.purpose, Counter())[fact.outcome] += 1
            if fact.outcome != "allow":
                refusals.update(fact.reasons)
        elif fact.action in ("consent.grant", "consent.withdraw"):
            assert fact.purpose is not None
            counts = consents.setdefault(fact.purpose, {"granted": 0, "withdrawn": 0})
            counts["granted" if fact.action == "consent.grant" else "withdrawn"] += 1
    return {
        "entries": len(window),
        "decisions": {purpose: dict(counts) for purpose, counts in decisions.items()},
        "refusals": dict(refusals),
        "consents": consents,
        # this history has no purge or erasure; tests/test_retention.py covers those
        "purges": {"runs": 0, "dry_runs": 0, "deleted": {}},
        "erasures": 0,
        "actions": dict(Counter(fact.action for fact in window)),
    }


NUMBERS = ("entries", "decisions", "refusals", "consents", "purges", "erasures", "actions")
WINDOWS = [
    (None, None),
    (T2, None),
    (None, T2),
    (T2, T3),
    (T2 + TICK, None),
    (None, T3 + TICK),
    (T1.astimezone(PLUS_TWO), T3.astimezone(PLUS_TWO)),
]
EMPTY_WINDOWS = [(T4, None), (None, T1), (T1 + TICK, T2)]


def _window_id(window: tuple[datetime | None, datetime | None]) -> str:
    return "..".join(t.isoformat() if t else "" for t in window)


def window_params(since: datetime | None, until: datetime | None) -> dict[str, str]:
    found = {"since": since, "until": until}
    return {key: value.isoformat() for key, value in found.items() if value is not None}


def get_summary(reader: Caller, since: datetime | None, until: datetime | None) -> Json:
    response = reader.get("/v1/audit/summary", query_string=window_params(since, until))
    assert response.status_code == 200, response.get_json()
    body: Json = response.get_json()
    return body


@pytest.mark.parametrize("window", WINDOWS, ids=_window_id)
def test_the_summary_counts_what_happened_in_the_window(
    history: History, reader: Caller, window: tuple[datetime | None, datetime | None]
) -> None:
    since, until = window
    expected = expected_summary(history.facts, since, until)
    assert 0 < expected["entries"]
    found = get_summary(reader, since, until)
    assert set(found) == {"since", "until", *NUMBERS}
    assert {key: found[key] for key in NUMBERS} == expected
    for key, value in (("since", since), ("until", until)):
        assert (found[key] and datetime.fromisoformat(found[key])) == value


def test_the_summary_of_everything_has_the_numbers_of_the_seed(
    history: History, auditor: Caller
) -> None:
    """The seed's own numbers, spelled out once, so expected_summary is checked too."""
    found = get_summary(auditor, None, None)
    assert found["decisions"] == {
        "recommendations": {"fallback": 3, "allow": 1},
        "email_marketing": {"allow": 1, "deny": 1},
        "ads_personalization": {"fallback": 1, "allow": 1},
    }
    assert found["refusals"] == {
        "no_consent": 2,
        "consent_withdrawn": 1,
        "objection": 1,
        "gpc_objection": 1,
    }
    assert found["consents"] == {
        "recommendations": {"granted": 1, "withdrawn": 1},
        "email_marketing": {"granted": 0, "withdrawn": 1},
        "ads_personalization": {"granted": 1, "withdrawn": 0},
    }
    assert found["actions"] == {
        "decision": 8,
        "consent.grant": 2,
        "consent.withdraw": 2,
        "events.collect": 2,
        "attributes.collect": 2,
    }
    assert found["entries"] == len(history.facts) == 16


@pytest.mark.parametrize("window", EMPTY_WINDOWS, ids=_window_id)
def test_a_window_without_entries_summarizes_to_nothing(
    history: History, auditor: Caller, window: tuple[datetime | None, datetime | None]
) -> None:
    found = get_summary(auditor, *window)
    assert {key: found[key] for key in NUMBERS} == {
        "entries": 0,
        "decisions": {},
        "refusals": {},
        "consents": {},
        "purges": {"runs": 0, "dry_runs": 0, "deleted": {}},
        "erasures": 0,
        "actions": {},
    }


@pytest.mark.parametrize("window", [*WINDOWS, *EMPTY_WINDOWS], ids=_window_id)
def test_the_cli_summary_prints_the_same_numbers(
    history: History, auditor: Caller, runner: Any, window: tuple[datetime | None, datetime | None]
) -> None:
    since, until = window
    args = ["audit", "summary"]
    for option, value in window_params(since, until).items():
        args += [f"--{option}", value]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    over_http = get_summary(auditor, since, until)
    assert {key: printed[key] for key in NUMBERS} == {key: over_http[key] for key in NUMBERS}
    assert {key: printed[key] for key in NUMBERS} == expected_summary(history.facts, since, until)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-06-01T10:00:00"], "UTC offset"),
        (["--since", "yesterday"], "ISO 8601"),
        (["--until", "2026-06-01"], "UTC offset"),
    ],
)
def test_the_cli_summary_refuses_a_bad_time(
    history: History, runner: Any, args: list[str], message: str
) -> None:
    result = runner.invoke(args=["audit", "summary", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "2026-06-01T10:00:00"}, "since"),
        ({"since": "soon"}, "since"),
        ({"until": "2026-06-01T10:00:00"}, "until"),
        ({"since": "2026-06-01T10:00:00Z", "until": "2026-06-01T10:00:00Z"}, "until"),
        ({"since": "2026-06-01T11:00:00Z", "until": "2026-06-01T10:00:00Z"}, "until"),
        ({"purpose": "recommendations"}, "purpose"),
        ({"limit": "10"}, "limit"),
    ],
    ids=_query_id,
)
def test_a_bad_summary_query_is_422_naming_the_parameter(
    history: History, reader: Caller, query: dict[str, str], field: str
) -> None:
    body = problem(reader.get("/v1/audit/summary", query_string=query))
    assert list(body["errors"]) == [field]


def test_an_erasure_counts_once_though_its_key_destruction_is_confirmed_apart(
    admin: Caller, auditor: Caller
) -> None:
    body = {"database": "crm", "attributes": {"email": "ann@example.com"}}
    assert admin.patch("/v1/subjects/ann/attributes", json=body).status_code == 200
    assert admin.request("DELETE", "/v1/subjects/ann").get_json()["key_destroyed"] is True

    found = get_summary(auditor, None, None)

    assert found["actions"]["subject.erase"] == 2  # the erasure, then its key's destruction
    assert found["erasures"] == 1
