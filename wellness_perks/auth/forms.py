from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField
from wtforms.validators import DataRequired, Length


class SignInForm(FlaskForm):
    email = EmailField(
        "Email address",
        validators=[DataRequired("Enter the email address on the perk list."), Length(max=320)],
        render_kw={"autocomplete": "email", "inputmode": "email", "autofocus": True},
    )
