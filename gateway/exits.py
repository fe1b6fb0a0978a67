"""The one CLI mapping of errors: a `GatewayError` is a short message on stderr and its exit code.

    @click.command("purge", cls=GatewayCommand)      # or a group with command_class=...
    def purge_command() -> None: ...

    with exit_on_error():                             # around anything else that may fail
        ...

A database error becomes `DatabaseUnavailable` (`store.db.unavailable`); no traceback reaches
the operator for an error the gateway knows. Errors it does not know keep their traceback:
those are bugs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
import peewee

from gateway.errors import GatewayError
from gateway.store.db import unavailable


def exit_with(error: GatewayError) -> NoReturn:
    """Print `error` (its message, then each field's messages) and exit with its code."""
    click.echo(f"Error: {error.message}", err=True)
    for name, messages in error.errors.items():
        for message in messages:
            click.echo(f"  {name}: {message}", err=True)
    sys.exit(error.exit_code)


@contextmanager
def exit_on_error() -> Iterator[None]:
    try:
        yield
    except GatewayError as error:
        exit_with(error)
    except peewee.PeeweeException as exc:
        exit_with(unavailable(exc))


class GatewayCommand(click.Command):
    """A command whose errors go through `exit_on_error`."""

    def invoke(self, ctx: click.Context) -> Any:
        with exit_on_error():
            return super().invoke(ctx)


class GatewayCommands(click.Group):
    """A group whose commands (and its own loading) go through `exit_on_error`."""

    command_class = GatewayCommand

    def invoke(self, ctx: click.Context) -> Any:
        with exit_on_error():
            return super().invoke(ctx)
