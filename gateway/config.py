"""Settings: defaults, then `GATEWAY_*` environment variables, then explicit overrides.

GATEWAY_HOME=/srv/gateway GATEWAY_DATABASE_URL=postgresql://... gateway serve
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

API_DESCRIPTION = (
    "Apps ask for rankings that are personalized only where the subject's consent and the policy"
    " set allow; compliance officers read the audit log, the registry and the subjects' data."
    "\n\nEvery /v1 call needs `Authorization: Bearer <api key>`; a client's role (`app`,"
    " `auditor`, `admin`, listed per operation as `x-roles`) and, for an app, the purposes it was"
    " granted decide what it may do (403 otherwise). Every error is an RFC 9457"
    " `application/problem+json` document whose `errors` names each field at fault. Bodies are"
    " JSON; a field the schema does not name is an error. No string may hold NUL or a lone"
    " surrogate. Every response carries `X-Request-Id`."
)

DEFAULTS: dict[str, Any] = {
    "HOME": "instance",
    "DATABASE_URL": None,  # default: SQLite in HOME
    "KEYRING": None,  # default: HOME/keyring.json
    "KEYSTORE_URL": None,  # subject data keys; default: SQLite HOME/keys.db
    "POLICIES": "policies",
    "REGISTRY": "registry",
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "MAX_CANDIDATES": 1000,
    "MAX_EVENTS": 1000,
    "MAX_ATTRIBUTES": 100,
    "AUDIT_CHECKPOINT_EVERY": 100,  # a signed checkpoint is required every N entries
    "AUDIT_VERIFIED_STATE": None,  # the last verified head; default: HOME/audit-verified.json
    "AUDIT_HEAD_SECONDS": 1.0,  # the sealer signs and publishes the chain head this often
    "AUDIT_UNSIGNED_GRACE": 60.0,  # verification fails if entries this old have no signed head
    "AUDIT_WITNESS": None,  # a file or an http(s) URL; default: HOME/audit-witness.jsonl
    "AUDIT_SEAL_AFTER_COMMIT": False,  # set by the CLI: a process with no sealer of its own
    # Flask-Limiter reads these names (GATEWAY_RATELIMIT_DEFAULT in the environment)
    "RATELIMIT_DEFAULT": "1200 per minute",
    "RATELIMIT_STORAGE_URI": "memory://",
    "RATELIMIT_HEADERS_ENABLED": True,
    "PURGE_CRON": "0 3 * * *",  # UTC; six fields put seconds first
    "PURGE_BATCH_SIZE": 10_000,  # rows per delete transaction, at most
    "PURGE_BATCH_SECONDS": 0.008,  # ... and fewer if they take longer (it holds the write lock)
    "PURGE_LEASE_SECONDS": 120,
    "PURGE_MISFIRE_GRACE_SECONDS": 3600,
    # the outbox: webhooks to the recipients of registry/recipients.yaml, sent by the scheduler
    "DELIVERY_RETRIES": "5s,5m,30m,2h,5h,10h",  # the waits before each retry; then `failed`
    "DELIVERY_KEEP": "P30D",  # how long a delivered or failed message stays listed
    "DELIVERY_SECONDS": 1.0,  # how often the scheduler looks for due messages
    "DELIVERY_TIMEOUT_SECONDS": 10.0,  # a recipient answering slower than this is retried
    "DELIVERY_LEASE_SECONDS": 60.0,  # a claimed message waits this long for a dead sender
    "DELIVERY_BATCH": 50,  # messages claimed per round
    "RESYNC_BATCH": 500,  # subjects per transaction of a recipient's resync
    # The console (/console/): Flask signs its session cookies and Flask-WTF its CSRF tokens
    # with SECRET_KEY; None derives one from the keyring, the same in every worker and restart.
    "SECRET_KEY": None,
    "CONSOLE_IDLE_MINUTES": 15,  # a console session unused this long is signed out
    "CONSOLE_COOKIE_SECURE": False,  # True: Secure even over plain HTTP (behind a TLS proxy)
    "CONSOLE_SIGN_IN_LIMIT": "10 per minute",  # sign-in attempts per address
    "SESSION_COOKIE_NAME": "gateway_console",
    "SESSION_COOKIE_PATH": "/console",
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Strict",
    "WTF_CSRF_CHECK_DEFAULT": False,  # the console checks its own forms; /v1 takes no cookies
    # Over HTTPS Flask-WTF would also demand a same-site Referer, which the console's
    # Referrer-Policy (no-referrer) withholds; the token and the SameSite cookie suffice.
    "WTF_CSRF_SSL_STRICT": False,
    # flask-smorest: the OpenAPI document is served at /openapi.json, Swagger UI at /docs with
    # its assets from the gateway itself (gateway.api.docs)
    "API_TITLE": "Consent-governed personalization gateway",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "/docs/assets/",
    "OPENAPI_SWAGGER_UI_CONFIG": {"deepLinking": True, "showExtensions": True},  # x-roles
    "API_SPEC_OPTIONS": {
        "info": {"description": API_DESCRIPTION},
        "security": [{"bearerAuth": []}],
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key made by `gateway clients add`.",
                }
            }
        },
    },
}


def load_config(app: Flask, overrides: Mapping[str, Any] | None = None) -> None:
    # a copy: apispec writes into API_SPEC_OPTIONS each time it renders an app's document
    app.config.from_mapping(copy.deepcopy(DEFAULTS))
    app.config.from_prefixed_env("GATEWAY")
    app.config.update(overrides or {})
    home = Path(app.config["HOME"]).resolve()
    app.config["HOME"] = str(home)
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = f"sqlite:///{home / 'gateway.db'}"
    if not app.config["KEYSTORE_URL"]:
        app.config["KEYSTORE_URL"] = f"sqlite:///{home / 'keys.db'}"
    if not app.config["KEYRING"]:
        app.config["KEYRING"] = str(home / "keyring.json")
    if not app.config["AUDIT_WITNESS"]:
        app.config["AUDIT_WITNESS"] = str(home / "audit-witness.jsonl")
    if not app.config["AUDIT_VERIFIED_STATE"]:
        app.config["AUDIT_VERIFIED_STATE"] = str(home / "audit-verified.json")
