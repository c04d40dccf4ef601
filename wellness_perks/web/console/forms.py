from __future__ import annotations

from datetime import date

from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, EmailField, HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from ...services.imports import MAX_BATCH_NAME_LENGTH
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


class CreatorsUploadForm(Form):
    """An eligibility list to check (its report comes before any import)."""

    file_fields = ("file",)
    file = FileField("file", validators=[FileRequired("file_required")])


class CodeBatchUploadForm(CreatorsUploadForm):
    """A batch of codes to check; when the codes expire is asked now (a date, or an explicit
    "no expiry")."""

    batch_name = StringField("batch_name", validators=[
        Optional(), Length(max=MAX_BATCH_NAME_LENGTH, message="batch_name_too_long")])
    expires = StringField("expires", render_kw={"type": "date"})
    no_expiry = BooleanField("no_expiry")

    def validate_expires(self, field) -> None:
        text = (field.data or "").strip()
        if text and self.no_expiry.data:
            raise ValidationError("expiry_or_no_expiry")
        if not text and not self.no_expiry.data:
            raise ValidationError("expiry_required")
        if text:
            try:
                date.fromisoformat(text)
            except ValueError:
                raise ValidationError("expiry_invalid") from None

    @property
    def expires_on(self) -> date | None:
        text = (self.expires.data or "").strip()
        return date.fromisoformat(text) if text else None


class CommitUploadForm(Form):
    skip_invalid = BooleanField("skip_invalid")


class CancelUploadForm(Form):
    pass
