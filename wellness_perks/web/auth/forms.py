from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField
from wtforms.validators import DataRequired, Length

# Validation messages are codes; templates/messages.html has their words.


class SignInForm(FlaskForm):
    email = EmailField(
        "email",
        validators=[DataRequired("email_required"), Length(max=320, message="email_too_long")],
        render_kw={"autocomplete": "email", "inputmode": "email", "autofocus": True},
    )
