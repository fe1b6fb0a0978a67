"""The TCF rules: what a string says of each purpose, and what applying it records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.engine import ConsentEvent
from gateway.policy.model import LegalBasis, Purpose, TcfSettings
from gateway.policy.signals import Choice, Ignored, SignalResult, plan_tcf, tcf_verdict
from gateway.tcf import TCString, decode_tc_string
from tests.tcf_strings import LAST_UPDATED, tc_string

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
US = TcfSettings(vendor_id=755)
PUBLISHER = TcfSettings()
CONTENT = Purpose("recommendations", "d", LegalBasis.CONSENT, ("browsing",), tcf_purposes=(5, 6))
MEASURE = Purpose(
    "measurement", "d", LegalBasis.LEGITIMATE_INTEREST, ("browsing",), tcf_purposes=(7,)
)
EVERY_CONSENT = {"purpose_consents": [1, 3, 4, 5, 6], "vendor_consents": [755]}
EVERY_LI = {"purpose_li_transparency": [2, 7, 8], "vendor_li": [755]}


def decode(**fields: Any) -> TCString:
    return decode_tc_string(tc_string(**fields), now=NOW)


# -- consent purposes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (EVERY_CONSENT, True),
        ({**EVERY_CONSENT, "purpose_consents": [1, 5]}, False),  # purpose 6 refused
        ({**EVERY_CONSENT, "vendor_consents": [754, 756]}, False),  # our vendor refused
        ({**EVERY_CONSENT, "publisher_restrictions": [(6, 0, [755])]}, False),  # not allowed
        ({**EVERY_CONSENT, "publisher_restrictions": [(5, 2, [700, 755])]}, False),  # LI only
        ({**EVERY_CONSENT, "publisher_restrictions": [(5, 1, [755])]}, True),  # consent: fine
        ({**EVERY_CONSENT, "publisher_restrictions": [(5, 0, [756]), (4, 0, [755])]}, True),
        ({**EVERY_CONSENT, **EVERY_LI, "purpose_consents": []}, False),  # LI is no consent
    ],
)
def test_a_consent_purpose_needs_every_purpose_and_the_vendor_and_no_restriction(
    fields: dict[str, Any], says: bool
) -> None:
    assert tcf_verdict(decode(**fields), CONTENT, US) is says


# -- legitimate interest purposes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (EVERY_LI, True),
        ({**EVERY_LI, "purpose_li_transparency": [2, 8]}, False),  # objected to purpose 7
        ({**EVERY_LI, "vendor_li": [754]}, False),  # objected to our vendor
        ({**EVERY_LI, "publisher_restrictions": [(7, 0, [755])]}, False),  # not allowed
        ({**EVERY_LI, "publisher_restrictions": [(7, 1, [755])]}, False),  # consent required
        ({**EVERY_LI, "publisher_restrictions": [(7, 2, [755])]}, True),  # LI required: fine
        ({**EVERY_CONSENT, "purpose_consents": [7], "vendor_consents": [755]}, False),
    ],
)
def test_a_legitimate_interest_purpose_is_unobjected_with_transparency_and_no_restriction(
    fields: dict[str, Any], says: bool
) -> None:
    assert tcf_verdict(decode(**fields), MEASURE, US) is says


# -- disclosure and publisher mode -------------------------------------------------------------


def test_a_vendor_not_disclosed_is_told_nothing() -> None:
    tc = decode(**EVERY_CONSENT, disclosed_vendors=[10, 754, 756])
    assert tcf_verdict(tc, CONTENT, US) is Ignored.VENDOR_NOT_DISCLOSED
    assert tcf_verdict(tc, MEASURE, US) is Ignored.VENDOR_NOT_DISCLOSED


def test_a_v2_2_string_without_disclosed_vendors_speaks_to_every_vendor() -> None:
    tc = decode(**EVERY_CONSENT, policy_version=4, disclosed_vendors=None)
    assert tcf_verdict(tc, CONTENT, US) is True


@pytest.mark.parametrize(
    ("publisher", "content", "measure"),
    [
        ({"consents": [5, 6], "li": [7]}, True, True),
        ({"consents": [5], "li": [2]}, False, False),
        ({"consents": [], "li": [5, 6, 7]}, False, True),
    ],
)
def test_publisher_mode_reads_the_publisher_segment(
    publisher: dict[str, Any], content: bool, measure: bool
) -> None:
    # the core segment says the opposite, to show it is not read
    core = {"purpose_consents": [] if content else [5, 6], "vendor_consents": [755]}
    tc = decode(**core, publisher=publisher)
    assert (tcf_verdict(tc, CONTENT, PUBLISHER), tcf_verdict(tc, MEASURE, PUBLISHER)) == (
        content,
        measure,
    )


def test_publisher_mode_without_a_publisher_segment_is_told_nothing() -> None:
    tc = decode(**EVERY_CONSENT)
    assert tcf_verdict(tc, CONTENT, PUBLISHER) is Ignored.NO_PUBLISHER_SEGMENT


# -- what to record ----------------------------------------------------------------------------


def choice(
    granted: bool, at: datetime, sha: str | None = None, purpose: str = CONTENT.id
) -> Choice:
    """A stored choice; a TCF one was recorded later than it was made."""
    recorded = at + timedelta(hours=1) if sha else at
    return Choice(ConsentEvent(purpose, granted, recorded), at, sha)


def plan(tc: TCString, choices: list[Choice], purpose: Purpose = CONTENT) -> tuple[Any, ...]:
    [outcome] = plan_tcf(tc, [purpose], choices, US, NOW)
    return outcome.result, outcome.reason


GRANT = decode(**EVERY_CONSENT)
REFUSAL = decode(purpose_consents=[1], vendor_consents=[755])


def test_a_first_string_records_what_it_says() -> None:
    assert plan(GRANT, []) == (SignalResult.GRANTED, None)
    assert plan(REFUSAL, []) == (SignalResult.WITHDRAWN, None)


def test_a_string_older_than_the_newest_choice_is_stale() -> None:
    newer = [choice(True, LAST_UPDATED + timedelta(seconds=1))]
    assert plan(REFUSAL, newer) == (SignalResult.IGNORED, Ignored.STALE)
    same_time = [choice(True, LAST_UPDATED)]
    assert plan(REFUSAL, same_time) == (SignalResult.WITHDRAWN, None)


def test_a_tcf_choice_counts_from_its_strings_last_updated_not_when_it_was_recorded() -> None:
    # recorded an hour after LAST_UPDATED, but made at LAST_UPDATED - 1 s: the string is newer
    earlier_string = [choice(True, LAST_UPDATED - timedelta(seconds=1), sha="0" * 64)]
    assert plan(REFUSAL, earlier_string) == (SignalResult.WITHDRAWN, None)


def test_the_same_string_twice_records_nothing() -> None:
    applied = [choice(False, LAST_UPDATED, sha=GRANT.sha256)]
    assert plan(GRANT, applied) == (SignalResult.UNCHANGED, None)


def test_a_string_that_agrees_with_the_state_records_nothing() -> None:
    assert plan(GRANT, [choice(True, LAST_UPDATED - timedelta(days=1))]) == (
        SignalResult.UNCHANGED,
        None,
    )
    assert plan(REFUSAL, [choice(False, LAST_UPDATED)]) == (SignalResult.UNCHANGED, None)


def test_choices_for_other_purposes_do_not_count() -> None:
    other = [choice(True, NOW, purpose="ads_personalization")]
    assert plan(REFUSAL, other) == (SignalResult.WITHDRAWN, None)


def test_a_grant_lapses_from_the_strings_last_updated() -> None:
    aged = Purpose(
        "recommendations",
        "d",
        LegalBasis.CONSENT,
        ("browsing",),
        consent_max_age=timedelta(days=30),
        tcf_purposes=(5, 6),
    )
    [fresh] = plan_tcf(GRANT, [aged], [], US, NOW)
    assert (fresh.result, fresh.expires_at) == (
        SignalResult.GRANTED,
        GRANT.last_updated + timedelta(days=30),
    )
    [old] = plan_tcf(GRANT, [aged], [], US, GRANT.last_updated + timedelta(days=30))
    assert (old.result, old.reason) == (SignalResult.IGNORED, Ignored.EXPIRED)


def test_only_mapped_purposes_are_planned() -> None:
    unmapped = Purpose("email_marketing", "d", LegalBasis.LEGITIMATE_INTEREST, ("contact",))
    outcomes = plan_tcf(GRANT, [unmapped, CONTENT], [], US, NOW)
    assert [o.purpose for o in outcomes] == [CONTENT.id]


@settings(max_examples=100, deadline=None)
@given(
    consents=st.lists(st.integers(1, 11), unique=True),
    vendors=st.lists(st.integers(750, 760), unique=True),
    restricted=st.lists(st.tuples(st.integers(1, 11), st.integers(0, 3)), max_size=3),
)
def test_a_grant_is_exactly_the_rule(
    consents: list[int], vendors: list[int], restricted: list[tuple[int, int]]
) -> None:
    restrictions = [(p, kind, [755]) for p, kind in restricted]
    tc = decode(
        purpose_consents=consents, vendor_consents=vendors, publisher_restrictions=restrictions
    )
    blocked = {p for p, kind in restricted if kind in (0, 2)}
    expected = 755 in vendors and all(p in consents and p not in blocked for p in (5, 6))
    assert tcf_verdict(tc, CONTENT, US) is expected
