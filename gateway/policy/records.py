"""Records of processing (GDPR Art. 30): what a registrar asks of each registered database, drawn
from the registry and the policy set alone.

    records = records_of_processing(policies, now)     # one record per registered database,
                                                         # with the recipients of its data
    text = records_csv(records)                          # the same, a row per database
    item_terms(policies, HoldingKind.EVENT, "view", "shop_events", at)   # one held item's terms
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import isodate

from gateway.policy.engine import HoldingKind
from gateway.policy.model import PolicySet, Recipient, Registration

# The columns of the CSV form, in order; lists are joined with "; ".
CSV_COLUMNS = [
    "database",
    "name",
    "controller",
    "security_officer",
    "reference",
    "location",
    "transfers",
    "review_by",
    "active",
    "purposes",
    "legal_bases",
    "purpose_descriptions",
    "categories",
    "retention",
    "pii_categories",
    "sensitive_categories",
    "recipients",
]


def recipients_of(policies: PolicySet, registration: Registration) -> list[Recipient]:
    """Who the database's data is disclosed to (Art. 30(1)(d)): the recipients told of a purpose
    it is registered for, and those told of erasures only, which learn every subject's id."""
    return [
        r
        for r in sorted(policies.recipients.values(), key=lambda r: r.id)
        if not r.purposes or set(r.purposes) & set(registration.purposes)
    ]


def records_of_processing(policies: PolicySet, now: datetime) -> list[dict[str, Any]]:
    """Per registered database: who is responsible, where it is held and sent, until when it is
    registered, and per purpose and data category what the policy set says of them."""
    records = []
    for registration in sorted(policies.databases.values(), key=lambda r: r.id):
        purposes = [policies.purposes[p] for p in sorted(registration.purposes)]
        categories = [policies.categories[c] for c in sorted(registration.categories)]
        records.append(
            {
                "database": registration.id,
                "name": registration.name,
                "controller": registration.controller,
                "security_officer": registration.security_officer,
                "reference": registration.reference,
                "location": registration.location,
                "transfers": list(registration.transfers),
                "review_by": registration.review_by.isoformat(),
                "active": not registration.expired(now),
                "purposes": [
                    {
                        "id": p.id,
                        "description": p.description,
                        "legal_basis": p.legal_basis.value,
                        # what of this database the purpose may use
                        "categories": [c for c in p.categories if c in registration.categories],
                    }
                    for p in purposes
                ],
                "categories": [
                    {
                        "id": c.id,
                        "retention": isodate.duration_isoformat(c.retention),
                        "pii": c.pii,
                        "sensitive": c.sensitive,
                    }
                    for c in categories
                ],
                "recipients": [
                    {"id": r.id, "name": r.name, "purposes": sorted(r.purposes)}
                    for r in recipients_of(policies, registration)
                ],
            }
        )
    return records


def _joined(values: Sequence[str]) -> str:
    return "; ".join(values)


def records_csv(records: list[dict[str, Any]]) -> str:
    """The records as CSV, a row per database, in `CSV_COLUMNS` order (lists joined by "; ",
    lists of purposes and categories aligned item by item)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        purposes, categories = record["purposes"], record["categories"]
        writer.writerow(
            {
                **{k: record[k] for k in CSV_COLUMNS[:6]},
                "transfers": _joined(record["transfers"]),
                "review_by": record["review_by"],
                "active": "true" if record["active"] else "false",
                "purposes": _joined([p["id"] for p in purposes]),
                "legal_bases": _joined([p["legal_basis"] for p in purposes]),
                "purpose_descriptions": _joined([p["description"] for p in purposes]),
                "categories": _joined([c["id"] for c in categories]),
                "retention": _joined([c["retention"] for c in categories]),
                "pii_categories": _joined([c["id"] for c in categories if c["pii"]]),
                "sensitive_categories": _joined([c["id"] for c in categories if c["sensitive"]]),
                "recipients": _joined([r["name"] for r in record["recipients"]]),
            }
        )
    return buffer.getvalue()


def item_terms(
    policies: PolicySet, kind: HoldingKind, name: str, database_id: str, at: datetime
) -> dict[str, Any]:
    """What an access export says of one stored item beside its value: its data category, the
    purposes that may use it there, where its database is held, and until when it is kept (its
    time plus its category's retention). What the documents no longer know is None or empty."""
    is_attribute = kind is HoldingKind.ATTRIBUTE
    category = (
        policies.category_of_attribute(name) if is_attribute else policies.category_of_event(name)
    )
    registration = policies.databases.get(database_id)
    purposes = (
        []
        if category is None or registration is None
        else [
            p
            for p in sorted(registration.purposes)
            if category.id in policies.purposes[p].categories
        ]
    )
    return {
        "data_category": None if category is None else category.id,
        "purposes": purposes,
        "held_in": None if registration is None else registration.location,
        "kept_until": None if category is None else (at + category.retention).isoformat(),
    }
