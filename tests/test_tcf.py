"""The TC string decoder: against the IAB Tech Lab's encoder, every field, every error code, and
any string at all either decodes or raises TCStringError."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.tcf import (
    RestrictionType,
    TCString,
    TCStringError,
    TCStringErrorCode,
    decode_tc_string,
)
from tests.tcf_strings import (
    ALPHABET,
    base64url,
    core_bits,
    disclosed_bits,
    iab_cases,
    iab_string,
    publisher_bits,
    tc_string,
    uint,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
IAB_CASES = iab_cases()


def decode(text: str, now: datetime = NOW) -> TCString:
    return decode_tc_string(text, now=now)


def refusal(text: str, now: datetime = NOW) -> TCStringErrorCode:
    with pytest.raises(TCStringError) as caught:
        decode(text, now)
    return caught.value.code


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def as_fixture(tc: TCString) -> dict[str, Any]:
    """The decoded string in the fixture's terms."""
    fields: dict[str, Any] = {
        "version": tc.version,
        "created": tc.created,
        "last_updated": tc.last_updated,
        "cmp_id": tc.cmp_id,
        "cmp_version": tc.cmp_version,
        "consent_screen": tc.consent_screen,
        "consent_language": tc.consent_language,
        "vendor_list_version": tc.vendor_list_version,
        "policy_version": tc.policy_version,
        "is_service_specific": tc.is_service_specific,
        "use_non_standard_texts": tc.use_non_standard_texts,
        "special_feature_opt_ins": sorted(tc.special_feature_opt_ins),
        "purpose_consents": sorted(tc.purpose_consents),
        "purpose_li_transparency": sorted(tc.purpose_li_transparency),
        "purpose_one_treatment": tc.purpose_one_treatment,
        "publisher_cc": tc.publisher_cc,
        "vendor_consents": tc.vendor_consents.as_sorted(),
        "vendor_consents_range_encoded": tc.vendor_consents.range_encoded,
        "vendor_li": tc.vendor_li.as_sorted(),
        "publisher_restrictions": [
            {
                "purpose": r.purpose_id,
                "type": int(r.restriction_type),
                "vendors": r.vendors.as_sorted(),
            }
            for r in tc.publisher_restrictions
        ],
        "disclosed_vendors": tc.disclosed_vendors.as_sorted() if tc.disclosed_vendors else None,
        "publisher": None,
    }
    if tc.publisher is not None:
        fields["publisher"] = {
            "purpose_consents": sorted(tc.publisher.purpose_consents),
            "purpose_li_transparency": sorted(tc.publisher.purpose_li_transparency),
            "custom_purpose_consents": sorted(tc.publisher.custom_purpose_consents),
            "custom_purpose_li_transparency": sorted(tc.publisher.custom_purpose_li_transparency),
            "num_custom_purposes": tc.publisher.num_custom_purposes,
        }
    return fields


# -- against the IAB's encoder -----------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [c for c in IAB_CASES if "v2.3 without" not in c["name"]],
    ids=lambda c: c["name"],
)
def test_every_field_of_a_string_the_iab_encoder_made(case: dict[str, Any]) -> None:
    expected = dict(case["expected"])
    expected["created"] = instant(expected["created"])
    expected["last_updated"] = instant(expected["last_updated"])
    decoded = decode(case["tc_string"])
    assert as_fixture(decoded) == expected
    assert decoded.sha256 == hashlib.sha256(case["tc_string"].encode()).hexdigest()


def test_the_fixtures_cover_both_vendor_encodings_restrictions_and_segments() -> None:
    """The cases the brief asks of the IAB-made strings are there to be decoded."""
    found = [c["expected"] for c in IAB_CASES]
    assert {e["vendor_consents_range_encoded"] for e in found} == {True, False}
    assert {r["type"] for e in found for r in e["publisher_restrictions"]} == {0, 1, 2}
    assert any(e["publisher"] and e["publisher"]["num_custom_purposes"] for e in found)
    assert {e["policy_version"] for e in found} == {4, 5}


def test_a_v2_3_string_without_disclosed_vendors_from_the_iab_encoder_is_refused() -> None:
    assert (
        refusal(iab_string("v2.3 without the disclosed"))
        is TCStringErrorCode.DISCLOSED_VENDORS_MISSING
    )


@pytest.mark.parametrize("case", IAB_CASES, ids=lambda c: c["name"])
def test_the_test_encoder_makes_the_iab_strings_from_the_same_fields(case: dict[str, Any]) -> None:
    """tests/tcf_strings.py, which makes the strings the IAB's encoder will not, agrees with it
    bit for bit on the strings it does make."""
    e = case["expected"]
    restrictions = [(r["purpose"], r["type"], r["vendors"]) for r in e["publisher_restrictions"]]
    core = core_bits(
        created=instant(e["created"]),
        last_updated=instant(e["last_updated"]),
        cmp_id=e["cmp_id"],
        cmp_version=e["cmp_version"],
        consent_screen=e["consent_screen"],
        consent_language=e["consent_language"],
        vendor_list_version=e["vendor_list_version"],
        policy_version=e["policy_version"],
        is_service_specific=e["is_service_specific"],
        use_non_standard_texts=e["use_non_standard_texts"],
        special_feature_opt_ins=e["special_feature_opt_ins"],
        purpose_consents=e["purpose_consents"],
        purpose_li_transparency=e["purpose_li_transparency"],
        purpose_one_treatment=e["purpose_one_treatment"],
        publisher_cc=e["publisher_cc"],
        vendor_consents=e["vendor_consents"],
        vendor_li=e["vendor_li"],
        publisher_restrictions=restrictions,
    )
    segments = [core]
    if e["disclosed_vendors"] is not None:
        segments.append(disclosed_bits(e["disclosed_vendors"]))
    if e["publisher"] is not None:
        p = e["publisher"]
        segments.append(
            publisher_bits(
                p["purpose_consents"],
                p["purpose_li_transparency"],
                p["custom_purpose_consents"],
                p["custom_purpose_li_transparency"],
                p["num_custom_purposes"],
            )
        )
    assert ".".join(base64url(s) for s in segments) == case["tc_string"]


# -- fields the IAB cases leave at one value ---------------------------------------------------


def test_padding_to_six_bits_decodes_as_padding_to_whole_bytes() -> None:
    bits = core_bits(purpose_consents=[5, 6], vendor_consents=[755], vendor_li=[1])  # 289 bits
    six = "".join(ALPHABET[int(c, 2)] for c in _sixes(bits))
    eight = base64url(bits)
    assert len(six) < len(eight)
    dv = base64url(disclosed_bits([755]))
    assert as_fixture(decode(f"{six}.{dv}")) == as_fixture(decode(f"{eight}.{dv}"))


def _sixes(bits: str) -> list[str]:
    bits += "0" * (-len(bits) % 6)
    return [bits[i : i + 6] for i in range(0, len(bits), 6)]


def test_bitfield_and_range_encodings_of_the_same_vendors_decode_alike() -> None:
    ids = [1, 2, 3, 40, 755, 756]
    as_bits = decode(tc_string(vendor_consents=ids, vendor_li=ids, range_encoded=False))
    as_ranges = decode(tc_string(vendor_consents=ids, vendor_li=ids, range_encoded=True))
    assert (as_bits.vendor_consents.range_encoded, as_ranges.vendor_consents.range_encoded) == (
        False,
        True,
    )
    assert as_bits.vendor_consents.as_sorted() == as_ranges.vendor_consents.as_sorted() == ids
    assert (
        755 in as_ranges.vendor_li and 757 not in as_ranges.vendor_li and 4 not in as_bits.vendor_li
    )


def test_restrictions_are_found_by_purpose_vendor_and_type() -> None:
    tc = decode(tc_string(publisher_restrictions=[(3, 0, [700, 701, 702]), (7, 1, [755])]))
    assert tc.restricted(3, 701, {RestrictionType.NOT_ALLOWED})
    assert not tc.restricted(3, 755, {RestrictionType.NOT_ALLOWED})
    assert not tc.restricted(7, 755, {RestrictionType.NOT_ALLOWED})
    assert tc.restricted(7, 755, {RestrictionType.REQUIRE_CONSENT})


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("CQt-4cA+QuQ", TCStringErrorCode.NOT_BASE64URL),
        ("CQt-4cA=", TCStringErrorCode.NOT_BASE64URL),
        ("CQt-é", TCStringErrorCode.NOT_BASE64URL),
        ("", TCStringErrorCode.TRUNCATED),
        ("CQt", TCStringErrorCode.TRUNCATED),
        (base64url(core_bits())[:20], TCStringErrorCode.TRUNCATED),
        (base64url(core_bits()) + "..YAAA", TCStringErrorCode.TRUNCATED),
        (tc_string(version=1), TCStringErrorCode.UNSUPPORTED_VERSION),
        (tc_string(version=3), TCStringErrorCode.UNSUPPORTED_VERSION),
        (tc_string(policy_version=3), TCStringErrorCode.POLICY_VERSION_TOO_OLD),
        (
            tc_string(policy_version=2, disclosed_vendors=None),
            TCStringErrorCode.POLICY_VERSION_TOO_OLD,
        ),
        (tc_string(disclosed_vendors=None), TCStringErrorCode.DISCLOSED_VENDORS_MISSING),
        (
            tc_string() + "." + base64url(uint(5, 3) + "0" * 20),
            TCStringErrorCode.UNKNOWN_SEGMENT_TYPE,
        ),
        (tc_string() + "." + base64url(disclosed_bits([755])), TCStringErrorCode.DUPLICATE_SEGMENT),
        (tc_string() + "." + base64url(uint(3, 3)), TCStringErrorCode.TRUNCATED),
        (
            base64url(core_bits(vendor_consents=[5], range_encoded=True)[:240]),
            TCStringErrorCode.TRUNCATED,
        ),
    ],
)
def test_a_string_it_cannot_take_is_refused_with_its_code(
    text: str, code: TCStringErrorCode
) -> None:
    assert refusal(text) is code


def test_a_vendor_range_that_ends_before_it_starts_is_refused() -> None:
    bits = core_bits()
    # the vendor consents section starts after 213 bits: MaxVendorId 10, ranges, one 9-3
    section = uint(10, 16) + "1" + uint(1, 12) + "1" + uint(9, 16) + uint(3, 16)
    rest = core_bits()[213 + 17 :]
    text = base64url(bits[:213] + section + rest) + "." + base64url(disclosed_bits([755]))
    assert refusal(text) is TCStringErrorCode.INVALID_VENDOR_RANGE


def test_a_v2_2_string_needs_no_disclosed_vendors() -> None:
    tc = decode(tc_string(policy_version=4, disclosed_vendors=None))
    assert (tc.policy_version, tc.disclosed_vendors) == (4, None)


@pytest.mark.parametrize(
    ("ahead", "refused"),
    [(timedelta(minutes=4, seconds=59), False), (timedelta(minutes=5, seconds=1), True)],
)
def test_last_updated_may_be_at_most_five_minutes_ahead(ahead: timedelta, refused: bool) -> None:
    text = tc_string(last_updated=NOW + ahead)
    if refused:
        assert refusal(text) is TCStringErrorCode.LAST_UPDATED_IN_FUTURE
    else:
        assert decode(text).last_updated == NOW + ahead


def test_a_string_decoded_before_is_still_checked_against_the_clock() -> None:
    text = tc_string(last_updated=NOW + timedelta(hours=1))
    assert decode(text, NOW + timedelta(hours=1)).last_updated == NOW + timedelta(hours=1)
    assert refusal(text, NOW) is TCStringErrorCode.LAST_UPDATED_IN_FUTURE


# -- properties --------------------------------------------------------------------------------

VENDOR_IDS = st.lists(st.integers(1, 3000), max_size=30, unique=True)
PURPOSES = st.lists(st.integers(1, 24), max_size=24, unique=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    purposes=PURPOSES,
    li=PURPOSES,
    consents=VENDOR_IDS,
    vendor_li=VENDOR_IDS,
    disclosed=VENDOR_IDS,
    range_encoded=st.none() | st.booleans(),
    restrictions=st.lists(
        st.tuples(st.integers(1, 24), st.integers(0, 3), VENDOR_IDS.filter(bool)), max_size=4
    ),
    cmp_id=st.integers(0, 4095),
    last_updated=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2026, 12, 1), timezones=st.just(UTC)
    ),
)
def test_what_is_encoded_decodes_back(
    purposes: list[int],
    li: list[int],
    consents: list[int],
    vendor_li: list[int],
    disclosed: list[int],
    range_encoded: bool | None,
    restrictions: list[tuple[int, int, list[int]]],
    cmp_id: int,
    last_updated: datetime,
) -> None:
    text = tc_string(
        purpose_consents=purposes,
        purpose_li_transparency=li,
        vendor_consents=consents,
        vendor_li=vendor_li,
        disclosed_vendors=disclosed,
        range_encoded=range_encoded,
        publisher_restrictions=restrictions,
        cmp_id=cmp_id,
        last_updated=last_updated,
    )
    tc = decode(text)
    assert (sorted(tc.purpose_consents), sorted(tc.purpose_li_transparency)) == (
        sorted(purposes),
        sorted(li),
    )
    assert tc.vendor_consents.as_sorted() == sorted(consents)
    assert tc.vendor_li.as_sorted() == sorted(vendor_li)
    assert tc.disclosed_vendors is not None and tc.disclosed_vendors.as_sorted() == sorted(
        disclosed
    )
    assert [
        (r.purpose_id, int(r.restriction_type), r.vendors.as_sorted())
        for r in tc.publisher_restrictions
    ] == [(p, k, sorted(v)) for p, k, v in restrictions]
    assert tc.cmp_id == cmp_id
    assert abs(tc.last_updated - last_updated) <= timedelta(milliseconds=50)


BASE64URL_TEXT = st.text(alphabet=ALPHABET + ".", max_size=200)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=120) | BASE64URL_TEXT)
def test_any_text_decodes_or_is_refused_with_a_code(text: str) -> None:
    try:
        tc = decode(text)
    except TCStringError as exc:
        assert exc.code in set(TCStringErrorCode)
    else:
        assert tc.version == 2 and tc.policy_version >= 4


@settings(max_examples=200, deadline=None)
@given(
    case=st.sampled_from(IAB_CASES),
    cut=st.integers(0, 400),
    flips=st.lists(st.integers(0, 3000), max_size=3),
)
def test_cut_or_flipped_iab_strings_decode_or_are_refused_with_a_code(
    case: dict[str, Any], cut: int, flips: list[int]
) -> None:
    chars = list(case["tc_string"][:cut])
    for flip in flips:
        if chars:
            i = flip % len(chars)
            if chars[i] != ".":
                chars[i] = ALPHABET[(ALPHABET.index(chars[i]) + flip) % 64]
    try:
        decode("".join(chars))
    except TCStringError as exc:
        assert exc.code in set(TCStringErrorCode)
