"""What a TC string says about each purpose, and what of it to record: pure functions.

    says = tcf_verdict(tc, purpose, settings)   # True, False, or an Ignored reason
    plan = plan_tcf(tc, purposes, choices, settings, now)
    [(o.purpose, o.result, o.reason) for o in plan]   # ("recommendations", granted, None), ...

A string never overrides a newer choice: a choice's time is its string's LastUpdated for a
record made from TCF, the time it was recorded for any other. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.policy.engine import ConsentEvent, ConsentState, consent_status
from gateway.policy.model import LegalBasis, Purpose, TcfSettings
from gateway.tcf import RestrictionType, TCString

# A consent purpose is refused where the publisher disallows the vendor (0) or requires
# legitimate interest instead (2); a legitimate-interest one where it disallows (0) or requires
# consent instead (1).
_BLOCKS_CONSENT = {RestrictionType.NOT_ALLOWED, RestrictionType.REQUIRE_LEGITIMATE_INTEREST}
_BLOCKS_LI = {RestrictionType.NOT_ALLOWED, RestrictionType.REQUIRE_CONSENT}


class SignalResult(StrEnum):
    """What applying a string did to one purpose."""

    GRANTED = "granted"
    WITHDRAWN = "withdrawn"
    UNCHANGED = "unchanged"
    IGNORED = "ignored"


class Ignored(StrEnum):
    """Why a string changed nothing for a purpose although it differs from its state."""

    VENDOR_NOT_DISCLOSED = "vendor_not_disclosed"
    NO_PUBLISHER_SEGMENT = "no_publisher_segment"
    STALE = "stale"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Choice:
    """A stored consent change, with the time the subject made it and the digest of the TC
    string it came from (None for other sources)."""

    event: ConsentEvent
    chosen_at: datetime
    tc_sha256: str | None = None


@dataclass(frozen=True)
class PurposeOutcome:
    purpose: str
    result: SignalResult
    reason: Ignored | None = None
    expires_at: datetime | None = None

    @property
    def writes(self) -> bool:
        return self.result in (SignalResult.GRANTED, SignalResult.WITHDRAWN)


def tcf_verdict(tc: TCString, purpose: Purpose, settings: TcfSettings) -> bool | Ignored:
    """True where the string grants a consent purpose (or raises no objection to a legitimate
    interest one), False where it does not, or why it says nothing about us."""
    if settings.vendor_id is None:
        return _publisher_verdict(tc, purpose)
    vendor = settings.vendor_id
    if tc.disclosed_vendors is not None and vendor not in tc.disclosed_vendors:
        return Ignored.VENDOR_NOT_DISCLOSED
    if purpose.legal_basis is LegalBasis.CONSENT:
        purposes, vendors, blocking = tc.purpose_consents, tc.vendor_consents, _BLOCKS_CONSENT
    else:
        purposes, vendors, blocking = tc.purpose_li_transparency, tc.vendor_li, _BLOCKS_LI
    return vendor in vendors and all(
        p in purposes and not tc.restricted(p, vendor, blocking) for p in purpose.tcf_purposes
    )


def _publisher_verdict(tc: TCString, purpose: Purpose) -> bool | Ignored:
    """The site as its own publisher: the Publisher TC segment's purpose bits."""
    if tc.publisher is None:
        return Ignored.NO_PUBLISHER_SEGMENT
    if purpose.legal_basis is LegalBasis.CONSENT:
        allowed = tc.publisher.purpose_consents
    else:
        allowed = tc.publisher.purpose_li_transparency
    return all(p in allowed for p in purpose.tcf_purposes)


def _outcome(
    tc: TCString, purpose: Purpose, says: bool, choices: list[Choice], now: datetime
) -> PurposeOutcome:
    mine = [c for c in choices if c.event.purpose == purpose.id]
    if any(tc.last_updated < c.chosen_at for c in mine):
        return PurposeOutcome(purpose.id, SignalResult.IGNORED, Ignored.STALE)
    if any(c.tc_sha256 == tc.sha256 for c in mine):
        return PurposeOutcome(purpose.id, SignalResult.UNCHANGED)
    expires = None
    if says and purpose.consent_max_age is not None:
        expires = tc.last_updated + purpose.consent_max_age
        if expires <= now:
            return PurposeOutcome(purpose.id, SignalResult.IGNORED, Ignored.EXPIRED)
    state = consent_status(purpose, [c.event for c in mine], now).state
    if state is (ConsentState.GRANTED if says else ConsentState.WITHDRAWN):
        return PurposeOutcome(purpose.id, SignalResult.UNCHANGED)
    result = SignalResult.GRANTED if says else SignalResult.WITHDRAWN
    return PurposeOutcome(purpose.id, result, expires_at=expires)


def plan_tcf(
    tc: TCString,
    purposes: list[Purpose],
    choices: list[Choice],
    settings: TcfSettings,
    now: datetime,
) -> list[PurposeOutcome]:
    """Per purpose mapped to TCF purposes, what the string does: a grant or withdrawal to
    record, nothing (`unchanged`), or nothing for a reason (`ignored`)."""
    plan = []
    for purpose in purposes:
        if not purpose.tcf_purposes:
            continue
        says = tcf_verdict(tc, purpose, settings)
        if isinstance(says, Ignored):
            plan.append(PurposeOutcome(purpose.id, SignalResult.IGNORED, says))
        else:
            plan.append(_outcome(tc, purpose, says, choices, now))
    return plan
