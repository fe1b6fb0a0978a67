"""Decode IAB TCF v2.2 and v2.3 TC strings: the core segment whole, Disclosed Vendors and
Publisher TC segments.

    tc = decode_tc_string("CQt-4cAQuQzaRAfAHCENCWFoALwAAEPgAAYgF5wA4...", now=datetime.now(UTC))
    755 in tc.vendor_consents, tc.purpose_consents, tc.last_updated
    # raises TCStringError(code, message) on any string it cannot take

No maintained Python package decodes v2.2/v2.3 strings, so this is the gateway's own; it is
tested against strings made by the IAB Tech Lab's encoder (tests/fixtures/tcf/). Nothing here
does I/O: the clock comes in as `now`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from functools import lru_cache

from gateway.errors import InvalidInput

# Clocks of the CMPs drift: a string updated a little in the future is still believable.
CLOCK_SKEW = timedelta(minutes=5)
# The oldest policy version the gateway takes: 4 is TCF v2.2, 5 is v2.3.
MIN_POLICY_VERSION = 4
DISCLOSED_VENDORS_REQUIRED_FROM = 5
MAX_TC_STRING_LENGTH = 65536

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SIXTETS = {char: index for index, char in enumerate(_ALPHABET)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TCStringErrorCode(StrEnum):
    """Why a TC string was refused."""

    NOT_BASE64URL = "not_base64url"
    TRUNCATED = "truncated"
    UNSUPPORTED_VERSION = "unsupported_version"
    POLICY_VERSION_TOO_OLD = "policy_version_too_old"
    LAST_UPDATED_IN_FUTURE = "last_updated_in_future"
    DISCLOSED_VENDORS_MISSING = "disclosed_vendors_missing"
    UNKNOWN_SEGMENT_TYPE = "unknown_segment_type"
    DUPLICATE_SEGMENT = "duplicate_segment"
    INVALID_VENDOR_RANGE = "invalid_vendor_range"


class TCStringError(InvalidInput):
    """A TC string the gateway cannot take: a 422 naming `tcf`, with the code saying why."""

    def __init__(self, code: TCStringErrorCode, message: str) -> None:
        super().__init__(message, {"tcf": [message]}, code=code)
        self.code = code


class RestrictionType(IntEnum):
    """A publisher restriction's type (TCF v2 core segment)."""

    NOT_ALLOWED = 0
    REQUIRE_CONSENT = 1
    REQUIRE_LEGITIMATE_INTEREST = 2
    UNDEFINED = 3


class SegmentType(IntEnum):
    CORE = 0
    DISCLOSED_VENDORS = 1
    ALLOWED_VENDORS = 2
    PUBLISHER_TC = 3


@dataclass(frozen=True)
class VendorSet:
    """Vendor ids as a string encodes them: a bitfield, or inclusive ranges.

    The bitfield is kept as the integer it reads as (vendor v is bit `max_vendor_id - v`), not
    as a set of ids: a string may name 65,535 vendors, and decoded strings are cached.
    """

    max_vendor_id: int
    range_encoded: bool
    bitfield: int = 0
    ranges: tuple[tuple[int, int], ...] = ()

    def __contains__(self, vendor_id: object) -> bool:
        if not isinstance(vendor_id, int) or not 1 <= vendor_id <= self.max_vendor_id:
            return False
        if (self.bitfield >> (self.max_vendor_id - vendor_id)) & 1:
            return True
        return any(a <= vendor_id <= b for a, b in self.ranges)

    def as_sorted(self) -> list[int]:
        """Every id, ascending (ranges expanded)."""
        bits = format(self.bitfield, f"0{self.max_vendor_id}b") if self.max_vendor_id else ""
        found = {index + 1 for index, bit in enumerate(bits) if bit == "1"}
        return sorted(found | {v for a, b in self.ranges for v in range(a, b + 1)})


@dataclass(frozen=True)
class PublisherRestriction:
    purpose_id: int
    restriction_type: RestrictionType
    vendors: VendorSet


@dataclass(frozen=True)
class PublisherTC:
    """The Publisher TC segment: the site's own purposes and its custom purposes."""

    purpose_consents: frozenset[int]
    purpose_li_transparency: frozenset[int]
    num_custom_purposes: int
    custom_purpose_consents: frozenset[int]
    custom_purpose_li_transparency: frozenset[int]


@dataclass(frozen=True)
class TCString:
    """A decoded TC string (TCF v2): every field of the segments it carries."""

    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: frozenset[int]
    purpose_consents: frozenset[int]
    purpose_li_transparency: frozenset[int]
    purpose_one_treatment: bool
    publisher_cc: str
    vendor_consents: VendorSet
    vendor_li: VendorSet
    publisher_restrictions: tuple[PublisherRestriction, ...]
    disclosed_vendors: VendorSet | None
    allowed_vendors: VendorSet | None
    publisher: PublisherTC | None
    sha256: str

    def restricted(self, purpose_id: int, vendor_id: int, types: set[RestrictionType]) -> bool:
        """Whether a publisher restriction of one of `types` covers (purpose, vendor)."""
        return any(
            r.purpose_id == purpose_id and r.restriction_type in types and vendor_id in r.vendors
            for r in self.publisher_restrictions
        )


class _Bits:
    """A reader over the bits of one base64url segment, most significant bit first."""

    def __init__(self, segment: str) -> None:
        value = 0
        for char in segment:
            sixtet = _SIXTETS.get(char)
            if sixtet is None:
                raise TCStringError(TCStringErrorCode.NOT_BASE64URL, "Not base64url.")
            value = value << 6 | sixtet
        self.value, self.length, self.position = value, 6 * len(segment), 0

    def uint(self, width: int) -> int:
        end = self.position + width
        if end > self.length:
            raise TCStringError(TCStringErrorCode.TRUNCATED, "The string ends too early.")
        self.position = end
        return (self.value >> (self.length - end)) & ((1 << width) - 1)

    def flag(self) -> bool:
        return self.uint(1) == 1

    def flags(self, width: int) -> frozenset[int]:
        """A fixed bitfield: the 1-based ids whose bits are set."""
        text = format(self.uint(width), f"0{width}b") if width else ""
        return frozenset(index + 1 for index, bit in enumerate(text) if bit == "1")

    def time(self) -> datetime:
        """Deciseconds since 1970 in 36 bits: at most the year 2187, always a datetime."""
        return _EPOCH + timedelta(milliseconds=self.uint(36) * 100)

    def letters(self) -> str:
        return "".join(chr(ord("A") + self.uint(6)) for _ in range(2))

    def ranges(self, max_vendor_id: int) -> tuple[tuple[int, int], ...]:
        """NumEntries, then each entry: IsARange, a vendor id, and the range's end if one."""
        found = []
        for _ in range(self.uint(12)):
            is_range = self.flag()
            start = self.uint(16)
            end = self.uint(16) if is_range else start
            if not 1 <= start <= end <= max_vendor_id:
                raise TCStringError(
                    TCStringErrorCode.INVALID_VENDOR_RANGE,
                    f"A vendor range {start}-{end} outside 1-{max_vendor_id}.",
                )
            found.append((start, end))
        return tuple(found)

    def vendors(self) -> VendorSet:
        """MaxVendorId, IsRangeEncoding, then a bitfield or ranges."""
        max_vendor_id = self.uint(16)
        if self.flag():
            return VendorSet(max_vendor_id, True, ranges=self.ranges(max_vendor_id))
        return VendorSet(max_vendor_id, False, bitfield=self.uint(max_vendor_id))


def _restrictions(bits: _Bits) -> tuple[PublisherRestriction, ...]:
    restrictions = []
    for _ in range(bits.uint(12)):
        purpose_id = bits.uint(6)
        kind = RestrictionType(bits.uint(2))
        restrictions.append(PublisherRestriction(purpose_id, kind, _range_set(bits)))
    return tuple(restrictions)


def _range_set(bits: _Bits) -> VendorSet:
    ranges = bits.ranges(0xFFFF)
    return VendorSet(max((b for _, b in ranges), default=0), True, ranges=ranges)


def _core(segment: str) -> dict[str, object]:
    bits = _Bits(segment)
    version = bits.uint(6)
    if version != 2:
        raise TCStringError(
            TCStringErrorCode.UNSUPPORTED_VERSION, f"Version {version}; only version 2 is read."
        )
    fields: dict[str, object] = {"version": version, "created": bits.time()}
    fields["last_updated"] = bits.time()
    for name in ("cmp_id", "cmp_version"):
        fields[name] = bits.uint(12)
    fields["consent_screen"] = bits.uint(6)
    fields["consent_language"] = bits.letters()
    fields["vendor_list_version"] = bits.uint(12)
    fields["policy_version"] = policy = bits.uint(6)
    if policy < MIN_POLICY_VERSION:
        raise TCStringError(
            TCStringErrorCode.POLICY_VERSION_TOO_OLD,
            f"TCF policy version {policy}; {MIN_POLICY_VERSION} (TCF v2.2) or later is needed.",
        )
    fields["is_service_specific"] = bits.flag()
    fields["use_non_standard_texts"] = bits.flag()
    fields["special_feature_opt_ins"] = bits.flags(12)
    fields["purpose_consents"] = bits.flags(24)
    fields["purpose_li_transparency"] = bits.flags(24)
    fields["purpose_one_treatment"] = bits.flag()
    fields["publisher_cc"] = bits.letters()
    fields["vendor_consents"] = bits.vendors()
    fields["vendor_li"] = bits.vendors()
    fields["publisher_restrictions"] = _restrictions(bits)
    return fields


def _publisher(bits: _Bits) -> PublisherTC:
    consents, li = bits.flags(24), bits.flags(24)
    custom = bits.uint(6)
    return PublisherTC(consents, li, custom, bits.flags(custom), bits.flags(custom))


def _segments(
    segments: list[str],
) -> tuple[VendorSet | None, VendorSet | None, PublisherTC | None]:
    """The optional segments after the core one (Disclosed Vendors, Allowed Vendors, Publisher
    TC); each type at most once."""
    vendors: dict[SegmentType, VendorSet] = {}
    publisher: PublisherTC | None = None
    seen: set[SegmentType] = set()
    for segment in segments:
        bits = _Bits(segment)
        number = bits.uint(3)
        if number not in (1, 2, 3):
            raise TCStringError(
                TCStringErrorCode.UNKNOWN_SEGMENT_TYPE, f"Unknown segment type {number}."
            )
        kind = SegmentType(number)
        if kind in seen:
            raise TCStringError(
                TCStringErrorCode.DUPLICATE_SEGMENT, f"Segment type {number} appears twice."
            )
        seen.add(kind)
        if kind is SegmentType.PUBLISHER_TC:
            publisher = _publisher(bits)
        else:
            vendors[kind] = bits.vendors()
    return (
        vendors.get(SegmentType.DISCLOSED_VENDORS),
        vendors.get(SegmentType.ALLOWED_VENDORS),
        publisher,
    )


def _parse(text: str) -> TCString:
    """Decode without reference to a clock."""
    if not text or len(text) > MAX_TC_STRING_LENGTH:
        raise TCStringError(TCStringErrorCode.TRUNCATED, "Not a TC string of a usable length.")
    if not text.isascii():
        raise TCStringError(TCStringErrorCode.NOT_BASE64URL, "Not base64url.")
    core, *rest = text.split(".")
    if any(not part for part in (core, *rest)):
        raise TCStringError(TCStringErrorCode.TRUNCATED, "An empty segment.")
    fields = _core(core)
    disclosed, allowed, publisher = _segments(rest)
    tc = TCString(
        **fields,  # type: ignore[arg-type]
        disclosed_vendors=disclosed,
        allowed_vendors=allowed,
        publisher=publisher,
        sha256=tc_string_digest(text),
    )
    if disclosed is None and tc.policy_version >= DISCLOSED_VENDORS_REQUIRED_FROM:
        raise TCStringError(
            TCStringErrorCode.DISCLOSED_VENDORS_MISSING,
            "A TCF v2.3 string (policy version 5 on) must carry the Disclosed Vendors segment.",
        )
    return tc


def tc_string_digest(text: str) -> str:
    """The string's SHA-256 (hex): what records and the audit keep instead of the string."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# An app forwards its string with every call: the same string decodes once. Longer strings
# than any CMP makes today are decoded each time, so the cache stays a few megabytes at most.
_cached_parse = lru_cache(maxsize=1024)(_parse)
CACHED_LENGTH = 8192


def decode_tc_string(text: str, *, now: datetime) -> TCString:
    """Decode a TC string whole, or raise TCStringError with a specific code."""
    tc = (_cached_parse if len(text) <= CACHED_LENGTH else _parse)(text)
    if tc.last_updated > now + CLOCK_SKEW:
        raise TCStringError(
            TCStringErrorCode.LAST_UPDATED_IN_FUTURE,
            "LastUpdated is more than 5 minutes ahead of the gateway's clock.",
        )
    return tc
