"""The console's forms (Flask-WTF): each carries the session's CSRF token, and every text field
refuses what the API's fields refuse (NUL, lone surrogates, oversized input) by name.

    form = ConfirmForm()
    if not form.validate():          # on POST: the token, then each field
        form.errors                  # {"confirm": ["..."]}
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from marshmallow import ValidationError as SchemaError
from wtforms import BooleanField, Field, Form, PasswordField, StringField, ValidationError
from wtforms.validators import InputRequired, Length

from gateway.api.strict import check_text


def valid_text(_form: Form, field: Field) -> None:
    """Text the gateway can hold: no NUL, no lone surrogate."""
    try:
        check_text(field.data or "")
    except SchemaError as exc:
        raise ValidationError(" ".join(map(str, exc.messages))) from exc


class SignInForm(FlaskForm):
    key = PasswordField(
        "API key",
        validators=[InputRequired("Enter an API key."), Length(max=200), valid_text],
    )


class ConfirmForm(FlaskForm):
    """An irreversible action, confirmed by typing its target's name again."""

    confirm = StringField(
        "Type it again to confirm",
        validators=[InputRequired("Type the name again to confirm."), Length(max=256), valid_text],
    )


class PurgeForm(FlaskForm):
    dry_run = BooleanField("Dry run: count what would be deleted, delete nothing", default=True)


class ActionForm(FlaskForm):
    """A button and its CSRF token (sign out, verify now)."""
