"""The `tcf:` map and `tcf_purposes`: loaded, hashed, and every mistake named by file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.documents import load_policy_set
from gateway.policy.model import TcfSettings
from tests.policy.test_documents import problems_of, replace_in

Documents = tuple[Path, Path]
DEMO_MAPPING = "    tcf_purposes: [5, 6]\n"


def test_the_demo_reads_strings_as_vendor_755_and_maps_two_purposes(documents: Documents) -> None:
    policies = load_policy_set(*documents)
    assert policies.tcf == TcfSettings(vendor_id=755)
    mapped = {p.id: p.tcf_purposes for p in policies.purposes.values() if p.tcf_purposes}
    assert mapped == {"recommendations": (5, 6), "ads_personalization": (3, 4)}


def test_an_empty_tcf_map_reads_the_publisher_segment(documents: Documents) -> None:
    (documents[0] / "tcf.yaml").write_text("tcf: {}\n", encoding="utf-8")
    assert load_policy_set(*documents).tcf == TcfSettings(vendor_id=None)


def test_without_a_tcf_map_tcf_is_off(documents: Documents) -> None:
    (documents[0] / "tcf.yaml").unlink()
    replace_in(documents[0] / "purposes.yaml", DEMO_MAPPING, "")
    replace_in(documents[0] / "purposes.yaml", "    tcf_purposes: [3, 4]\n", "")
    assert load_policy_set(*documents).tcf is None


def test_the_hash_covers_the_tcf_map_and_the_mappings(documents: Documents) -> None:
    first = load_policy_set(*documents).hash
    replace_in(documents[0] / "tcf.yaml", "vendor_id: 755", "vendor_id: 756")
    second = load_policy_set(*documents).hash
    replace_in(documents[0] / "purposes.yaml", DEMO_MAPPING, "    tcf_purposes: [5]\n")
    third = load_policy_set(*documents).hash
    assert len({first, second, third}) == 3


RANGE_1_11 = "Must be greater than or equal to 1 and less than or equal to 11."


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ("[0, 5]", f"tcf_purposes.0: {RANGE_1_11}"),
        ("[5, 12]", f"tcf_purposes.1: {RANGE_1_11}"),
        ("[5, 5]", "tcf_purposes: A TCF purpose is listed twice."),
        ("['5']", "tcf_purposes.0: Not a valid integer."),
    ],
)
def test_unknown_tcf_purpose_ids_are_named(
    documents: Documents, mapping: str, problem: str
) -> None:
    replace_in(documents[0] / "purposes.yaml", DEMO_MAPPING, f"    tcf_purposes: {mapping}\n")
    assert problems_of(documents) == [
        f"{documents[0] / 'purposes.yaml'}: purposes.recommendations.{problem}"
    ]


@pytest.mark.parametrize("consent_only", [3, 4, 5, 6])
def test_legitimate_interest_may_not_rest_on_tcf_purposes_3_to_6(
    documents: Documents, consent_only: int
) -> None:
    replace_in(
        documents[0] / "purposes.yaml",
        "    # no tcf_purposes",
        f"    tcf_purposes: [2, {consent_only}]\n    # no tcf_purposes",
    )
    assert problems_of(documents) == [
        f"{documents[0] / 'purposes.yaml'}: purposes.email_marketing.tcf_purposes: TCF purpose"
        f" {consent_only} allows only consent, not legitimate interest"
    ]


def test_legitimate_interest_may_rest_on_other_tcf_purposes(documents: Documents) -> None:
    replace_in(
        documents[0] / "purposes.yaml",
        "    # no tcf_purposes",
        "    tcf_purposes: [2, 7, 8]\n    # no tcf_purposes",
    )
    assert load_policy_set(*documents).purposes["email_marketing"].tcf_purposes == (2, 7, 8)


def test_tcf_purposes_without_a_tcf_map_are_named(documents: Documents) -> None:
    (documents[0] / "tcf.yaml").unlink()
    where = documents[0] / "purposes.yaml"
    assert sorted(problems_of(documents)) == [
        f"{where}: purposes.ads_personalization.tcf_purposes: needs a top-level 'tcf:' map in"
        " the policy documents",
        f"{where}: purposes.recommendations.tcf_purposes: needs a top-level 'tcf:' map in"
        " the policy documents",
    ]


RANGE_VENDOR = "Must be greater than or equal to 1 and less than or equal to 65535."


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tcf: {vendor_id: 0}\n", f"tcf.vendor_id: {RANGE_VENDOR}"),
        ("tcf: {vendor_id: 70000}\n", f"tcf.vendor_id: {RANGE_VENDOR}"),
        ("tcf: {vendor_id: '755'}\n", "tcf.vendor_id: Not a valid integer."),
        ("tcf: {vendor: 755}\n", "tcf.vendor: Unknown field."),
    ],
)
def test_a_bad_tcf_map_is_named(documents: Documents, text: str, problem: str) -> None:
    (documents[0] / "tcf.yaml").write_text(text, encoding="utf-8")
    assert problems_of(documents) == [f"{documents[0] / 'tcf.yaml'}: {problem}"]


def test_a_tcf_map_defined_twice_names_both_files(documents: Documents) -> None:
    (documents[0] / "tcf-again.yaml").write_text("tcf: {vendor_id: 9}\n", encoding="utf-8")
    assert problems_of(documents) == [
        f"{documents[0] / 'tcf.yaml'}: tcf.vendor_id: already defined in"
        f" {documents[0] / 'tcf-again.yaml'}"
    ]


def test_a_contract_purpose_takes_no_tcf_purposes(documents: Documents) -> None:
    replace_in(
        documents[0] / "purposes.yaml", "legal_basis: legitimate_interest", "legal_basis: contract"
    )
    replace_in(
        documents[0] / "purposes.yaml",
        "    # no tcf_purposes",
        "    tcf_purposes: [2]\n    # no tcf_purposes",
    )
    assert problems_of(documents) == [
        f"{documents[0] / 'purposes.yaml'}: purposes.email_marketing.tcf_purposes: a contract"
        " purpose takes no consent signal"
    ]
