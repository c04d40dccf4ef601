from __future__ import annotations

import functools
import re
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

import wtforms
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    EmailField,
    HiddenField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
    ValidationError,
)
from wtforms.validators import DataRequired, Length, Optional, Regexp

from ...models import MANAGER_ROLES
from ...services.api_tokens import MAX_NAME_LENGTH as MAX_TOKEN_NAME_LENGTH
from ...services.codes import MAX_REASON_LENGTH, MAX_REVEAL_REASON_LENGTH
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


_NUMBER = r"^\s*\d{1,9}\s*$"
LOCAL_TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M")


@functools.cache
def time_zones() -> list[str]:
    """The IANA zones a program's window may be in, read once, when a form first lists them:
    reading them walks the zone database (tens of milliseconds), which no process start, task
    or command should pay."""
    return sorted(zoneinfo.available_timezones())


def _local_time(_form, field) -> None:
    """A local date and time as a browser's ``datetime-local`` sends it (or empty)."""
    if (field.data or "").strip() and _parsed_local_time(field.data) is None:
        raise ValidationError("local_time_invalid")


def _parsed_local_time(value: str | None) -> datetime | None:
    for pattern in LOCAL_TIME_FORMATS:
        try:
            return datetime.strptime((value or "").strip(), pattern)
        except ValueError:
            continue
    return None


class ProgramForm(Form):
    """A program's settings, as the edit page shows and posts them. The rules are the
    service's (``programs.update_program``): here only the shape of each value is checked."""

    name = StringField("name", validators=[DataRequired("program_name_required"),
                                           Length(max=200, message="program_name_too_long")])
    quota = StringField("quota", validators=[DataRequired("number_required"),
                                             Regexp(_NUMBER, message="number_required")],
                        render_kw={"inputmode": "numeric"})
    country_quotas = TextAreaField(
        "country_quotas", validators=[Length(max=5000, message="country_quotas_too_long")],
        render_kw={"rows": 4})
    perk_months = StringField("perk_months", validators=[
        DataRequired("number_required"), Regexp(_NUMBER, message="number_required")],
        render_kw={"inputmode": "numeric"})
    opens_at = StringField("opens_at", validators=[_local_time],
                           render_kw={"type": "datetime-local"})
    closes_at = StringField("closes_at", validators=[_local_time],
                            render_kw={"type": "datetime-local"})
    # Any name is taken here: the service says which zones exist (field ``time-zone``).
    time_zone = SelectField("time_zone", choices=time_zones, validate_choice=False,
                            default="UTC")
    redeem_url = StringField("redeem_url", validators=[
        Length(max=500, message="redeem_url_too_long")], render_kw={"inputmode": "url"})
    support_email = StringField("support_email", validators=[
        Length(max=320, message="email_too_long")], render_kw={"inputmode": "email"})

    # The form field each service field name stands for (``InvalidInput.field``).
    FIELD_OF = {"slug": "slug", "name": "name", "quota": "quota", "months": "perk_months",
                "opens": "opens_at", "closes": "closes_at", "time-zone": "time_zone",
                "redeem-url": "redeem_url", "support-email": "support_email",
                "country-quota": "country_quotas"}

    @classmethod
    def of(cls, program, country_quotas: dict[str, dict]) -> ProgramForm:
        """The form filled with the program as it stands, its window in its own zone."""
        def local(value):
            return program.in_own_zone(value).strftime("%Y-%m-%dT%H:%M") if value else ""

        return cls(data={
            "name": program.name, "quota": str(program.quota),
            "country_quotas": "\n".join(f"{country}={row['quota']}"
                                        for country, row in country_quotas.items()),
            "perk_months": str(program.perk_months), "opens_at": local(program.opens_at),
            "closes_at": local(program.closes_at), "time_zone": program.time_zone,
            "redeem_url": program.redeem_url or "", "support_email": program.support_email or "",
        })

    def settings(self) -> dict:
        """The posted values, typed, for ``create_program`` and ``update_program`` (the
        country quotas still as text)."""
        return {"name": self.name.data, "quota": int(self.quota.data),
                "perk_months": int(self.perk_months.data),
                "opens_at": _parsed_local_time(self.opens_at.data),
                "closes_at": _parsed_local_time(self.closes_at.data),
                "time_zone": self.time_zone.data or "",
                "redeem_url": (self.redeem_url.data or "").strip() or None,
                "support_email": (self.support_email.data or "").strip() or None}

    def refused(self, exc) -> None:
        """Show a service's refusal by the field it names (or over the whole form)."""
        message = {**exc.params, "code": exc.code, "fallback": str(exc)}
        field = self.FIELD_OF.get(getattr(exc, "field", None) or exc.params.get("field"))
        if field is not None and field in self._fields:
            self._fields[field].errors = [*self._fields[field].errors, message]
        else:
            self.form_errors.append(message)


class NewProgramForm(ProgramForm):
    slug = StringField("slug", validators=[DataRequired("slug_required"),
                                           Length(max=64, message="slug_too_long")],
                       render_kw={"autocapitalize": "none", "spellcheck": "false"})


class ClaimingForm(Form):
    """No fields: an open, pause, resume or close button and its CSRF token."""


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


class NewApiTokenForm(Form):
    """An API token to make: what uses it, its role, and in how many days it expires (empty:
    never). The service checks each again."""

    name = StringField(
        "name",
        validators=[DataRequired("api_token_name_required"),
                    Length(max=MAX_TOKEN_NAME_LENGTH, message="api_token_name_too_long")],
        render_kw={"autocomplete": "off"},
    )
    role = SelectField("role", choices=list(MANAGER_ROLES),
                       default="viewer", invalid_choice_message="manager_role_unknown",
                       validators=[DataRequired("manager_role_unknown")])
    expires_days = StringField(
        "expires_days",
        validators=[Optional(), Regexp(r"^\s*\d{1,4}\s*$", message="api_token_expiry_invalid")],
        render_kw={"inputmode": "numeric"},
    )

    def expires_in_days(self) -> int | None:
        value = (self.expires_days.data or "").strip()
        return int(value) if value else None


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


def reason_at_most(limit: int):
    """A reason's length, refused as the services refuse it: ``reason_too_long`` with its
    limit (the message says the number)."""
    def check(_form, field) -> None:
        if len(field.data or "") > limit:
            raise ValidationError({"code": "reason_too_long", "limit": limit})
    return check


class ReasonForm(Form):
    """An audited action's reason (revealing a code, exporting full codes): the service checks
    it too (``codes.MAX_REVEAL_REASON_LENGTH``)."""

    reason = TextAreaField("reason", validators=[
        DataRequired("reason_required"), reason_at_most(MAX_REVEAL_REASON_LENGTH)],
        render_kw={"rows": 3, "maxlength": MAX_REVEAL_REASON_LENGTH})


class ResendFailedForm(Form):
    """The delivery page's "Re-send all failed" button: no fields but its CSRF token."""


class SendInvitationsForm(Form):
    """The invitations page's buttons: "Send invitations" (``invitation``) and "Send
    reminders" (``reminder``); which one is the service's to check."""

    kind = HiddenField(validators=[DataRequired("invitation_kind_unknown"),
                                   Length(max=32, message="invitation_kind_unknown")])


# --------------------------------------------------------------------------- read-only filters
# GET forms: they change nothing, so they carry no CSRF token (wtforms.Form, not ours).


def _text_filter(max_length: int):
    return StringField(validators=[Optional(), Length(max=max_length, message="filter_too_long")],
                       filters=[lambda v: v.strip() if isinstance(v, str) else v])


def _page_key(_form, field) -> None:
    if (field.data or "").strip() and not re.fullmatch(r"\d{1,18}", field.data.strip()):
        raise ValidationError("page_key_invalid")


class DeliveryPageForm(wtforms.Form):
    """Where each list of the delivery page starts: after a mail id."""

    failed_after = StringField(validators=[_page_key])
    overdue_after = StringField(validators=[_page_key])

    def after(self, name: str) -> int:
        value = (getattr(self, name).data or "").strip()
        return int(value) if value else 0


def _date_filter(_form, field) -> None:
    if (field.data or "").strip():
        try:
            date.fromisoformat(field.data.strip())
        except ValueError:
            raise ValidationError("date_invalid") from None


def _before_key(_form, field) -> None:
    if (field.data or "").strip() and _parsed_before(field.data) is None:
        raise ValidationError("page_key_invalid")


def _parsed_before(value: str | None) -> tuple[datetime, int] | None:
    at, _, event_id = (value or "").strip().rpartition("_")
    try:
        parsed = datetime.fromisoformat(at)
    except ValueError:
        return None
    if not re.fullmatch(r"\d{1,18}", event_id):
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), int(event_id)


def before_key(at: datetime, event_id: int) -> str:
    """The ``before`` parameter of the audit log's next page."""
    return f"{at.isoformat()}_{event_id}"


class AuditFilterForm(wtforms.Form):
    actor = _text_filter(200)
    action = _text_filter(64)
    program = _text_filter(100)  # a program's slug
    since = StringField(validators=[_date_filter])  # a date (UTC), from its start
    until = StringField(validators=[_date_filter])  # a date (UTC), to its end
    before = StringField(validators=[_before_key])

    def _date(self, name: str) -> date | None:
        value = (getattr(self, name).data or "").strip()
        return date.fromisoformat(value) if value else None

    def range(self) -> tuple[datetime | None, datetime | None]:
        """The dates as a half-open range of instants (``until`` takes in its whole day)."""
        since, until = self._date("since"), self._date("until")
        return (datetime.combine(since, time(), UTC) if since else None,
                datetime.combine(until + timedelta(days=1), time(), UTC) if until else None)

    def before_key(self) -> tuple[datetime, int] | None:
        return _parsed_before(self.before.data)


class AddCreatorForm(Form):
    """One creator put on a program's list; the service checks the values as an import's."""

    email = EmailField("email", validators=[DataRequired("email_required"),
                                            Length(max=320, message="email_too_long")],
                       render_kw={"autocomplete": "off", "inputmode": "email"})
    handle = StringField("handle", validators=[DataRequired("handle_required"),
                                               Length(max=100, message="handle_too_long")])
    country = StringField("country", validators=[DataRequired("country_required"),
                                                 Length(max=60, message="country_too_long")])


class CaseReasonForm(Form):
    """An action that needs a reason, which is audited: remove, mark ineligible, reissue."""

    origin = HiddenField()  # "list": the button of the eligibility list, not of the case page

    reason = StringField("reason", validators=[
        DataRequired("reason_required"), reason_at_most(MAX_REASON_LENGTH)],
        render_kw={"maxlength": MAX_REASON_LENGTH})
