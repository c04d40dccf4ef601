from __future__ import annotations

from wtforms import EmailField, HiddenField, PasswordField
from wtforms.validators import DataRequired, Length

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
