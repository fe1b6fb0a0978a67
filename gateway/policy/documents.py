"""Load and validate the policy documents (policies/) and database registrations (registry/).

Every `*.yaml` file of a folder is read and their top-level maps are merged; an error names the
file and the key::

    policies = load_policy_set("policies", "registry")   # raises PolicyError
    policies.hash                                        # sha256 of the canonical documents
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import isodate
import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from gateway.crypto import canonical_json
from gateway.errors import EXIT_FAILURE, ConfigurationError
from gateway.policy.model import (
    Category,
    Fallback,
    LegalBasis,
    PolicySet,
    Purpose,
    Recipient,
    Registration,
    ScoringRules,
    Segment,
    TcfSettings,
)

# IAB TCF v2.2 purposes are numbered 1 to 11; of them 3 to 6 (profiles for ads and content)
# allow only consent, no legitimate interest.
TCF_PURPOSES = 11
TCF_CONSENT_ONLY = frozenset({3, 4, 5, 6})

IDENTIFIER = validate.Regexp(r"^[a-z][a-z0-9_]{0,63}$", error="Must be a lower-case identifier.")


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key repeated in one map (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"'{key}' is defined twice in this map", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class PolicyError(ConfigurationError):
    """The documents are invalid; `problems` holds one `file: key: message` line each."""

    code, exit_code = "invalid_documents", EXIT_FAILURE

    def __init__(self, problems: list[str]) -> None:
        by_file: dict[str, list[str]] = {}
        for problem in problems:
            path, _, message = problem.partition(": ")
            by_file.setdefault(path, []).append(message)
        super().__init__("The policy documents are invalid.", by_file)
        self.problems = problems


class DurationField(fields.Field):
    """An ISO 8601 duration such as `P90D` or `P13M`, strictly positive."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        message = "Must be a positive ISO 8601 duration such as P90D."
        if not isinstance(value, str):
            raise ValidationError(message)
        try:
            duration = isodate.parse_duration(value)
        except (isodate.ISO8601Error, ValueError) as exc:
            raise ValidationError(message) from exc
        start = datetime(2000, 1, 1)
        if start + duration <= start:
            raise ValidationError(message)
        return duration


class DateField(fields.Date):
    """A date; YAML already turns `2027-06-30` into one, which is accepted as it is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        return super()._deserialize(value, attr, data, **kwargs)


def _names(**kwargs: Any) -> fields.List:
    return fields.List(fields.String(validate=validate.Length(min=1, max=64)), **kwargs)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class CategorySchema(StrictSchema):
    attributes = _names(load_default=list)
    events = _names(load_default=list)
    retention = DurationField(required=True)
    pii = fields.Boolean(load_default=False)
    sensitive = fields.Boolean(load_default=False)


class SegmentSchema(StrictSchema):
    name = fields.String(required=True, validate=IDENTIFIER)
    attribute = fields.String(required=True)
    candidate_field = fields.String(required=True)
    weight = fields.Float(required=True, validate=validate.Range(min=0, max=100))


class ScoringSchema(StrictSchema):
    half_life = DurationField(load_default=None)
    event_weights = fields.Dict(
        keys=fields.String(), values=fields.Float(validate=validate.Range(min=0)), load_default=dict
    )
    exclude_purchased_within = DurationField(load_default=None)
    segments = fields.List(fields.Nested(SegmentSchema), load_default=list)


class PurposeSchema(StrictSchema):
    description = fields.String(required=True, validate=validate.Length(min=1))
    legal_basis = fields.Enum(LegalBasis, by_value=True, required=True)
    categories = _names(required=True, validate=validate.Length(min=1))
    honor_gpc = fields.Boolean(load_default=False)
    consent_max_age = DurationField(load_default=None)
    consent_history_retention = DurationField(load_default=None)
    fallback = fields.Enum(Fallback, by_value=True, load_default=Fallback.POPULAR)
    scoring = fields.Nested(ScoringSchema, load_default=None)
    tcf_purposes = fields.List(
        fields.Integer(strict=True, validate=validate.Range(min=1, max=TCF_PURPOSES)),
        load_default=list,
    )

    @validates("tcf_purposes")
    def _distinct(self, value: list[int], **_: Any) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("A TCF purpose is listed twice.")


class TcfSchema(StrictSchema):
    vendor_id = fields.Integer(strict=True, validate=validate.Range(min=1, max=65535))


class DatabaseSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1))
    controller = fields.String(required=True, validate=validate.Length(min=1))
    security_officer = fields.String(required=True, validate=validate.Length(min=1))
    purposes = _names(required=True, validate=validate.Length(min=1))
    categories = _names(required=True, validate=validate.Length(min=1))
    location = fields.String(required=True, validate=validate.Length(min=2, max=64))
    transfers = _names(load_default=list)
    reference = fields.String(required=True, validate=validate.Length(min=1))
    review_by = DateField(required=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _webhook_url(value: str) -> None:
    """https anywhere; plain http only to this machine (a local relay or a test receiver)."""
    parts = urlsplit(value)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise ValidationError("Must be an https URL (or http on loopback).")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValidationError("Must be https: plain http is allowed on loopback only.")


class RecipientSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1))
    purposes = _names(load_default=list)
    url = fields.String(required=True, validate=_webhook_url)
    secret_env = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", error="Must be an environment variable name."
        ),
    )


def _section(schema: type[Schema]) -> fields.Dict:
    return fields.Dict(keys=fields.String(validate=IDENTIFIER), values=fields.Nested(schema))


class PoliciesFileSchema(StrictSchema):
    categories = _section(CategorySchema)
    purposes = _section(PurposeSchema)
    tcf = fields.Nested(TcfSchema)


class RegistryFileSchema(StrictSchema):
    databases = _section(DatabaseSchema)
    recipients = _section(RecipientSchema)


def _flatten(messages: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    """Turn marshmallow's nested messages into (dotted key, message) pairs."""
    if isinstance(messages, dict):
        for key, value in messages.items():
            # Dict fields nest their errors under "key"/"value": the key path reads better without.
            part = prefix if key in ("key", "value") else f"{prefix}.{key}" if prefix else str(key)
            yield from _flatten(value, part)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        yield prefix, " ".join(messages)
    else:
        for index, value in enumerate(messages):
            yield from _flatten(value, f"{prefix}.{index}")


def _read_folder(
    folder: Path, schema: Schema, problems: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, str]]:
    """Validate and merge one folder; returns (validated, raw, origin file of each `section.id`)."""
    merged: dict[str, dict[str, Any]] = {}
    raw: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    if not folder.is_dir():
        problems.append(f"{folder}: not a folder")
        return merged, raw, origin
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if not files:
        problems.append(f"{folder}: no *.yaml documents")
    for path in files:
        try:
            document = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
            problems.append(f"{path}: line {line}: not valid YAML: {exc.problem}")
            continue
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: not valid YAML: {exc}".replace("\n", " "))
            continue
        if not isinstance(document, dict):
            problems.append(f"{path}: the document must be a map of sections")
            continue
        try:
            loaded = schema.load(document)
        except ValidationError as exc:
            problems.extend(f"{path}: {key}: {msg}" for key, msg in _flatten(exc.messages))
            continue
        for section, entries in loaded.items():
            # a map with no entries still says something (`tcf: {}` reads as the publisher)
            merged.setdefault(section, {})
            raw.setdefault(section, {})
            origin.setdefault(section, str(path))
            for entry_id, entry in entries.items():
                where = f"{section}.{entry_id}"
                if where in origin:
                    problems.append(f"{path}: {where}: already defined in {origin[where]}")
                    continue
                origin[where] = str(path)
                merged.setdefault(section, {})[entry_id] = entry
                raw.setdefault(section, {})[entry_id] = document[section][entry_id]
    return merged, raw, origin


def _build_purpose(purpose_id: str, spec: dict[str, Any]) -> Purpose:
    scoring = spec.pop("scoring") or {}
    rules = ScoringRules(
        half_life=scoring.get("half_life") or ScoringRules.half_life,
        event_weights=scoring.get("event_weights", {}),
        exclude_purchased_within=scoring.get("exclude_purchased_within"),
        segments=tuple(Segment(**s) for s in scoring.get("segments", [])),
    )
    spec["categories"] = tuple(spec["categories"])
    spec["tcf_purposes"] = tuple(spec["tcf_purposes"])
    return Purpose(id=purpose_id, scoring=rules, **spec)


def _check_recipients(
    recipients: dict[str, Recipient], purposes: dict[str, Purpose], origin: dict[str, str]
) -> list[str]:
    problems = []
    for recipient in recipients.values():
        where = f"{origin[f'recipients.{recipient.id}']}: recipients.{recipient.id}"
        problems += [
            f"{where}.purposes: unknown purpose '{p}'"
            for p in recipient.purposes
            if p not in purposes
        ]
    return problems


def _check_references(
    categories: dict[str, Category],
    purposes: dict[str, Purpose],
    databases: dict[str, Registration],
    origin: dict[str, str],
) -> list[str]:
    problems = []
    owner: dict[str, str] = {}
    for category in categories.values():
        where = f"{origin[f'categories.{category.id}']}: categories.{category.id}"
        for name in (*category.attributes, *category.events):
            if owner.get(name) == category.id:
                problems.append(f"{where}: '{name}' is listed twice")
            elif name in owner:
                problems.append(f"{where}: '{name}' already belongs to category '{owner[name]}'")
            owner[name] = category.id
    for purpose in purposes.values():
        where = f"{origin[f'purposes.{purpose.id}']}: purposes.{purpose.id}"
        problems += [
            f"{where}.categories: unknown category '{c}'"
            for c in purpose.categories
            if c not in categories
        ]
        for index, segment in enumerate(purpose.scoring.segments):
            # A segment matches a subject attribute; an event type of the same category is no use.
            allowed = (categories[c] for c in purpose.categories if c in categories)
            if not any(segment.attribute in category.attributes for category in allowed):
                problems.append(
                    f"{where}.scoring.segments.{index}.attribute: '{segment.attribute}' is not"
                    " an attribute of a category this purpose may use"
                )
    for database in databases.values():
        where = f"{origin[f'databases.{database.id}']}: databases.{database.id}"
        problems += [
            f"{where}.purposes: unknown purpose '{p}'"
            for p in database.purposes
            if p not in purposes
        ]
        problems += [
            f"{where}.categories: unknown category '{c}'"
            for c in database.categories
            if c not in categories
        ]
    return problems


def _check_tcf(
    purposes: dict[str, Purpose], tcf: TcfSettings | None, origin: dict[str, str]
) -> list[str]:
    """TCF mappings need a `tcf:` map; legitimate interest may not rest on TCF purposes 3-6,
    and a contract needs no consent signal at all."""
    problems = []
    for purpose in purposes.values():
        if not purpose.tcf_purposes:
            continue
        where = f"{origin[f'purposes.{purpose.id}']}: purposes.{purpose.id}.tcf_purposes"
        if tcf is None:
            problems.append(f"{where}: needs a top-level 'tcf:' map in the policy documents")
        if purpose.legal_basis is LegalBasis.CONTRACT:
            problems.append(f"{where}: a contract purpose takes no consent signal")
        if purpose.legal_basis is LegalBasis.LEGITIMATE_INTEREST:
            problems += [
                f"{where}: TCF purpose {p} allows only consent, not legitimate interest"
                for p in purpose.tcf_purposes
                if p in TCF_CONSENT_ONLY
            ]
    return problems


def load_policy_set(policies_dir: str | Path, registry_dir: str | Path) -> PolicySet:
    """Read, validate and cross-check both folders; raise PolicyError naming every problem."""
    problems: list[str] = []
    policies, policies_raw, origin = _read_folder(
        Path(policies_dir), PoliciesFileSchema(), problems
    )
    registry, registry_raw, registry_origin = _read_folder(
        Path(registry_dir), RegistryFileSchema(), problems
    )
    origin.update(registry_origin)
    for section, folder, data in (
        ("categories", policies_dir, policies),
        ("purposes", policies_dir, policies),
        ("databases", registry_dir, registry),
    ):
        if not data.get(section) and not problems:
            problems.append(f"{folder}: {section}: none defined")
    if problems:
        raise PolicyError(problems)

    categories = {
        cid: Category(
            id=cid,
            **{**spec, "attributes": tuple(spec["attributes"]), "events": tuple(spec["events"])},
        )
        for cid, spec in policies["categories"].items()
    }
    purposes = {pid: _build_purpose(pid, dict(spec)) for pid, spec in policies["purposes"].items()}
    databases = {
        did: Registration(
            id=did,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()},  # type: ignore[arg-type]
        )
        for did, spec in registry["databases"].items()
    }
    tcf = TcfSettings(**policies["tcf"]) if "tcf" in policies else None
    recipients = {
        rid: Recipient(id=rid, **{**spec, "purposes": tuple(spec["purposes"])})
        for rid, spec in registry.get("recipients", {}).items()
    }
    problems = _check_references(categories, purposes, databases, origin)
    problems += _check_tcf(purposes, tcf, origin)
    problems += _check_recipients(recipients, purposes, origin)
    if problems:
        raise PolicyError(problems)
    documents = {"policies": policies_raw, "registry": registry_raw}
    digest = hashlib.sha256(canonical_json(documents)).hexdigest()
    return PolicySet(
        categories, purposes, databases, f"sha256:{digest}", documents, tcf, recipients
    )
