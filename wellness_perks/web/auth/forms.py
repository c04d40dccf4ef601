from __future__ import annotations

from wtforms import EmailField, HiddenField
from wtforms.validators import DataRequired, Length

from ..forms import Form

# Validation messages are codes; templates/messages.html has their words.


class SignInForm(Form):
    email = EmailField(
        "email",
        validators=[DataRequired("email_required"), Length(max=320, message="email_too_long")],
        render_kw={"autocomplete": "email", "inputmode": "email", "autofocus": True},
    )
    next = HiddenField()  # the page asked for before sign-in (a local path, checked on use)


class ConfirmSignInForm(Form):
    """The button of the page a sign-in link opens: only its POST signs in."""

    next = HiddenField()
