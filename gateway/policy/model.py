"""The policy set as plain, immutable data, and the closed vocabularies of decisions.

Nothing here does I/O: `documents.py` builds a `PolicySet` from files, `engine.py` reasons over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeAlias

import isodate

# The event type of a purchase: the scorer leaves out items bought within a purpose's window.
PURCHASE = "purchase"

# isodate returns a plain timedelta, or its own Duration when months or years are involved;
# both can be subtracted from a datetime.
Duration: TypeAlias = timedelta | isodate.Duration


class LegalBasis(StrEnum):
    CONSENT = "consent"
    LEGITIMATE_INTEREST = "legitimate_interest"
    CONTRACT = "contract"


class Fallback(StrEnum):
    POPULAR = "popular"
    NONE = "none"


class Outcome(StrEnum):
    ALLOW = "allow"
    FALLBACK = "fallback"
    DENY = "deny"


class Reason(StrEnum):
    """Machine-readable reasons for a decision or for holding a field back."""

    CONSENT_GRANTED = "consent_granted"
    LEGITIMATE_INTEREST = "legitimate_interest"
    CONTRACT = "contract"
    NO_CONSENT = "no_consent"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    CONSENT_EXPIRED = "consent_expired"
    OBJECTION = "objection"
    GPC_OBJECTION = "gpc_objection"
    NO_REGISTERED_DATABASE = "no_registered_database"
    UNREGISTERED_DATABASE = "unregistered_database"
    REGISTRATION_EXPIRED = "registration_expired"
    PURPOSE_NOT_REGISTERED = "purpose_not_registered"
    CATEGORY_NOT_REGISTERED = "category_not_registered"
    NOT_NEEDED_FOR_PURPOSE = "not_needed_for_purpose"
    NO_PURPOSE_NEEDS_IT = "no_purpose_needs_it"
    PURPOSE_NOT_GRANTED = "purpose_not_granted"
    SENSITIVE_NEEDS_CONSENT = "sensitive_needs_consent"
    RETENTION_EXPIRED = "retention_expired"
    STALE = "stale"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_ATTRIBUTE = "unknown_attribute"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"


@dataclass(frozen=True)
class Category:
    """A data category: which attributes and events belong to it and how long they are kept."""

    id: str
    retention: Duration
    attributes: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    pii: bool = False
    sensitive: bool = False


@dataclass(frozen=True)
class Segment:
    """An attribute rule: a subject attribute equal to a candidate field adds `weight`."""

    name: str
    attribute: str
    candidate_field: str
    weight: float


@dataclass(frozen=True)
class ScoringRules:
    half_life: Duration = timedelta(days=14)
    event_weights: dict[str, float] = field(default_factory=dict)
    exclude_purchased_within: Duration | None = None
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class Purpose:
    id: str
    description: str
    legal_basis: LegalBasis
    categories: tuple[str, ...]
    honor_gpc: bool = False
    consent_max_age: Duration | None = None
    # how long a consent record is kept after it stops counting (None: purged at once)
    consent_history_retention: Duration | None = None
    fallback: Fallback = Fallback.POPULAR
    scoring: ScoringRules = field(default_factory=ScoringRules)
    # the IAB TCF purposes (ids 1-11) a TC string must allow for this purpose
    tcf_purposes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Registration:
    """A registered database holding personal data."""

    id: str
    name: str
    controller: str
    security_officer: str
    purposes: tuple[str, ...]
    categories: tuple[str, ...]
    location: str
    reference: str
    review_by: date
    transfers: tuple[str, ...] = ()

    def expired(self, now: datetime) -> bool:
        """A registration past its review date counts as absent."""
        return now.date() > self.review_by


@dataclass(frozen=True)
class TcfSettings:
    """How TC strings are read: as vendor `vendor_id`, or (None) as the site's own publisher
    through the Publisher TC segment."""

    vendor_id: int | None = None


@dataclass(frozen=True)
class Recipient:
    """Who personal data is disclosed to, told of each consent change of its purposes and of
    each erasure by a signed webhook; `secret_env` names the variable holding its secret."""

    id: str
    name: str
    purposes: tuple[str, ...]
    url: str
    secret_env: str


@dataclass(frozen=True)
class PolicySet:
    categories: dict[str, Category]
    purposes: dict[str, Purpose]
    databases: dict[str, Registration]
    hash: str
    documents: dict[str, Any] = field(default_factory=dict, compare=False)
    tcf: TcfSettings | None = None
    recipients: dict[str, Recipient] = field(default_factory=dict)

    def category_of_attribute(self, name: str) -> Category | None:
        return next((c for c in self.categories.values() if name in c.attributes), None)

    def category_of_event(self, event_type: str) -> Category | None:
        return next((c for c in self.categories.values() if event_type in c.events), None)
