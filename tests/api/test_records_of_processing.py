"""Records of processing (GDPR Art. 30): a record per registered database, drawn from the
registry and policy documents, the same over HTTP (JSON and CSV) and from the CLI."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import isodate
import pytest
import yaml
from flask import Flask

from tests.conftest import Caller

PATH = "/v1/registry/records-of-processing"
# A controller a CSV writer must quote: separators, quotes, a line break, and other scripts.
AWKWARD = 'Shop, "Ltd"; Vertrieb\nשירות 🧾'


def documents_of(documents: tuple[Path, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(registry databases and recipients, policies) as the YAML files say."""
    policies, registry = documents
    databases = yaml.safe_load((registry / "databases.yaml").read_text("utf-8"))["databases"]
    recipients = yaml.safe_load((registry / "recipients.yaml").read_text("utf-8"))["recipients"]
    databases = {
        key: {**spec, "recipients_of_registry": recipients} for key, spec in databases.items()
    }
    loaded: dict[str, Any] = {}
    for name in ("categories", "purposes"):
        loaded.update(yaml.safe_load((policies / f"{name}.yaml").read_text("utf-8")))
    return databases, loaded


def expected_records(documents: tuple[Path, Path], today: date) -> list[dict[str, Any]]:
    """What each record must say, read straight from the documents."""
    databases, policies = documents_of(documents)
    records = []
    for database_id in sorted(databases):
        spec = databases[database_id]
        categories = sorted(spec["categories"])
        records.append(
            {
                "database": database_id,
                "name": spec["name"],
                "controller": spec["controller"],
                "security_officer": spec["security_officer"],
                "reference": spec["reference"],
                "location": spec["location"],
                "transfers": spec.get("transfers", []),
                "review_by": spec["review_by"].isoformat(),
                "active": today <= spec["review_by"],
                "purposes": [
                    {
                        "id": purpose,
                        "description": policies["purposes"][purpose]["description"],
                        "legal_basis": policies["purposes"][purpose]["legal_basis"],
                        "categories": [
                            c
                            for c in policies["purposes"][purpose]["categories"]
                            if c in categories
                        ],
                    }
                    for purpose in sorted(spec["purposes"])
                ],
                "categories": [
                    {
                        "id": category,
                        "retention": policies["categories"][category]["retention"],
                        "pii": policies["categories"][category].get("pii", False),
                        "sensitive": policies["categories"][category].get("sensitive", False),
                    }
                    for category in categories
                ],
                "recipients": [
                    {"id": rid, "name": r["name"], "purposes": sorted(r.get("purposes", []))}
                    for rid, r in sorted(spec["recipients_of_registry"].items())
                    if not r.get("purposes") or set(r["purposes"]) & set(spec["purposes"])
                ],
            }
        )
    return records


@pytest.fixture
def awkward_controller(documents: tuple[Path, Path]) -> None:
    path = documents[1] / "databases.yaml"
    document = yaml.safe_load(path.read_text("utf-8"))
    document["databases"]["crm"]["controller"] = AWKWARD
    path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")


@pytest.mark.parametrize("caller", ["auditor", "admin"])
def test_each_registered_database_has_a_record_of_what_the_documents_say(
    app: Flask, documents: tuple[Path, Path], caller: str, request: pytest.FixtureRequest
) -> None:
    reader: Caller = request.getfixturevalue(caller)
    response = reader.get(PATH)

    assert response.status_code == 200
    body = response.get_json()
    assert body["records"] == expected_records(documents, date.today())
    assert body["policy_hash"] == reader.get("/v1/policies").get_json()["policy_hash"]
    # the demo registry has one registration past its review date
    assert [r["database"] for r in body["records"] if not r["active"]] == ["mobile_location"]


@pytest.mark.usefixtures("awkward_controller")
def test_the_csv_has_a_row_per_database_saying_what_the_json_says(auditor: Caller) -> None:
    records = auditor.get(PATH).get_json()["records"]
    response = auditor.get(f"{PATH}?format=csv")

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [row["database"] for row in rows] == [r["database"] for r in records]
    for row, record in zip(rows, records, strict=True):
        assert row["controller"] == record["controller"]
        assert row["transfers"] == "; ".join(record["transfers"])
        assert row["active"] == str(record["active"]).lower()
        assert row["purposes"].split("; ") == [p["id"] for p in record["purposes"]]
        assert row["legal_bases"].split("; ") == [p["legal_basis"] for p in record["purposes"]]
        assert row["retention"].split("; ") == [c["retention"] for c in record["categories"]]
        pii = [c["id"] for c in record["categories"] if c["pii"]]
        assert row["pii_categories"] == "; ".join(pii)
        assert row["recipients"] == "; ".join(r["name"] for r in record["recipients"])
    assert rows[0]["controller"] == AWKWARD
    # the demo's mail service hears of email_marketing, which crm alone is registered for
    assert [r["recipients"] for r in rows] == ["Newsletter mail service (local relay)", "", ""]


def test_apps_may_not_read_the_records(shop: Caller) -> None:
    response = shop.get(PATH)
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    ("query", "field"), [("format=xml", "format"), ("format=csv&page=2", "page")]
)
def test_a_bad_query_is_refused_naming_the_field(auditor: Caller, query: str, field: str) -> None:
    response = auditor.get(f"{PATH}?{query}")
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_the_cli_exports_the_same_records(app: Flask, auditor: Caller, tmp_path: Path) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["registry", "export"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == auditor.get(PATH).get_json()

    target = tmp_path / "records.csv"
    result = runner.invoke(args=["registry", "export", "--format", "csv", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text("utf-8") == auditor.get(f"{PATH}?format=csv").get_data(as_text=True)


def test_an_access_export_says_of_each_item_its_category_purposes_place_and_end(
    admin: Caller, documents: tuple[Path, Path]
) -> None:
    """Each attribute and event of an access export carries its data category, the purposes
    that may use it where it is held, that database's location, and when it is kept until: as
    the records of processing say of its database and category."""
    at = datetime.now(UTC) - timedelta(days=3)
    event = {"type": "view", "item_id": "s-1", "category": "shoes", "at": at.isoformat()}
    body = {"database": "shop_events", "events": [event]}
    assert admin.post("/v1/subjects/reader/events", body).status_code == 200
    body = {"database": "crm", "attributes": {"email": "r@example.com", "shoe_size": 41}}
    assert admin.patch("/v1/subjects/reader/attributes", body).status_code == 200

    exported = admin.get("/v1/subjects/reader/export").get_json()

    records = {r["database"]: r for r in expected_records(documents, date.today())}
    _, policies = documents_of(documents)
    items = [(item, item["name"]) for item in exported["attributes"]]
    items += [(item, item["type"]) for item in exported["events"]]
    assert len(items) == 3
    for item, name in items:
        record = records[item["database"]]
        category = next(
            c["id"]
            for c in record["categories"]
            if name
            in policies["categories"][c["id"]].get("attributes", [])
            + policies["categories"][c["id"]].get("events", [])
        )
        assert item["data_category"] == category
        assert item["purposes"] == [
            p["id"] for p in record["purposes"] if category in p["categories"]
        ]
        assert item["purposes"]
        assert item["held_in"] == record["location"]
        since = datetime.fromisoformat(item["at"] if "type" in item else item["updated_at"])
        retention = isodate.parse_duration(policies["categories"][category]["retention"])
        assert datetime.fromisoformat(item["kept_until"]) == since + retention
