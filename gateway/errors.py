"""One error family: every failure the gateway raises on purpose carries its HTTP status, a
machine-readable code and a CLI exit code, so one mapping serves HTTP and one serves the CLI.

    raise InvalidInput("Invalid cursor.", {"cursor": ["Not a cursor."]})
    raise NotFound("Unknown purpose.", {"purpose": ["Unknown: 'x'."]}, code="unknown_purpose")

    class PurgeBusy(Conflict):
        code = "purge_running"

`gateway.api.problems` turns any of them (and werkzeug's and the database driver's errors) into
RFC 9457 problem+json; `gateway.cli` prints one line and exits with `exit_code`. Nothing here
imports Flask or the rest of the package, so every layer may raise these.
"""

from __future__ import annotations

from collections.abc import Mapping

Errors = Mapping[str, list[str]]

# CLI exit codes: 1 a failure, 2 a usage or configuration error (as click's), 75 try again later
# (EX_TEMPFAIL of sysexits.h).
EXIT_FAILURE, EXIT_USAGE, EXIT_TEMPFAIL = 1, 2, 75


class GatewayError(Exception):
    """An error the gateway means: status, code, message, and the fields at fault."""

    status: int = 500
    code: str = "internal_error"
    exit_code: int = EXIT_FAILURE
    # what a client is told instead of `message`, where the message is for operators only
    client_message: str | None = None

    def __init__(
        self,
        message: str,
        errors: Errors | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = {name: list(messages) for name, messages in (errors or {}).items()}
        self.headers = dict(headers or {})
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class InvalidInput(GatewayError):
    status, code, exit_code = 422, "invalid_input", EXIT_USAGE


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class Unavailable(GatewayError):
    """Something the gateway depends on cannot be used now; nothing was changed."""

    status, code = 503, "unavailable"
    client_message = "A service the gateway depends on is unavailable."


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"
    client_message = "The database is unavailable."


class ConfigurationError(GatewayError):
    """The gateway cannot start as configured (documents, URLs, keyring)."""

    status, code, exit_code = 500, "configuration_error", EXIT_USAGE
    client_message = "The gateway is misconfigured."
