from __future__ import annotations

from wtforms import EmailField, HiddenField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from ...models import MANAGER_ROLES
from ..forms import Form

# Validation messages are codes; templates/messages.html has their words.


class ManagerSignInForm(Form):
    email = EmailField(
        "email",
        validators=[DataRequired("email_required"), Length(max=320, message="email_too_long")],
        render_kw={"autocomplete": "username", "inputmode": "email", "autofocus": True},
    )
    password = PasswordField(
        "password",
        validators=[DataRequired("password_required"),
                    Length(max=1000, message="password_too_long")],
        render_kw={"autocomplete": "current-password"},
    )
    next = HiddenField()  # the console page asked for before sign-in (a local path)


class TwoFactorCodeForm(Form):
    """The second step of a sign-in: the authenticator's 6 digits, or a recovery code."""

    code = StringField(
        "code",
        validators=[DataRequired("two_factor_code_required"),
                    Length(max=32, message="two_factor_code_too_long")],
        render_kw={"autocomplete": "one-time-code", "autofocus": True, "spellcheck": "false",
                   "autocapitalize": "off"},
    )


class EnrollmentCodeForm(Form):
    """An enrollment's first code, which proves the authenticator app holds the secret."""

    code = StringField(
        "code",
        validators=[DataRequired("two_factor_code_required"),
                    Length(max=32, message="two_factor_code_too_long")],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric",
                   "pattern": "[0-9 ]*"},
    )


class ActionForm(Form):
    """A button that changes something: the CSRF token only."""


class ManagerRoleForm(Form):
    role = SelectField("role", choices=list(MANAGER_ROLES),
                       invalid_choice_message="manager_role_unknown",
                       validators=[DataRequired("manager_role_unknown")])


class NewManagerForm(Form):
    email = EmailField(
        "email",
        validators=[DataRequired("email_required"), Length(max=320, message="email_too_long")],
        render_kw={"autocomplete": "off", "inputmode": "email"},
    )
    role = SelectField("role", choices=list(MANAGER_ROLES),
                       default="manager", invalid_choice_message="manager_role_unknown",
                       validators=[DataRequired("manager_role_unknown")])
    password = PasswordField(
        "password",
        validators=[Optional(), Length(min=12, max=1000, message="password_too_short")],
        render_kw={"autocomplete": "new-password"},
    )
