"""Who is signed in, and what each kind of user may reach.

A signed session names its user by kind, id and session version (``"c:12:3"`` is creator 12,
in a session begun under version 3), so every kind of user shares Flask-Login's machinery:
``USER_KINDS`` maps the prefix to the class, and a view says which kinds it lets in with
``@kind_required(...)`` (``@creator_required`` for the portal). A session of another kind is
refused with 403; no session at all is sent to sign in.

The cookie is not the session's only keeper: signing out bumps the creator's session version,
so every session begun before it (a copied cookie included) names no one from then on. A
session also ends after SESSION_IDLE_MINUTES without a request and SESSION_MAX_HOURS after its
sign-in (``end_expired_session``; its clock is ``clock``, which tests move).

CSRF protection is on for every form POST; a blueprint whose requests authenticate otherwise
(a token-authenticated JSON API) is exempted when it is registered (``web.register``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import wraps
from urllib.parse import urlsplit

from flask import abort, current_app, flash, g, redirect, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_url, login_user, logout_user
from flask_wtf import CSRFProtect

from ..db import get_session
from ..models import MANAGER_ROLES, role_includes
from ..services import api_tokens, auth, two_factor
from . import limits
from .errors import error_response, wants_json

csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "sign_in_required"  # a message code: templates/messages.html


class CreatorUser(UserMixin):
    """The signed-in creator as Flask-Login sees them: loaded in one query, which also checks
    that the session has not been ended."""

    kind = "creator"
    prefix = "c"

    def __init__(self, creator_id: int, email: str, handle: str, locale: str,
                 session_version: int) -> None:
        self.creator_id = creator_id
        self.email = email
        self.handle = handle
        self.locale = locale
        self.session_version = session_version

    @classmethod
    def from_signed_in(cls, signed_in: auth.SignedInCreator) -> CreatorUser:
        return cls(signed_in.creator_id, signed_in.email, signed_in.handle, signed_in.locale,
                   signed_in.session_version)

    def get_id(self) -> str:
        return f"{self.prefix}:{self.creator_id}:{self.session_version}"

    @classmethod
    def load(cls, creator_id: int, session_version: int) -> CreatorUser | None:
        signed_in = auth.signed_in_creator(get_session(), creator_id=creator_id,
                                           session_version=session_version)
        return cls.from_signed_in(signed_in) if signed_in else None

    def end_sessions(self) -> None:
        auth.end_sessions(get_session(), creator_id=self.creator_id)


class ManagerUser(UserMixin):
    """The signed-in program manager (the console), loaded in one query like a creator."""

    kind = "manager"
    prefix = "m"

    def __init__(self, manager_id: int, email: str, role: str, session_version: int,
                 two_factor: bool = False) -> None:
        self.manager_id = manager_id
        self.email = email
        self.role = role
        self.session_version = session_version
        self.two_factor = two_factor

    @classmethod
    def from_signed_in(cls, signed_in: auth.SignedInManager) -> ManagerUser:
        return cls(signed_in.manager_id, signed_in.email, signed_in.role,
                   signed_in.session_version, signed_in.two_factor)

    @property
    def actor(self) -> str:
        """How audit events name them."""
        return f"manager:{self.manager_id}"

    def get_id(self) -> str:
        return f"{self.prefix}:{self.manager_id}:{self.session_version}"

    def can(self, role: str) -> bool:
        """Whether their role includes ``role`` (viewer < manager < admin)."""
        return role_includes(self.role, role)

    @classmethod
    def load(cls, manager_id: int, session_version: int) -> ManagerUser | None:
        signed_in = auth.signed_in_manager(get_session(), manager_id=manager_id,
                                           session_version=session_version)
        return cls.from_signed_in(signed_in) if signed_in else None

    def end_sessions(self) -> None:
        auth.end_manager_sessions(get_session(), manager_id=self.manager_id)


USER_KINDS: dict[str, type] = {CreatorUser.prefix: CreatorUser, ManagerUser.prefix: ManagerUser}


@login_manager.user_loader
def load_user(user_id: str):
    if g.get("database_unavailable"):
        return None  # the page saying so is shown without reading who is signed in
    prefix, *numbers = user_id.split(":")
    kind = USER_KINDS.get(prefix)
    if kind is None or len(numbers) != 2 or not all(n.isdigit() for n in numbers):
        return None  # includes a session from before session versions: sign in again
    return kind.load(int(numbers[0]), int(numbers[1]))


clock = time.time  # the sessions' clock (seconds); tests move it
SIGNED_IN_AT = "signed_in_at"
SEEN_AT = "seen_at"
SEEN_AT_RESOLUTION = 60  # seconds: the cookie is rewritten at most once a minute for it


def begin_session(user) -> None:
    """Sign ``user`` in, in a session of its own: nothing of the session before survives
    (session fixation gets nowhere), and its lifetime starts now."""
    session.clear()
    login_user(user)
    now = int(clock())
    session[SIGNED_IN_AT] = now
    session[SEEN_AT] = now


def end_session() -> None:
    """Sign out here and on every device (the user's session version moves on)."""
    if current_user.is_authenticated:
        current_user.end_sessions()
    logout_user()
    session.clear()


def end_expired_session() -> None:
    """Before each request: a session idle longer than SESSION_IDLE_MINUTES, or older than
    SESSION_MAX_HOURS, is over (the user signs in again); otherwise it has been seen now."""
    if "_user_id" not in session:
        return
    config = current_app.config
    now = int(clock())
    signed_in_at, seen_at = session.get(SIGNED_IN_AT), session.get(SEEN_AT)
    if (not isinstance(signed_in_at, int) or not isinstance(seen_at, int)
            or now - seen_at > config["SESSION_IDLE_MINUTES"] * 60
            or now - signed_in_at > config["SESSION_MAX_HOURS"] * 3600):
        session.clear()
        return
    if now - seen_at >= SEEN_AT_RESOLUTION:
        session[SEEN_AT] = now


@login_manager.unauthorized_handler
def unauthorized():
    """Nobody signed in: 401 in JSON for the API, else to the sign-in page and back."""
    if wants_json():
        return error_response(401, "sign_in_required")
    console = request.blueprint == "console"
    flash(CONSOLE_SIGN_IN_REQUIRED if console else login_manager.login_message,
          login_manager.login_message_category)
    view = CONSOLE_LOGIN_VIEW if console else login_manager.login_view
    return redirect(login_url(view, next_url=local_path(request.full_path)))


CONSOLE_LOGIN_VIEW = "console.login"  # managers sign in with a password, not a mailed link
CONSOLE_SIGN_IN_REQUIRED = "console_sign_in_required"  # a manager has no perks to see


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


def role_required(role: str, *, enrolling: bool = False):
    """Let in only managers whose role includes ``role``: a manager of a lesser role, or a
    creator, gets 403; nobody signed in is sent to the console's sign-in. An admin session
    without a second factor (one begun before it was reset) reaches only the pages that set one
    up (``enrolling=True``): every other page sends it there."""
    if role not in MANAGER_ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.kind != ManagerUser.kind or not current_user.can(role):
                abort(403)
            if (not enrolling and not current_user.two_factor
                    and two_factor.required(current_user.role)):
                flash("two_factor_required_for_admins")
                return redirect(url_for(ENROLL_VIEW))
            return view(*args, **kwargs)

        return wrapper

    return decorator


ENROLL_VIEW = "console.two_factor_setup"


# --------------------------------------------------------------------------- API tokens

API_REALM = "wellness-perks"


def _api_refusal(status: int, code: str, error: str | None = None):
    """A JSON refusal with the ``WWW-Authenticate`` challenge of RFC 6750."""
    challenge = f'Bearer realm="{API_REALM}"' + (f', error="{error}"' if error else "")
    body, status = error_response(status, code)
    return body, status, {"WWW-Authenticate": challenge}


def token_role_required(role: str):
    """An API view: the request's bearer token (``Authorization: Bearer wpt_…``) must name a
    holder whose role includes ``role``, the console's check (``role_includes``). No token:
    401 ``api_token_required``; a token that names no one (unknown, wrong, revoked, expired):
    401 ``api_token_invalid``; a lesser role: 403. The session cookie counts for nothing here
    (which is why the API needs no CSRF token). Each request with a token counts toward
    RATELIMIT_API_TOKEN before any work. The holder is ``g.api_token``."""
    if role not in MANAGER_ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            presented = limits.api_token_of_request()
            if presented is None:
                return _api_refusal(401, "api_token_required")
            limits.hit("api_token", presented)
            holder = api_tokens.authenticate(get_session(), presented)
            if holder is None:
                return _api_refusal(401, "api_token_invalid", "invalid_token")
            if not role_includes(holder.role, role):
                return _api_refusal(403, "api_token_role_too_low", "insufficient_scope")
            g.api_token = holder
            return view(*args, **kwargs)

        return wrapper

    return decorator


# --------------------------------------------------------------------------- half a sign-in

PENDING = "console_pending"


@dataclass(frozen=True)
class PendingSignIn:
    """A console sign-in whose password was right and whose second step (a code, or an
    admin's enrollment) is still to come: kept in the session, bound to the manager and their
    session version, for two_factor.PENDING_SECONDS and PENDING_ATTEMPTS wrong codes."""

    manager_id: int
    session_version: int
    email: str
    step: str  # "code" or "enroll"
    next_path: str | None


def begin_pending_sign_in(signed_in: auth.SignedInManager, next_path: str | None) -> None:
    session.clear()  # nothing of a session before survives, as at begin_session
    session[PENDING] = {"m": signed_in.manager_id, "v": signed_in.session_version,
                        "e": signed_in.email, "s": signed_in.second_step,
                        "n": next_path, "at": int(clock()), "f": 0}


def pending_sign_in(step: str) -> PendingSignIn | None:
    """The sign-in waiting for this step, or None (none, another step's, or too old: the
    password is asked for again)."""
    state = session.get(PENDING)
    if not isinstance(state, dict) or state.get("s") != step:
        return None
    at = state.get("at")
    if (not isinstance(at, int) or int(clock()) - at > two_factor.PENDING_SECONDS
            or state.get("f", 0) >= two_factor.PENDING_ATTEMPTS):
        session.pop(PENDING, None)
        return None
    return PendingSignIn(state["m"], state["v"], state["e"], state["s"], state.get("n"))


def count_pending_failure() -> bool:
    """One more wrong code for the waiting sign-in; False once it has had its tries (it is
    over: the password is asked for again)."""
    state = dict(session.get(PENDING) or {})
    state["f"] = state.get("f", 0) + 1
    if state["f"] >= two_factor.PENDING_ATTEMPTS:
        session.pop(PENDING, None)
        return False
    session[PENDING] = state
    return True


def end_pending_sign_in() -> None:
    session.pop(PENDING, None)
