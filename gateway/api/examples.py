"""The examples the OpenAPI document shows: one story on the demo documents (policies/ and
registry/), told by one instance, so that ids, keys, hashes and signatures agree across them
(the audit exports verify with SIGNING_KEY). tests/test_openapi.py checks each against its schema.

    @blp.response(200, DecisionSchema, example=examples.DECISION)
"""

from __future__ import annotations

from typing import Any

from gateway.api.contract import POLICY_HASH
from gateway.audit.export import CSV_COLUMNS as AUDIT_CSV_COLUMNS
from gateway.audit.export import RENDER
from gateway.policy.records import CSV_COLUMNS as RECORDS_CSV_COLUMNS

POLICY_HASH_EXAMPLE: str = POLICY_HASH["example"]
PSEUDONYM = "v1:f313cf39:15769d6a9018b2de1c9f007574000d94076563ba9147d6071bd6796d123a25ed"


RECEIPT: dict[str, Any] = {
    "payload": {
        "receipt_id": "52970cdd-0722-448e-b7dc-d0527fcbc90f",
        "subject": PSEUDONYM,
        "purpose": "recommendations",
        "granted": True,
        "source": "web_banner",
        "notice_version": "2026-01",
        "recorded_at": "2026-12-03T17:08:15.021617+00:00",
        "expires_at": None,
        "policy_hash": POLICY_HASH_EXAMPLE,
        "key_id": "f313cf39",
    },
    "algorithm": "Ed25519",
    "signature": "5wUr8ZR8b_jizQwZJmPFXCo2g_-7Fb0VoAkmj8IShezEW56zu016hbe_BrI4OzKO_KV_tTpicU9J3"
    "Idaz6BlBA==",
}
CONSENT_RECORD: dict[str, Any] = {
    "purpose": "recommendations",
    "granted": True,
    "source": "web_banner",
    "notice_version": "2026-01",
    "recorded_at": "2026-12-03T17:08:15.021617+00:00",
    "expires_at": "2028-01-03T17:08:15.021617+00:00",
    "client": "demo-admin",
    "receipt": RECEIPT,
}
PURPOSE_STATE = {
    "purpose": "recommendations",
    "legal_basis": "consent",
    "state": "granted",
    "lawful": True,
    "reason": "consent_granted",
    "expires_at": "2028-01-03T17:08:15.021617+00:00",
    "history": [CONSENT_RECORD],
}
SUBJECT_CONSENTS = {
    "subject_id": "alice",
    "purposes": [
        PURPOSE_STATE,
        {
            "purpose": "ads_personalization",
            "legal_basis": "consent",
            "state": "never_asked",
            "lawful": False,
            "reason": "no_consent",
            "expires_at": None,
            "history": [],
        },
    ],
}
CONSENT_CHANGE = {"granted": True, "source": "web_banner", "notice_version": "2026-01"}
# A string of tests/fixtures/tcf/tcf-strings.json: vendor 755 has consent for purposes 1 and
# 3-6, and the publisher disallows it purpose 3 (a restriction of type 0).
TC_STRING = (
    "CQt-4cAQuQzaRAfAHCENCWFgALwAAEIAAAYgF6QAYF5gXoBekAGBeYF6ABhgAIC8x0AGBeYF6CwAIC9A"
    ".IF6QAYF5gXoA.YAAAAAAAAAAA"
)
TCF_SIGNAL = {"tcf": TC_STRING, "source": "web_cmp"}
TCF_APPLIED = {
    "subject_id": "alice",
    "tcf": {
        "sha256": "aa27b98ccccf50adcd698c90e8e818f3e031ae3aad36dc752879218c2d46dd53",
        "cmp_id": 31,
        "vendor_list_version": 150,
        "policy_version": 5,
        "last_updated": "2026-11-25T10:30:00.100000+00:00",
    },
    "purposes": [
        {
            "purpose": "recommendations",
            "result": "granted",
            "reason": None,
            "receipt_id": "0b6f6a55-3f43-4c1e-9d2a-7d54b8e0c2f1",
        },
        {
            "purpose": "ads_personalization",
            "result": "withdrawn",
            "reason": None,
            "receipt_id": "c3d1e0a4-58a2-4f0b-8f5e-61c2a9d7b3e4",
        },
    ],
}


PERSONALIZE = {
    "subject_id": "alice",
    "purpose": "recommendations",
    "candidates": [
        {"id": "sku-2", "category": "shoes", "features": {"brand": "acme", "size": 42}},
        {"id": "sku-40", "category": "books", "popularity": 90},
        {"id": "sku-9", "category": "socks"},
    ],
    "context": {"page": "home"},
    "limit": 2,
}
DECISION = {
    "decision_id": "620f71fe-cafa-41b0-9f95-eef905f78199",
    "outcome": "allow",
    "personalized": True,
    "items": [{"id": "sku-2", "score": 1.5}, {"id": "sku-40", "score": 0.048731}],
    "reasons": ["consent_granted"],
    "fields_used": ["browsing", "favorite_brand", "purchase_history", "shoe_size"],
    "fields_dropped": [
        {"field": "email", "database": "crm", "reason": "not_needed_for_purpose", "count": 1}
    ],
    "policy_hash": POLICY_HASH_EXAMPLE,
}


EVENTS = {
    "database": "shop_events",
    "events": [
        {"type": "view", "item_id": "sku-2", "category": "shoes", "at": "2026-12-01T10:00:00Z"},
        {
            "type": "store_visit",
            "item_id": "store-7",
            "category": "stores",
            "at": "2026-12-01T10:05:00Z",
        },
    ],
}
EVENTS_RESULT = {"accepted": [0], "refused": {"1": "category_not_registered"}}
ATTRIBUTES = {
    "database": "crm",
    "attributes": {"favorite_brand": "acme", "email": "dave@example.com", "religion": "x"},
}
ATTRIBUTES_RESULT = {
    "accepted": ["email", "favorite_brand"],
    "refused": {"religion": "unknown_attribute"},
}


ENTRY: dict[str, Any] = {
    "seq": 5,
    "at": "2026-12-03T17:08:15.021617+00:00",
    "actor": "demo-admin",
    "action": "consent.grant",
    "subject": PSEUDONYM,
    "purpose": "recommendations",
    "outcome": "recorded",
    "reasons": [],
    "fields": {
        "notice_version": "2026-01",
        "receipt_id": "52970cdd-0722-448e-b7dc-d0527fcbc90f",
        "source": "web_banner",
    },
    "policy_hash": POLICY_HASH_EXAMPLE,
    "request_id": "9233693c32e2498a99b8f3b6b4749a50",
    "decision_id": None,
    "prev_hash": "5b40cbb6e5bec5082aa19bbd24ee7bd36288feec74506efd77af98abec4a6f2a",
    "hash": "b6d15089ec279c9c338cc12f6a129a342a5a4a00030b9c9b7c615b7e45475390",
    "scheme": 2,
    "entry_id": "b49b9d24-6949-4a35-8f90-eb67b76d0de4",
}
ENTRIES = {"entries": [ENTRY], "next_cursor": "c2VxOjU="}
VERIFICATION = {
    "ok": True,
    "entries": 18,
    "first_bad_seq": None,
    "problem": None,
    "checkpoints": 0,
    "last_seq": 18,
}
CHECKPOINT = {
    "seq": 21,
    "hash": "a77054b18f05789f25817ea3153ae98e8c2d103864f4e9568547730499d36b91",
    "at": "2026-12-03T17:08:15.102186+00:00",
    "key_id": "f313cf39",
    "signature": "mYLbbfhnligme8PQyf7_MxvYvdAfexXkHrtXLh4XMAQ-SpjMFnkyLS46ru_Rf30Jl4dtpqTqwYFRH7Z"
    "Oojs7BQ==",
    "every": 100,
}
SUMMARY = {
    "since": None,
    "until": None,
    "entries": 20,
    "decisions": {"recommendations": {"allow": 1, "fallback": 1}},
    "refusals": {"consent_withdrawn": 1},
    "consents": {"recommendations": {"granted": 3, "withdrawn": 1}},
    "purges": {"runs": 0, "dry_runs": 0, "deleted": {}},
    "erasures": 0,
    "actions": {"decision": 2, "consent.grant": 3, "consent.withdraw": 1, "events.collect": 5},
}
# An export of that one entry (since its time, until a microsecond later)
AUDIT_EXPORT_HEADER = {
    "record": "header",
    "format": "gateway-audit-export/2",
    "algorithm": "Ed25519",
    "key_id": "f313cf39",
    "public_key": "Fw_6wzxtajPZmQHhpOvUQdC5EMWoYQAFK3rghdJosFw=",
    "since": "2026-12-03T17:08:15.021617+00:00",
    "until": "2026-12-03T17:08:15.021618+00:00",
    "first_seq": 5,
    "anchor": "5b40cbb6e5bec5082aa19bbd24ee7bd36288feec74506efd77af98abec4a6f2a",
    "checkpoint_every": 100,
    "next_checkpoint": 100,
}
AUDIT_EXPORT_FOOTER = {
    "record": "footer",
    "entries": 1,
    "checkpoints": 0,
    "last_seq": 5,
    "last_hash": "b6d15089ec279c9c338cc12f6a129a342a5a4a00030b9c9b7c615b7e45475390",
}
# per format: when it was exported, the digest of its header line, the footer's signature
AUDIT_EXPORT_SIGNED = {
    "jsonl": (
        "2026-12-03T17:23:36.771925+00:00",
        "b7c26ed3e6b6875d6034816aec414fe4509cc2415c23fda96578a67b8a429953",
        "ILaP8Jvfi2P-hiCJdNUds8-B3KOI9szcoPZk58sz9OiPhBuUxBPjAGSHyDpTpBT1lKt_9xoEbACCZpiad_ajBw==",
    ),
    "csv": (
        "2026-12-03T17:23:36.779787+00:00",
        "82df4f0d11f7a5599cdbebf3cc774cd6bf5ae87c1105cf5373b6eac383c229fb",
        "xN-gM5fy1bkiCcm1pMYS8U6mjzMcltdPBvbXIrpFxDqgm521W0TLuA0F0OLYh_LmikSXgAv-nJ9W_JXJYrsgAw==",
    ),
}


def audit_export(fmt: str) -> str:
    """The export of ENTRY alone, as the gateway renders it in `fmt`."""
    exported_at, digest, signature = AUDIT_EXPORT_SIGNED[fmt]
    header = {**AUDIT_EXPORT_HEADER, "exported_at": exported_at}
    footer = {**AUDIT_EXPORT_FOOTER, "header_digest": digest, "signature": signature}
    records = (header, {"record": "entry", **ENTRY}, footer)
    columns = ",".join(AUDIT_CSV_COLUMNS) + "\n" if fmt == "csv" else ""
    return columns + "".join(RENDER[fmt](record) for record in records)


ERASURE = {
    "subject_id": "carol",
    "erased": True,
    "key_destroyed": True,
    "deleted": {"attributes": 0, "events": 2, "consents": 2},
}
SUBJECT_EXPORT = {
    "subject_id": "alice",
    "pseudonym": PSEUDONYM,
    "exported_at": "2026-12-03T17:08:15.071206+00:00",
    "attributes": [
        {
            "database": "crm",
            "name": "favorite_brand",
            "value": "acme",
            "updated_at": "2026-12-03T17:08:15.026771+00:00",
            "data_category": "preferences",
            "purposes": ["email_marketing", "recommendations"],
            "held_in": "IL",
            "kept_until": "2028-12-02T17:08:15.026771+00:00",
        }
    ],
    "events": [
        {
            "database": "shop_events",
            "type": "purchase",
            "item_id": "sku-9",
            "category": "socks",
            "at": "2026-11-30T17:08:15.018280+00:00",
            "received_at": "2026-12-03T17:08:15.026771+00:00",
            "data_category": "purchase_history",
            "purposes": ["recommendations"],
            "held_in": "IL",
            "kept_until": "2027-11-30T17:08:15.018280+00:00",
        }
    ],
    "consents": [{**CONSENT_RECORD, "expires_at": None}],
    "audit_entries": [ENTRY],
}


CRM_REGISTRATION = {
    "id": "crm",
    "name": "Customer relationship database",
    "controller": "Example Shop Ltd",
    "security_officer": "dpo@example.com",
    "purposes": ["recommendations", "email_marketing"],
    "categories": ["preferences", "contact", "purchase_history"],
    "location": "IL",
    "transfers": ["EU"],
    "reference": "REG-2023-0117",
    "review_by": "2027-12-31",
    "active": True,
}
POLICIES = {
    "policy_hash": POLICY_HASH_EXAMPLE,
    "categories": {
        "browsing": {"events": ["view", "click", "add_to_cart"], "retention": "P90D"},
        "contact": {"attributes": ["email", "phone"], "retention": "P1095D", "pii": True},
    },
    "purposes": {
        "recommendations": {
            "description": "Product recommendations in the web shop and the app",
            "legal_basis": "consent",
            "categories": ["purchase_history", "browsing", "preferences"],
            "honor_gpc": False,
            "consent_max_age": "P13M",
            "fallback": "popular",
            "tcf_purposes": [5, 6],
            "scoring": {
                "half_life": "P14D",
                "event_weights": {"purchase": 3, "add_to_cart": 2, "click": 1, "view": 0.5},
                "exclude_purchased_within": "P30D",
                "segments": [
                    {
                        "name": "favorite_brand",
                        "attribute": "favorite_brand",
                        "candidate_field": "brand",
                        "weight": 0.5,
                    }
                ],
            },
        }
    },
    "tcf": {"vendor_id": 755},
}
RECORDS = {
    "policy_hash": POLICY_HASH_EXAMPLE,
    "records": [
        {
            "database": "crm",
            "name": "Customer relationship database",
            "controller": "Example Shop Ltd",
            "security_officer": "dpo@example.com",
            "reference": "REG-2023-0117",
            "location": "IL",
            "transfers": ["EU"],
            "review_by": "2027-12-31",
            "active": True,
            "purposes": [
                {
                    "id": "recommendations",
                    "description": "Product recommendations in the web shop and the app",
                    "legal_basis": "consent",
                    "categories": ["purchase_history", "preferences"],
                }
            ],
            "categories": [
                {"id": "contact", "retention": "P1095D", "pii": True, "sensitive": False},
                {"id": "preferences", "retention": "P730D", "pii": False, "sensitive": False},
            ],
            "recipients": [
                {
                    "id": "mail_service",
                    "name": "Newsletter mail service (local relay)",
                    "purposes": ["email_marketing"],
                }
            ],
        }
    ],
}
RECORDS_CSV = (
    ",".join(RECORDS_CSV_COLUMNS) + "\n"
    "crm,Customer relationship database,Example Shop Ltd,dpo@example.com,REG-2023-0117,IL,EU,"
    "2027-12-31,true,email_marketing; recommendations,legitimate_interest; consent,"
    "Product suggestions in newsletters to existing customers; Product recommendations in the"
    " web shop and the app,contact; preferences; purchase_history,P1095D; P730D; P365D,"
    "contact,,Newsletter mail service (local relay)\n"
)
REGISTRY = {"policy_hash": POLICY_HASH_EXAMPLE, "databases": [CRM_REGISTRATION]}
SIGNING_KEY = {
    "key_id": "f313cf39",
    "algorithm": "Ed25519",
    "public_key": "Fw_6wzxtajPZmQHhpOvUQdC5EMWoYQAFK3rghdJosFw=",
    "public_key_pem": "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAFw_6wzxtajPZmQHhpOvUQdC5EMWoYQAFK3rghdJosFw=\n"
    "-----END PUBLIC KEY-----\n",
}


PURGE_RUN = {
    "id": 1,
    "started_at": "2026-12-03T03:00:00.012020+00:00",
    "finished_at": "2026-12-03T03:00:00.230914+00:00",
    "status": "finished",
    "dry_run": False,
    "policy_hash": POLICY_HASH_EXAMPLE,
    "categories": [
        {"category": "browsing", "kind": "events", "found": 12, "deleted": 12, "seconds": 0.0021},
        {"category": "contact", "kind": "attributes", "found": 0, "deleted": 0, "seconds": 0.0008},
        {
            "category": "recommendations",
            "kind": "consents",
            "found": 0,
            "deleted": 0,
            "seconds": 0.0033,
        },
    ],
}
PURGE_LIST = {"runs": [PURGE_RUN]}


DELIVERY = {
    "id": "msg_2f1c0e8a9b7d4c3e8f6a5b4c3d2e1f00",
    "recipient": "mail_service",
    "type": "consent.changed",
    "subject": PSEUDONYM,
    "status": "failed",
    "attempts": 7,
    "created_at": "2026-12-03T09:12:44.120331+00:00",
    "next_attempt_at": None,
    "last_error": "HTTP 503",
    "finished_at": "2026-12-04T03:48:12.004117+00:00",
}
DELIVERIES = {"deliveries": [DELIVERY]}
DELIVERY_RETRIED = {
    **DELIVERY,
    "status": "pending",
    "attempts": 0,
    "next_attempt_at": "2026-12-04T08:00:00.000000+00:00",
    "finished_at": None,
}
RECIPIENT = {
    "id": "mail_service",
    "name": "Newsletter mail service (local relay)",
    "purposes": ["email_marketing"],
    "url": "http://127.0.0.1:8025/webhooks/consent",
    "secret_env": "DEMO_MAIL_WEBHOOK_SECRET",
}
RECIPIENTS = {"policy_hash": POLICY_HASH_EXAMPLE, "recipients": [RECIPIENT]}
RESYNC = {"recipient": "mail_service", "subjects": 1200, "messages": 1130, "skipped": 3}
