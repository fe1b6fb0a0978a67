"""TC strings made bit by bit, for the cases the IAB's encoder will not make (other versions,
old policies, strings from the future, unknown segments) and for property tests.

    tc_string(purpose_consents=[5, 6], vendor_consents=[755], disclosed_vendors=[755])

tests/test_tcf.py checks that it makes the same strings as the IAB's encoder
(tests/fixtures/tcf/tcf-strings.json) from the same fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "tcf" / "tcf-strings.json"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
LAST_UPDATED = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


def iab_cases() -> list[dict[str, Any]]:
    """The strings the IAB's encoder made, with the fields each was made from."""
    cases: list[dict[str, Any]] = json.loads(FIXTURES.read_text(encoding="utf-8"))["cases"]
    return cases


def iab_string(name_part: str) -> str:
    """The IAB-made string whose case name contains `name_part`."""
    return str(next(c["tc_string"] for c in iab_cases() if name_part in c["name"]))


def uint(value: int, width: int) -> str:
    assert 0 <= value < 1 << width, (value, width)
    return format(value, f"0{width}b") if width else ""


def flags(ids: Iterable[int], width: int) -> str:
    chosen = set(ids)
    return "".join("1" if i in chosen else "0" for i in range(1, width + 1))


def deciseconds(at: datetime) -> str:
    return uint(round(at.timestamp() * 10), 36)


def letters(text: str) -> str:
    return "".join(uint(ord(c) - ord("A"), 6) for c in text)


def ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive ids as inclusive ranges."""
    found: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if found and found[-1][1] == i - 1:
            found[-1] = (found[-1][0], i)
        else:
            found.append((i, i))
    return found


def range_entries(spans: list[tuple[int, int]]) -> str:
    out = uint(len(spans), 12)
    for start, end in spans:
        out += "1" + uint(start, 16) + uint(end, 16) if start != end else "0" + uint(start, 16)
    return out


def vendors(ids: Iterable[int], range_encoded: bool | None = None) -> str:
    """MaxVendorId, IsRangeEncoding and the vendors, by default in the encoding the IAB's
    encoder picks: ranges where shorter and MaxVendorId is above 45 (the shortest range)."""
    chosen = sorted(set(ids))
    top = max(chosen, default=0)
    bitfield = "0" + flags(chosen, top)
    ranged = "1" + range_entries(ranges(chosen))
    if range_encoded is None:
        range_encoded = top > 45 and len(ranged) < len(bitfield)
    return uint(top, 16) + (ranged if range_encoded else bitfield)


def base64url(bits: str) -> str:
    """Padded with zero bits to whole bytes and whole characters (24 bits), as IAB pads."""
    bits += "0" * (-len(bits) % 24)
    return "".join(ALPHABET[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def core_bits(
    *,
    version: int = 2,
    created: datetime = datetime(2026, 11, 20, tzinfo=UTC),
    last_updated: datetime = LAST_UPDATED,
    cmp_id: int = 31,
    cmp_version: int = 7,
    consent_screen: int = 2,
    consent_language: str = "EN",
    vendor_list_version: int = 150,
    policy_version: int = 5,
    is_service_specific: bool = True,
    use_non_standard_texts: bool = False,
    special_feature_opt_ins: Iterable[int] = (),
    purpose_consents: Iterable[int] = (),
    purpose_li_transparency: Iterable[int] = (),
    purpose_one_treatment: bool = False,
    publisher_cc: str = "DE",
    vendor_consents: Iterable[int] = (),
    vendor_li: Iterable[int] = (),
    publisher_restrictions: Iterable[tuple[int, int, Iterable[int]]] = (),
    range_encoded: bool | None = None,
) -> str:
    restrictions = list(publisher_restrictions)
    out = uint(version, 6) + deciseconds(created) + deciseconds(last_updated)
    out += uint(cmp_id, 12) + uint(cmp_version, 12) + uint(consent_screen, 6)
    out += letters(consent_language) + uint(vendor_list_version, 12) + uint(policy_version, 6)
    out += str(int(is_service_specific)) + str(int(use_non_standard_texts))
    out += flags(special_feature_opt_ins, 12)
    out += flags(purpose_consents, 24) + flags(purpose_li_transparency, 24)
    out += str(int(purpose_one_treatment)) + letters(publisher_cc)
    out += vendors(vendor_consents, range_encoded) + vendors(vendor_li, range_encoded)
    out += uint(len(restrictions), 12)
    for purpose, kind, restricted in restrictions:
        out += uint(purpose, 6) + uint(kind, 2) + range_entries(ranges(restricted))
    return out


def disclosed_bits(ids: Iterable[int], segment_type: int = 1) -> str:
    return uint(segment_type, 3) + vendors(ids)


def publisher_bits(
    consents: Iterable[int] = (),
    li: Iterable[int] = (),
    custom_consents: Iterable[int] = (),
    custom_li: Iterable[int] = (),
    num_custom: int = 0,
) -> str:
    out = uint(3, 3) + flags(consents, 24) + flags(li, 24) + uint(num_custom, 6)
    return out + flags(custom_consents, num_custom) + flags(custom_li, num_custom)


def tc_string(
    *,
    disclosed_vendors: Iterable[int] | None = (755,),
    publisher: dict[str, Any] | None = None,
    **core: Any,
) -> str:
    """A whole string: the core segment, Disclosed Vendors unless None, and a Publisher TC
    segment when `publisher` gives its fields."""
    segments = [core_bits(**core)]
    if disclosed_vendors is not None:
        segments.append(disclosed_bits(disclosed_vendors))
    if publisher is not None:
        segments.append(publisher_bits(**publisher))
    return ".".join(base64url(bits) for bits in segments)
