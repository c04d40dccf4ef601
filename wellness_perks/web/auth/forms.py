from __future__ import annotations

from wtforms import EmailField
from wtforms.validators import DataRequired, Length

from ..forms import Form

# Validation messages are codes; templates/messages.html has their words.


class SignInForm(Form):
    email = EmailField(
        "email",
        validators=[DataRequired("email_required"), Length(max=320, message="email_too_long")],
        render_kw={"autocomplete": "email", "inputmode": "email", "autofocus": True},
    )
