"""The OpenAPI document: valid, complete for /v1, and stating the contract the apps rely on:
problem+json errors, the statuses each operation answers with, constrained parameters,
described fields, closed vocabularies as enums, and an example for every operation."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.api import audit, documents, examples, personalize, purges
from gateway.api.strict import SUBJECT_ID_MAX, SUBJECT_ID_PATTERN
from gateway.audit.chain import HASHED_FIELDS_2, Action
from gateway.audit.export import FORMATS, verify_export
from gateway.errors import Unavailable
from gateway.policy import documents as policy_documents
from gateway.policy.engine import ConsentState
from gateway.policy.model import LegalBasis, Outcome, Reason
from gateway.policy.signals import Ignored, SignalResult
from gateway.retention import PurgeBusy
from gateway.store.clients import Role
from tests.conftest import Caller

IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PROBLEM = "application/problem+json"


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document: dict[str, Any] = response.get_json()
    return document


def _openapi_path(rule: str) -> str:
    """Flask's `/v1/subjects/<string:subject_id>` is OpenAPI's `/v1/subjects/{subject_id}`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule)


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = spec["components"][section][name]
    return node


def _inline(spec: dict[str, Any], node: Any) -> Any:
    """`node` with every $ref replaced by what it names (the document has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return {**_inline(spec, _resolve(spec, node)), **siblings}
        return {key: _inline(spec, value) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(spec, value) for value in node]
    return node


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def _responses(spec: dict[str, Any], operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {status: _resolve(spec, r) for status, r in operation["responses"].items()}


def _parameters(spec: dict[str, Any], path: str, operation: dict[str, Any]) -> list[dict[str, Any]]:
    shared = spec["paths"][path].get("parameters", [])
    return [_resolve(spec, p) for p in [*shared, *operation.get("parameters", [])]]


def _schemas(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every named schema and every schema nested in one, with where it is."""

    def walk(where: str, node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            if "properties" in node:
                yield where, node
            for key, value in node.items():
                yield from walk(f"{where}.{key}", value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(f"{where}.{index}", value)

    for name, schema in spec["components"]["schemas"].items():
        yield from walk(name, schema)


def _property(spec: dict[str, Any], schema: str, name: str) -> dict[str, Any]:
    return _inline(spec, spec["components"]["schemas"][schema]["properties"][name])


# -- the document as a whole -------------------------------------------------------------------


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("/v1/subjects/<string:subject_id>/consents", "/v1/subjects/{subject_id}/consents"),
        ("/v1/registry/databases/<database_id>", "/v1/registry/databases/{database_id}"),
        ("/v1/a/<int:n>/<path:rest>", "/v1/a/{n}/{rest}"),
    ],
)
def test_flask_rules_convert_to_openapi_paths(rule: str, expected: str) -> None:
    assert _openapi_path(rule) == expected


def test_every_v1_route_and_method_is_documented(app: Flask, spec: dict[str, Any]) -> None:
    routes = [r for r in app.url_map.iter_rules() if r.rule.startswith("/v1/")]
    assert "/v1/personalize" in {r.rule for r in routes}
    missing = []
    for rule in routes:
        path = _openapi_path(rule.rule)
        documented = {m.upper() for m in spec["paths"].get(path, {})}
        missing += [
            f"{method} {path}"
            for method in sorted((rule.methods or set()) - IGNORED_METHODS)
            if method not in documented
        ]
    assert missing == []


def test_the_personalize_request_schema_requires_its_fields(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/v1/personalize"]["post"]["requestBody"]
    schema = _resolve(spec, body["content"]["application/json"]["schema"])
    assert {"subject_id", "purpose", "candidates"} <= set(schema["required"])
    assert {"context", "limit"}.isdisjoint(schema["required"])
    assert schema["properties"]["candidates"]["type"] == "array"
    assert schema.get("additionalProperties") is False


def test_the_bearer_security_scheme_is_declared(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    bearer = [
        name
        for name, scheme in schemes.items()
        if scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
    ]
    assert bearer
    required = {name for requirement in spec.get("security", []) for name in requirement}
    assert required & set(bearer), "the bearer scheme is declared but not required"


# -- errors ------------------------------------------------------------------------------------


def test_every_error_response_is_problem_json(spec: dict[str, Any]) -> None:
    wrong = []
    for path, method, operation in _operations(spec):
        for status, response in _responses(spec, operation).items():
            if status != "default" and int(status) < 400:
                continue
            content = response.get("content", {})
            schema = content.get(PROBLEM, {}).get("schema", {})
            if list(content) != [PROBLEM] or schema.get("$ref") != "#/components/schemas/Problem":
                wrong.append(f"{method.upper()} {path} {status}: {list(content)}")
    assert wrong == []


def test_every_v1_operation_needs_a_key_and_declares_401_and_403(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        authenticated = operation.get("security", spec["security"]) != []
        assert authenticated == path.startswith("/v1/"), f"{method} {path}"
        if authenticated:
            assert {"401", "403"} <= set(operation["responses"]), f"{method} {path}"
            assert set(operation["x-roles"]) <= {role.value for role in Role}, f"{method} {path}"


def test_every_operation_declares_the_statuses_around_its_view(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        declared = set(operation["responses"])
        expected = {"429", "503", "default"}
        if "requestBody" in operation:
            expected |= {"400", "413", "415", "422"}
        if "{" in path:
            expected.add("404")
        assert expected <= declared, f"{method.upper()} {path} lacks {expected - declared}"


def test_an_unauthorized_answer_declares_its_challenge(spec: dict[str, Any]) -> None:
    unauthorized = spec["components"]["responses"]["UNAUTHORIZED"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
    assert spec["components"]["responses"]["TOO_MANY_REQUESTS"]["headers"]["Retry-After"]


def _busy_purge(*_: Any, **__: Any) -> Any:
    raise PurgeBusy("another-host")


def _no_database(*_: Any, **__: Any) -> Any:
    raise Unavailable("no database", code="database_unavailable")


PROVOKED: list[tuple[str, str, str, Any, int]] = [
    # (method, path, caller, body, status); callers: "none", "app", "auditor", "admin"
    ("GET", "/v1/policies", "none", None, 401),
    ("POST", "/v1/personalize", "auditor", {}, 403),
    ("GET", "/v1/subjects/alice/consents/email_marketing", "app", None, 403),
    ("GET", "/v1/subjects/alice/consents/newsletter", "admin", None, 404),
    ("GET", "/v1/registry/databases/data_lake", "admin", None, 404),
    ("GET", "/v1/subjects/alice%20b/export", "admin", None, 422),
    ("DELETE", "/v1/subjects/alice%20b", "admin", None, 422),
    ("GET", "/v1/audit/entries?cursor=x", "admin", None, 422),
    ("POST", "/v1/subjects/alice/events", "admin", {"database": "data_lake"}, 422),
    ("POST", "/v1/personalize", "admin", "{", 400),
    ("PATCH", "/v1/subjects/alice/attributes", "admin", "x" * 5000, 413),
    ("PUT", "/v1/subjects/alice/consents/recommendations", "admin", b"granted", 415),
    ("POST", "/v1/audit/checkpoints", "admin", b"now", 415),
]


@pytest.mark.parametrize(("method", "target", "who", "body", "status"), PROVOKED)
def test_the_statuses_the_server_answers_with_are_declared(
    make_app: Callable[..., Flask],
    new_caller: Callable[..., Caller],
    spec: dict[str, Any],
    method: str,
    target: str,
    who: str,
    body: Any,
    status: int,
) -> None:
    caller = new_caller(who, ("recommendations",)) if who != "none" else new_caller("admin")
    headers = {} if who != "none" else {"Authorization": "Bearer nothing"}
    kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"data": body}
    if isinstance(body, str):
        headers["Content-Type"] = "application/json"
    if isinstance(body, bytes):
        headers["Content-Type"] = "text/plain"
    if len(str(body)) > 4096:
        caller = Caller(make_app(MAX_CONTENT_LENGTH=2048).test_client(), caller.key)
    response = caller.request(method, target, headers=headers, **kwargs)
    assert_declared(spec, method, target, response, status)


def assert_declared(
    spec: dict[str, Any], method: str, target: str, response: Any, status: int
) -> None:
    """The response has `status`, which the operation declares, as problem+json when an error."""
    assert response.status_code == status, response.get_data(as_text=True)
    path = next(p for p in spec["paths"] if re.fullmatch(_path_pattern(p), target.split("?")[0]))
    declared = _responses(spec, spec["paths"][path][method.lower()])
    assert str(status) in declared, f"{method} {path} does not declare {status}"
    if status >= 400:
        assert response.mimetype in declared[str(status)]["content"]


def _path_pattern(path: str) -> str:
    return re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path))


@pytest.mark.parametrize(
    ("target", "module", "name", "replacement", "status"),
    [
        ("/v1/purges", purges, "purge_now", _busy_purge, 409),
        ("/v1/personalize", personalize, "_consents_changed", lambda *_: True, 409),
        ("/v1/personalize", personalize, "find_subject", _no_database, 503),
    ],
)
def test_the_rare_statuses_the_server_answers_with_are_declared(
    monkeypatch: pytest.MonkeyPatch,
    spec: dict[str, Any],
    admin: Caller,
    target: str,
    module: Any,
    name: str,
    replacement: Callable[..., Any],
    status: int,
) -> None:
    monkeypatch.setattr(module, name, replacement)
    body = {"dry_run": True} if target == "/v1/purges" else examples.PERSONALIZE
    assert_declared(spec, "POST", target, admin.post(target, json=body), status)


def test_a_rate_limited_answer_is_declared(
    make_app: Callable[..., Flask], spec: dict[str, Any]
) -> None:
    client = make_app(RATELIMIT_DEFAULT="1 per minute").test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/healthz")
    assert_declared(spec, "GET", "/healthz", response, 429)
    assert response.headers["Retry-After"]


# -- parameters and fields ---------------------------------------------------------------------


def test_every_subject_id_in_a_path_has_the_subject_id_constraints(spec: dict[str, Any]) -> None:
    paths = [p for p in spec["paths"] if "{subject_id}" in p]
    assert len(paths) == 6
    for path, _, operation in _operations(spec):
        if path in paths:
            parameters = _parameters(spec, path, operation)
            parameter = next(p for p in parameters if p["name"] == "subject_id")
            assert parameter["in"] == "path"
            assert parameter["schema"] == {
                "type": "string",
                "minLength": 1,
                "maxLength": SUBJECT_ID_MAX,
                "pattern": SUBJECT_ID_PATTERN,
            }


def test_the_subject_id_pattern_means_the_same_to_json_schema_as_to_python() -> None:
    # ECMA-262's \s differs from Python's, so the pattern spells out the characters it refuses.
    assert not re.search(r"\\[sSwWdDbB]", SUBJECT_ID_PATTERN)
    pattern = re.compile(SUBJECT_ID_PATTERN)
    refused = {chr(c) for c in range(0x110000) if not pattern.match(chr(c))}
    assert refused == {chr(c) for c in range(0x110000) if chr(c).isspace()} | {"/", "\ufffd"}


def test_every_path_parameter_is_constrained_and_described(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        for parameter in _parameters(spec, path, operation):
            where = f"{method.upper()} {path} {parameter['name']}"
            assert parameter.get("description"), where
            if parameter["in"] == "path":
                assert "pattern" in parameter["schema"], where
                assert "example" in parameter, where


def test_every_property_has_a_description(spec: dict[str, Any]) -> None:
    undescribed = [
        f"{where}.{name}"
        for where, schema in _schemas(spec)
        for name, prop in schema["properties"].items()
        if not prop.get("description")
    ]
    assert undescribed == []


def test_only_an_audit_entrys_fields_are_an_open_map(spec: dict[str, Any]) -> None:
    """Everywhere else a map says what its values are, and a list what its items are."""
    open_maps = {
        f"{where}.{name}"
        for where, schema in _schemas(spec)
        for name, prop in schema["properties"].items()
        if prop.get("type") == "object" and prop.get("additionalProperties", {}) in ({}, True)
    }
    assert open_maps == {"Entry.fields", "ExportedEntry.fields"}
    untyped = [
        f"{where}.{name}"
        for where, schema in _schemas(spec)
        for name, prop in schema["properties"].items()
        if prop.get("type") == "array" and not prop.get("items")
    ]
    assert untyped == []


@pytest.mark.parametrize(
    ("shown", "source"),
    [
        (audit.EntrySchema, {*HASHED_FIELDS_2, "hash"}),
        (audit.ExportedEntrySchema, {*HASHED_FIELDS_2, "hash"}),
        (documents.CategoryDocumentSchema, set(policy_documents.CategorySchema().fields)),
        (documents.PurposeDocumentSchema, set(policy_documents.PurposeSchema().fields)),
        (documents.ScoringDocumentSchema, set(policy_documents.ScoringSchema().fields)),
        (documents.SegmentDocumentSchema, set(policy_documents.SegmentSchema().fields)),
        (documents.TcfDocumentSchema, set(policy_documents.TcfSchema().fields)),
    ],
)
def test_a_response_schema_names_every_field_of_what_it_shows(shown: Any, source: set[str]) -> None:
    """A response schema drops what it does not name: it must name every field of the audit
    entries and policy documents it shows."""
    assert {field.data_key or name for name, field in shown().fields.items()} == source


def _enum(spec: dict[str, Any], schema: str, name: str) -> set[str]:
    found = _property(spec, schema, name)
    return set((found.get("items") or found)["enum"])


@pytest.mark.parametrize(
    ("schema", "name", "vocabulary"),
    [
        ("Decision", "outcome", Outcome),
        ("Decision", "reasons", Reason),
        ("Dropped", "reason", Reason),
        ("CollectionResult", "refused", None),
        ("PurposeConsent", "state", ConsentState),
        ("PurposeConsent", "legal_basis", LegalBasis),
        ("PurposeDocument", "legal_basis", LegalBasis),
        ("Entry", "action", Action),
        ("PurgeRun", "status", purges.STATUSES),
        ("CategoryResult", "kind", purges.KINDS),
        ("PurposeSignal", "result", SignalResult),
    ],
)
def test_closed_vocabularies_are_enums(
    spec: dict[str, Any], schema: str, name: str, vocabulary: Any
) -> None:
    if vocabulary is None:  # a map whose values are reasons
        values = set(_property(spec, schema, name)["additionalProperties"]["enum"])
        vocabulary = Reason
    else:
        values = _enum(spec, schema, name)
    assert values == {str(value) for value in vocabulary}


def test_the_reason_a_tcf_string_was_ignored_is_an_enum_or_null(spec: dict[str, Any]) -> None:
    assert _enum(spec, "PurposeSignal", "reason") == {*(str(r) for r in Ignored), None}


def test_query_formats_and_filters_are_enums(spec: dict[str, Any]) -> None:
    def query(path: str, name: str) -> dict[str, Any]:
        operation = spec["paths"][path]["get"]
        return next(p for p in operation["parameters"] if p["name"] == name)["schema"]

    personalize = _parameters(spec, "/v1/personalize", spec["paths"]["/v1/personalize"]["post"])
    assert {(p["in"], p["name"]) for p in personalize} == {
        ("query", "explain"),
        ("header", "Sec-GPC"),
    }
    assert set(query("/v1/audit/export", "format")["enum"]) == set(FORMATS)
    assert set(query("/v1/registry/records-of-processing", "format")["enum"]) == {"json", "csv"}
    assert set(query("/v1/audit/entries", "action")["enum"]) == {a.value for a in Action}


def test_the_policy_sets_ids_and_the_settings_bounds_are_stated(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(MAX_CANDIDATES=5, MAX_EVENTS=7, MAX_ATTRIBUTES=3)
    spec = app.test_client().get("/openapi.json").get_json()
    assert _enum(spec, "Personalize", "purpose") == {
        "recommendations",
        "email_marketing",
        "ads_personalization",
    }
    assert _enum(spec, "Events", "database") == {"shop_events", "crm", "mobile_location"}
    candidates = _property(spec, "Personalize", "candidates")
    assert (candidates["minItems"], candidates["maxItems"]) == (1, 5)
    assert _property(spec, "Events", "events")["maxItems"] == 7
    attributes = _property(spec, "Attributes", "attributes")
    assert (attributes["minProperties"], attributes["maxProperties"]) == (1, 3)
    assert attributes["propertyNames"] == {"type": "string", "minLength": 1, "maxLength": 64}
    assert _property(spec, "Personalize", "limit")["maximum"] == 1000


# -- summaries, examples and media types -------------------------------------------------------


def _examples(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example) of every request body and JSON success response."""
    for path, method, operation in _operations(spec):
        where = f"{method.upper()} {path}"
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            yield f"{where} request", body["schema"], body.get("example")
        for status, response in _responses(spec, operation).items():
            if status.startswith("2"):
                for media, content in response["content"].items():
                    yield f"{where} {status} {media}", content["schema"], content.get("example")


def test_every_operation_has_a_summary_and_examples(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        assert operation.get("summary"), f"{method.upper()} {path}"
    missing = [where for where, _, example in _examples(spec) if example is None]
    assert missing == []


def test_every_example_matches_its_schema(spec: dict[str, Any]) -> None:
    for where, schema, example in _examples(spec):
        errors = list(Draft202012Validator(_inline(spec, schema)).iter_errors(example))
        assert errors == [], f"{where}: {errors[0].message}"


def test_the_exports_declare_the_media_types_they_send(spec: dict[str, Any]) -> None:
    def media(path: str) -> set[str]:
        return set(spec["paths"][path]["get"]["responses"]["200"]["content"])

    assert media("/v1/audit/export") == {"application/x-ndjson", "text/csv"}
    assert media("/v1/registry/records-of-processing") == {"application/json", "text/csv"}
    assert media("/v1/subjects/{subject_id}/export") == {"application/json"}


def test_the_audit_export_examples_verify_with_the_example_signing_key(
    spec: dict[str, Any],
) -> None:
    signing = spec["paths"]["/v1/keys/signing"]["get"]["responses"]["200"]
    key = signing["content"]["application/json"]["example"]["public_key"]
    exports = spec["paths"]["/v1/audit/export"]["get"]["responses"]["200"]["content"]
    for media, content in exports.items():
        lines = content["example"].splitlines(keepends=True)
        assert verify_export(lines, key).ok, media


@pytest.mark.parametrize(
    ("query", "mimetype"), [("", "application/x-ndjson"), ("?format=csv", "text/csv")]
)
def test_the_audit_export_sends_what_the_document_says(
    auditor: Caller, query: str, mimetype: str
) -> None:
    response = auditor.get(f"/v1/audit/export{query}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    if mimetype == "application/x-ndjson":
        assert all(json.loads(line) for line in response.get_data(as_text=True).splitlines())


# -- the documentation page --------------------------------------------------------------------


class _References(HTMLParser):
    """The URLs a page loads: scripts, styles, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_the_docs_page_loads_only_local_assets(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '"/openapi.json"' in page
    references = _References()
    references.feed(page)
    assert references.urls, "the page loads no assets"
    for url in references.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        with client.get(url) as asset:
            assert asset.status_code == 200, url
            assert asset.mimetype in ("text/css", "text/javascript"), url
            assert len(asset.get_data()) > 1000, url
