"""Loading and validating policies/ and registry/: counts, hash, and errors naming file and key."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from click.testing import CliRunner

from gateway.cli import main
from gateway.policy.documents import PolicyError, load_policy_set
from gateway.policy.model import Fallback, LegalBasis

Documents = tuple[Path, Path]
HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def replace_in(path: Path, old: str, new: str) -> None:
    """Edit one document in place; the text to replace must be there exactly once."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def problems_of(documents: Documents) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_set(*documents)
    # the same problems, grouped by the file (or folder) they name
    grouped = [f"{path}: {m}" for path, found in caught.value.errors.items() for m in found]
    assert sorted(grouped) == sorted(caught.value.problems)
    return caught.value.problems


# --- the demo set -------------------------------------------------------------------------------


def test_demo_set_loads_every_document(documents: Documents) -> None:
    policies = load_policy_set(*documents)

    assert set(policies.categories) == {
        "purchase_history",
        "browsing",
        "preferences",
        "contact",
        "location",
    }
    assert set(policies.purposes) == {"recommendations", "email_marketing", "ads_personalization"}
    assert set(policies.databases) == {"shop_events", "crm", "mobile_location"}
    assert HASH.match(policies.hash)


def test_demo_set_values_are_typed(documents: Documents) -> None:
    policies = load_policy_set(*documents)

    browsing = policies.categories["browsing"]
    assert browsing.events == ("view", "click", "add_to_cart")
    assert browsing.retention == timedelta(days=90)
    assert policies.categories["contact"].pii is True
    assert policies.categories["location"].sensitive is True
    email = policies.purposes["email_marketing"]
    assert email.legal_basis is LegalBasis.LEGITIMATE_INTEREST
    assert email.fallback is Fallback.NONE
    assert email.scoring.exclude_purchased_within == timedelta(days=60)
    recommendations = policies.purposes["recommendations"]
    assert [s.attribute for s in recommendations.scoring.segments] == [
        "favorite_brand",
        "shoe_size",
    ]
    assert recommendations.scoring.event_weights["purchase"] == 3.0
    crm = policies.databases["crm"]
    assert crm.review_by == date(2027, 12, 31)
    assert crm.transfers == ("EU",)


def test_scoring_half_life_defaults_to_fourteen_days(documents: Documents) -> None:
    replace_in(documents[0] / "purposes.yaml", "      half_life: P30D\n", "")

    policies = load_policy_set(*documents)

    assert policies.purposes["email_marketing"].scoring.half_life == timedelta(days=14)


def test_hash_is_stable_across_loads(documents: Documents) -> None:
    assert load_policy_set(*documents).hash == load_policy_set(*documents).hash


def test_hash_changes_when_content_changes(documents: Documents) -> None:
    before = load_policy_set(*documents).hash
    replace_in(documents[0] / "categories.yaml", "retention: P90D", "retention: P91D")

    after = load_policy_set(*documents).hash

    assert HASH.match(after)
    assert after != before


def test_hash_changes_when_registry_changes(documents: Documents) -> None:
    before = load_policy_set(*documents).hash
    replace_in(documents[1] / "databases.yaml", "review_by: 2027-06-30", "review_by: 2027-07-01")

    assert load_policy_set(*documents).hash != before


def test_hash_ignores_comments_and_key_order(documents: Documents) -> None:
    before = load_policy_set(*documents).hash
    path = documents[0] / "categories.yaml"
    replace_in(
        path,
        "    events: [purchase]\n    retention: P365D\n",
        "    retention: P365D\n    events: [purchase]  # moved\n",
    )
    path.write_text("# reformatted\n" + path.read_text(encoding="utf-8"), encoding="utf-8")

    assert load_policy_set(*documents).hash == before


def test_documents_merge_across_files(documents: Documents) -> None:
    policies_dir = documents[0]
    replace_in(
        policies_dir / "categories.yaml",
        "  location:\n    attributes: [home_city]\n    events: [store_visit]\n"
        "    retention: P30D\n    sensitive: true\n",
        "",
    )
    (policies_dir / "location.yaml").write_text(
        "categories:\n  location:\n    attributes: [home_city]\n    events: [store_visit]\n"
        "    retention: P30D\n    sensitive: true\n",
        encoding="utf-8",
    )

    policies = load_policy_set(*documents)

    assert policies.categories["location"].attributes == ("home_city",)
    assert len(policies.categories) == 5


# --- one validation error per rule ---------------------------------------------------------------

Edit = Callable[[Documents], None]


def substitute(folder: int, name: str, old: str, new: str) -> Edit:
    return lambda documents: replace_in(documents[folder] / name, old, new)


POLICIES, REGISTRY = 0, 1

INVALID_CASES = [
    pytest.param(
        substitute(
            POLICIES, "purposes.yaml", "legal_basis: legitimate_interest", "legal_basis: vibes"
        ),
        "purposes.yaml",
        "purposes.email_marketing.legal_basis",
        "Must be one of",
        id="legal-basis",
    ),
    pytest.param(
        substitute(POLICIES, "categories.yaml", "retention: P365D", "retention: 365 days"),
        "categories.yaml",
        "categories.purchase_history.retention",
        "ISO 8601 duration",
        id="bad-duration",
    ),
    pytest.param(
        substitute(POLICIES, "categories.yaml", "retention: P365D", "retention: P0D"),
        "categories.yaml",
        "categories.purchase_history.retention",
        "positive",
        id="zero-duration",
    ),
    pytest.param(
        substitute(POLICIES, "categories.yaml", "retention: P90D", "retention: -P1D"),
        "categories.yaml",
        "categories.browsing.retention",
        "positive",
        id="negative-duration",
    ),
    pytest.param(
        substitute(POLICIES, "purposes.yaml", "consent_max_age: P6M", "consent_max_age: PT0S"),
        "purposes.yaml",
        "purposes.ads_personalization.consent_max_age",
        "positive",
        id="zero-consent-max-age",
    ),
    pytest.param(
        substitute(POLICIES, "purposes.yaml", "half_life: P7D", "half_life: 7"),
        "purposes.yaml",
        "purposes.ads_personalization.scoring.half_life",
        "ISO 8601 duration",
        id="half-life-not-a-string",
    ),
    pytest.param(
        substitute(
            POLICIES,
            "purposes.yaml",
            "categories: [browsing, location]",
            "categories: [browsing, hobbies]",
        ),
        "purposes.yaml",
        "purposes.ads_personalization.categories",
        "unknown category 'hobbies'",
        id="purpose-unknown-category",
    ),
    pytest.param(
        substitute(
            REGISTRY,
            "databases.yaml",
            "purposes: [recommendations, email_marketing]",
            "purposes: [recommendations, telepathy]",
        ),
        "databases.yaml",
        "databases.crm.purposes",
        "unknown purpose 'telepathy'",
        id="database-unknown-purpose",
    ),
    pytest.param(
        substitute(
            REGISTRY,
            "databases.yaml",
            "categories: [preferences, contact, purchase_history]",
            "categories: [preferences, contact, dreams]",
        ),
        "databases.yaml",
        "databases.crm.categories",
        "unknown category 'dreams'",
        id="database-unknown-category",
    ),
    pytest.param(
        substitute(POLICIES, "categories.yaml", "[email, phone]", "[email, phone, home_city]"),
        "categories.yaml",
        "categories.location",
        "'home_city' already belongs to category 'contact'",
        id="attribute-in-two-categories",
    ),
    pytest.param(
        substitute(POLICIES, "categories.yaml", "events: [purchase]", "events: [purchase, view]"),
        "categories.yaml",
        "categories.browsing",
        "'view' already belongs to category 'purchase_history'",
        id="event-in-two-categories",
    ),
    pytest.param(
        lambda documents: (documents[0] / "extra.yaml").write_text("colours: {}\n"),
        "extra.yaml",
        "colours",
        "Unknown field",
        id="unknown-top-level-key",
    ),
    pytest.param(
        substitute(REGISTRY, "databases.yaml", "\ndatabases:\n", "\ncategories:\n"),
        "databases.yaml",
        "categories",
        "Unknown field",
        id="categories-key-in-registry",
    ),
    pytest.param(
        substitute(
            POLICIES, "purposes.yaml", "honor_gpc: true", "honor_gpc: true\n    colour: blue"
        ),
        "purposes.yaml",
        "purposes.ads_personalization.colour",
        "Unknown field",
        id="unknown-purpose-key",
    ),
    pytest.param(
        substitute(POLICIES, "purposes.yaml", "weight: 0.25}", "weight: 0.25, colour: red}"),
        "purposes.yaml",
        "purposes.recommendations.scoring.segments.1.colour",
        "Unknown field",
        id="unknown-segment-key",
    ),
    pytest.param(
        substitute(POLICIES, "purposes.yaml", "    description: Personalized ads", "    #"),
        "purposes.yaml",
        "purposes.ads_personalization.description",
        "required",
        id="missing-required-key",
    ),
    pytest.param(
        substitute(REGISTRY, "databases.yaml", "review_by: 2027-06-30", "review_by: soon"),
        "databases.yaml",
        "databases.shop_events.review_by",
        "Not a valid date",
        id="bad-review-date",
    ),
    pytest.param(
        substitute(POLICIES, "purposes.yaml", "attribute: shoe_size", "attribute: email"),
        "purposes.yaml",
        "purposes.recommendations.scoring.segments.1.attribute",
        "'email' is not an attribute of a category this purpose may use",
        id="segment-attribute-outside-purpose",
    ),
    pytest.param(
        substitute(POLICIES, "purposes.yaml", "attribute: shoe_size", "attribute: zodiac"),
        "purposes.yaml",
        "purposes.recommendations.scoring.segments.1.attribute",
        "'zodiac' is not an attribute",
        id="segment-attribute-unknown",
    ),
    pytest.param(
        substitute(POLICIES, "purposes.yaml", "attribute: shoe_size", "attribute: purchase"),
        "purposes.yaml",
        "purposes.recommendations.scoring.segments.1.attribute",
        "'purchase' is not an attribute",
        id="segment-attribute-is-an-event-type",
    ),
]


@pytest.mark.parametrize(("edit", "file", "key", "message"), INVALID_CASES)
def test_invalid_document_names_file_and_key(
    documents: Documents, edit: Edit, file: str, key: str, message: str
) -> None:
    edit(documents)

    problems = problems_of(documents)

    assert len(problems) == 1, problems
    path, where, text = problems[0].split(": ", 2)
    assert Path(path).name == file
    assert Path(path).parent in documents
    assert where == key
    assert message in text


def test_bad_identifier_names_file_and_id(documents: Documents) -> None:
    replace_in(documents[0] / "categories.yaml", "  browsing:", "  Browsing:")

    problems = problems_of(documents)

    assert len(problems) == 1, problems
    path, where, text = problems[0].split(": ", 2)
    assert path == str(documents[0] / "categories.yaml")
    # marshmallow reports a bad dictionary key under "key": the id is still named.
    assert where.startswith("categories.Browsing")
    assert "lower-case identifier" in text


def test_every_problem_is_reported_at_once(documents: Documents) -> None:
    replace_in(documents[0] / "purposes.yaml", "fallback: none", "fallback: maybe")
    replace_in(documents[1] / "databases.yaml", "location: IL\n    transfers", "transfers")

    problems = problems_of(documents)

    assert len(problems) == 2, problems
    assert any("purposes.email_marketing.fallback" in p for p in problems)
    assert any("databases.crm.location" in p for p in problems)


def test_same_id_in_two_files_names_both(documents: Documents) -> None:
    extra = documents[0] / "extra.yaml"
    extra.write_text(
        "purposes:\n  recommendations:\n    description: Again\n    legal_basis: consent\n"
        "    categories: [browsing]\n",
        encoding="utf-8",
    )

    problems = problems_of(documents)

    assert len(problems) == 1, problems
    assert "purposes.recommendations" in problems[0]
    assert "already defined in" in problems[0]
    assert str(extra) in problems[0]
    assert str(documents[0] / "purposes.yaml") in problems[0]


def test_same_database_in_two_registry_files_names_both(documents: Documents) -> None:
    registry = documents[1]
    shutil.copy(registry / "databases.yaml", registry / "more.yaml")

    problems = problems_of(documents)

    assert len(problems) == 3, problems
    for database in ("shop_events", "crm", "mobile_location"):
        line = next(p for p in problems if f"databases.{database}:" in p)
        assert str(registry / "databases.yaml") in line
        assert str(registry / "more.yaml") in line


def test_yaml_syntax_error_names_the_file(documents: Documents) -> None:
    broken = documents[0] / "broken.yaml"
    broken.write_text("categories: [oops\n", encoding="utf-8")

    problems = problems_of(documents)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{broken}: line 2: not valid YAML")
    assert "\n" not in problems[0]


def test_an_id_repeated_within_one_file_is_an_error(documents: Documents) -> None:
    repeated = documents[0] / "repeated.yaml"
    repeated.write_text(
        "purposes:\n"
        "  analytics: {description: a, legal_basis: consent, categories: [browsing]}\n"
        "  analytics: {description: b, legal_basis: contract, categories: [browsing]}\n",
        encoding="utf-8",
    )

    problems = problems_of(documents)

    assert problems == [
        f"{repeated}: line 3: not valid YAML: 'analytics' is defined twice in this map"
    ]


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a sentence\n", "42\n"])
def test_document_that_is_not_a_map(documents: Documents, content: str) -> None:
    odd = documents[1] / "odd.yaml"
    odd.write_text(content, encoding="utf-8")

    assert problems_of(documents) == [f"{odd}: the document must be a map of sections"]


def test_empty_section_is_an_error(documents: Documents) -> None:
    extra = documents[0] / "extra.yaml"
    extra.write_text("purposes:\n", encoding="utf-8")

    problems = problems_of(documents)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{extra}: purposes: ")


def test_empty_file_is_ignored(documents: Documents) -> None:
    before = load_policy_set(*documents).hash
    (documents[0] / "empty.yaml").write_text("# nothing yet\n", encoding="utf-8")

    assert load_policy_set(*documents).hash == before


def test_empty_folder_is_an_error(documents: Documents) -> None:
    registry = documents[1]
    for document in registry.glob("*.yaml"):
        document.unlink()

    assert problems_of(documents) == [f"{registry}: no *.yaml documents"]


def test_missing_folder_is_an_error(documents: Documents, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(PolicyError) as caught:
        load_policy_set(documents[0], missing)

    assert caught.value.problems == [f"{missing}: not a folder"]


def test_folder_without_a_section_is_an_error(documents: Documents) -> None:
    policies_dir = documents[0]
    (policies_dir / "purposes.yaml").unlink()

    problems = problems_of(documents)

    assert problems == [f"{policies_dir}: purposes: none defined"]


# --- gateway policy check -----------------------------------------------------------------------


def check(documents: Documents, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    # FlaskGroup marks the process as run from the CLI; keep that out of the other tests.
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "false")
    args = ["policy", "check", "--policies", str(documents[0]), "--registry", str(documents[1])]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


@time_machine.travel(datetime(2026, 3, 1, 12, 0, tzinfo=UTC), tick=False)
def test_policy_check_prints_hash_and_warns_of_expired_registration(
    documents: Documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = check(documents, monkeypatch)

    assert code == 0, err
    assert "ok: 5 categories, 3 purposes, 3 databases" in out
    assert f"policy_hash: {load_policy_set(*documents).hash}" in out.splitlines()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "databases.mobile_location.review_by" in warnings[0]
    assert "2025-12-31" in warnings[0]


@time_machine.travel(datetime(2025, 12, 31, 23, 59, tzinfo=UTC), tick=False)
def test_policy_check_does_not_warn_before_review_date(
    documents: Documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = check(documents, monkeypatch)

    assert code == 0, err
    assert re.search(r"^policy_hash: sha256:[0-9a-f]{64}$", out, re.MULTILINE)
    assert "warning:" not in err


def test_policy_check_fails_on_a_broken_set(
    documents: Documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    replace_in(documents[0] / "purposes.yaml", "honor_gpc: true", "honor_gpc: maybe")
    replace_in(documents[1] / "databases.yaml", "review_by: 2027-06-30", "review_by: soon")

    code, out, err = check(documents, monkeypatch)

    assert code == 1
    assert "policy_hash" not in out
    errors = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert len(errors) == 2, err
    assert any(
        f"{documents[0] / 'purposes.yaml'}: purposes.ads_personalization.honor_gpc:" in e
        for e in errors
    )
    assert any(
        f"{documents[1] / 'databases.yaml'}: databases.shop_events.review_by:" in e for e in errors
    )
