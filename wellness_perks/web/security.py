"""Who is signed in, and what each kind of user may reach.

A signed session names its user by kind and id (``"c:12"`` is creator 12), so every kind of user
shares Flask-Login's machinery: ``USER_KINDS`` maps the prefix to the class, and a view says
which kinds it lets in with ``@kind_required(...)`` (``@creator_required`` for the portal). A
session of another kind is refused with 403; no session at all is sent to sign in.

CSRF protection is on for every form POST; a blueprint whose requests authenticate otherwise
(a token-authenticated JSON API) is exempted when it is registered (``web.register``).
"""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import abort, flash, redirect, request
from flask_login import LoginManager, UserMixin, current_user, login_url
from flask_wtf import CSRFProtect

from ..db import get_session
from ..services import auth
from .errors import error_response, wants_json

csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "sign_in_required"  # a message code: templates/messages.html


class CreatorUser(UserMixin):
    """The signed-in creator as Flask-Login sees them.

    Loading one costs no query: the signed session names the creator, and their email, handle
    and language are read only when a page shows them (a claim request never does).
    """

    kind = "creator"
    prefix = "c"

    def __init__(self, creator_id: int, email: str | None = None, handle: str | None = None,
                 locale: str | None = None) -> None:
        self.creator_id = creator_id
        self._profile = (email, handle, locale) if email is not None else None

    def get_id(self) -> str:
        return f"{self.prefix}:{self.creator_id}"

    def _field(self, index: int) -> str:
        if self._profile is None:
            creator = auth.get_creator(get_session(), creator_id=self.creator_id)
            self._profile = (creator.email, creator.handle, creator.locale)
        return self._profile[index]

    @property
    def email(self) -> str:
        return self._field(0)

    @property
    def handle(self) -> str:
        return self._field(1)

    @property
    def locale(self) -> str:
        return self._field(2)


USER_KINDS: dict[str, type] = {CreatorUser.prefix: CreatorUser}


@login_manager.user_loader
def load_user(user_id: str):
    prefix, _, raw_id = user_id.partition(":")
    kind = USER_KINDS.get(prefix)
    if kind is None or not raw_id.isdigit():
        return None
    return kind(int(raw_id))


@login_manager.unauthorized_handler
def unauthorized():
    """Nobody signed in: 401 in JSON for the API, else to the sign-in page and back."""
    if wants_json():
        return error_response(401, "sign_in_required")
    flash(login_manager.login_message, login_manager.login_message_category)
    return redirect(login_url(login_manager.login_view, next_url=local_path(request.full_path)))


def local_path(value: str | None) -> str | None:
    """``value`` if it is a path on this site (``/programs/x?y``), else None: where a sign-in
    may send its creator next, so never another site (``//evil``, ``https://…``, ``/\\evil``,
    which browsers read as ``//evil``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if any(ch < " " or ch == "\x7f" for ch in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value.removesuffix("?")


def kind_required(*kinds: str):
    """Let in only users of these kinds: anyone else signed in gets 403, nobody signed in is
    sent to sign in."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.kind not in kinds:
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorator


creator_required = kind_required(CreatorUser.kind)
