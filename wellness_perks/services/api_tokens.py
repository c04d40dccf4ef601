"""API tokens for scripts (``/api/v1``): made by an admin with one of the managers' roles and
an optional expiry, listed, revoked, and checked on each API request.

A token is ``wpt_<prefix>_<secret>``: ``prefix`` (12 hex digits) is public, shown in lists and
how a presented token is found; ``secret`` is ``secrets.token_urlsafe(32)`` (256 bits). Only
the SHA-256 of the whole token is stored, compared in constant time: the token is shown once,
when it is made, and never again (a lost token is revoked and another made). A token is
unguessable by its randomness alone, so no slow hash is needed (like the recovery codes).

Only an active admin makes tokens; any admin revokes one (so does the command line). A token
keeps working, with its own role, whoever made it and whatever becomes of them, until it is
revoked or expires. Each creation and revocation is audited; a use moves ``last_used_at`` at
most once a minute, so a script's every request does not write.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from ..db import write_transaction
from ..logs import log_event
from ..models import MANAGER_ROLES, ApiToken, Manager, ManagerRole
from . import audit
from .errors import DomainError, InvalidInput, NotFound

TOKEN_SCHEME = "wpt"  # every token starts ``wpt_``: a secret scanner can tell one
_TOKEN = re.compile(r"^wpt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAX_NAME_LENGTH = 100
MAX_EXPIRES_DAYS = 3650
# ``last_used_at`` is moved when it is at least this old: at most one write a minute a token.
USE_RESOLUTION = timedelta(minutes=1)


class ApiTokenState(enum.StrEnum):
    active = "active"
    expired = "expired"
    revoked = "revoked"


class NotAnAdmin(DomainError):
    """Only an active admin makes API tokens."""

    status_code = 403
    code = "api_token_admin_only"


class ApiTokenNotFound(NotFound):
    code = "api_token_not_found"


@dataclass(frozen=True)
class ApiTokenRow:
    """A token as lists show it: never its secret, nor its hash."""

    token_id: int
    name: str
    role: str
    prefix: str
    created_by: str  # the admin's address
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None  # the admin's address; None when revoked from the command line

    def state(self, now: datetime) -> ApiTokenState:
        if self.revoked_at is not None:
            return ApiTokenState.revoked
        if self.expires_at is not None and now >= self.expires_at:
            return ApiTokenState.expired
        return ApiTokenState.active


@dataclass(frozen=True)
class CreatedToken:
    row: ApiTokenRow
    token: str  # the token itself: to show once, never to store or log


@dataclass(frozen=True)
class TokenHolder:
    """Who a request with a valid token is."""

    token_id: int
    name: str
    role: str
    prefix: str

    @property
    def actor(self) -> str:
        """How audit events name them."""
        return f"api_token:{self.token_id}"


def digest(token: str) -> str:
    """How a token is stored: the SHA-256 of the whole token, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _checked_name(name: str | None) -> str:
    name = (name or "").strip()
    if not name:
        raise InvalidInput("give the token a name (what uses it)", field="name",
                           code="api_token_name_required")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"the name is longer than {MAX_NAME_LENGTH} characters",
                           field="name", code="api_token_name_too_long", limit=MAX_NAME_LENGTH)
    return name


def _checked_role(role: str) -> str:
    if role not in MANAGER_ROLES:
        raise InvalidInput(f"role must be one of {', '.join(MANAGER_ROLES)}", field="role",
                           code="manager_role_unknown")
    return role


def _checked_days(days: int | None) -> int | None:
    if days is not None and not 1 <= days <= MAX_EXPIRES_DAYS:
        raise InvalidInput(f"expiry must be 1 to {MAX_EXPIRES_DAYS} days", field="expires_days",
                           code="api_token_expiry_invalid", limit=MAX_EXPIRES_DAYS)
    return days


def create(session: Session, *, name: str, role: str, created_by: int,
           expires_in_days: int | None = None, actor: str,
           now: datetime | None = None) -> CreatedToken:
    """A new token, made by the admin ``created_by`` (NotAnAdmin for anyone else, or a disabled
    admin); the token itself is in the answer, and only there. Audited (without it)."""
    name, role = _checked_name(name), _checked_role(role)
    days = _checked_days(expires_in_days)
    now = now or datetime.now(UTC)
    prefix = secrets.token_hex(6)
    token = f"{TOKEN_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    expires_at = now + timedelta(days=days) if days is not None else None
    with write_transaction(session):
        # Read under a share lock: the admin is not demoted or disabled while the token is made.
        creator = session.execute(
            sa.select(Manager.email, Manager.role, Manager.disabled_at)
            .where(Manager.id == created_by).with_for_update(read=True)).first()
        if creator is None or creator.role != ManagerRole.admin or creator.disabled_at:
            who = creator.email if creator is not None else f"manager #{created_by}"
            raise NotAnAdmin(f"{who} is not an active admin: only active admins make API "
                             "tokens")
        row = ApiToken(name=name, role=role, prefix=prefix, secret_hash=digest(token),
                       created_by=created_by, created_at=now, expires_at=expires_at)
        session.add(row)
        session.flush()
        token_id = row.id
        audit.record(session, audit.event(
            actor=actor, action="api_token.created", object_type="api_token",
            object_id=token_id, at=now,
            detail={"name": name, "role": role, "prefix": prefix, "expires_at": expires_at}))
    log_event("api_token.created", api_token_id=token_id, prefix=prefix, role=role)
    return CreatedToken(ApiTokenRow(token_id, name, role, prefix, creator.email, now,
                                    expires_at, None, None, None), token)


_by, _revoker = aliased(Manager), aliased(Manager)
_LIST = (sa.select(ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.prefix,
                   _by.email.label("created_by"), ApiToken.created_at, ApiToken.expires_at,
                   ApiToken.last_used_at, ApiToken.revoked_at,
                   _revoker.email.label("revoked_by"))
         .join(_by, _by.id == ApiToken.created_by)
         .outerjoin(_revoker, _revoker.id == ApiToken.revoked_by))


def _row(r) -> ApiTokenRow:
    return ApiTokenRow(r.id, r.name, r.role, r.prefix, r.created_by, r.created_at, r.expires_at,
                       r.last_used_at, r.revoked_at, r.revoked_by)


def list_tokens(session: Session) -> list[ApiTokenRow]:
    """Every token, revoked and expired ones included, newest first."""
    rows = session.execute(_LIST.order_by(ApiToken.created_at.desc(),
                                          ApiToken.id.desc())).all()
    session.rollback()
    return [_row(r) for r in rows]


def get_token(session: Session, *, token_id: int | None = None,
              prefix: str | None = None) -> ApiTokenRow:
    """One token, by id or by prefix (ApiTokenNotFound)."""
    where = ApiToken.id == token_id if token_id is not None else ApiToken.prefix == prefix
    row = session.execute(_LIST.where(where)).first()
    session.rollback()
    if row is None:
        raise ApiTokenNotFound(f"no API token {prefix or f'#{token_id}'}",
                               prefix=prefix, token_id=token_id)
    return _row(row)


def revoke(session: Session, *, token_id: int | None = None, prefix: str | None = None,
           revoked_by: int | None, actor: str, now: datetime | None = None) -> bool:
    """Revoke a token (by id or prefix; ApiTokenNotFound): from now on it names no one.
    True if it was revoked now, False if it already was (nothing is changed or audited then).
    ``revoked_by`` is the admin (None from the command line)."""
    now = now or datetime.now(UTC)
    where = ApiToken.id == token_id if token_id is not None else ApiToken.prefix == prefix
    with write_transaction(session):
        row = session.execute(sa.select(ApiToken.id, ApiToken.prefix, ApiToken.revoked_at)
                              .where(where).with_for_update()).first()
        if row is None:
            raise ApiTokenNotFound(f"no API token {prefix or f'#{token_id}'}",
                                   prefix=prefix, token_id=token_id)
        if row.revoked_at is not None:
            return False
        session.execute(sa.update(ApiToken).where(ApiToken.id == row.id)
                        .values(revoked_at=now, revoked_by=revoked_by))
        audit.record(session, audit.event(actor=actor, action="api_token.revoked",
                                          object_type="api_token", object_id=row.id, at=now,
                                          detail={"prefix": row.prefix}))
    log_event("api_token.revoked", api_token_id=row.id, prefix=row.prefix)
    return True


# Compared against when no token has the prefix given, so an unknown prefix costs the same
# hashing and comparison as a wrong secret.
_NO_ONE = digest(f"{TOKEN_SCHEME}_000000000000_not-a-token")


def parse_prefix(presented: str | None) -> str | None:
    """The prefix of something shaped like a token, else None."""
    if not presented or len(presented) > 100:
        return None
    match = _TOKEN.match(presented)
    return match.group(1) if match else None


def authenticate(session: Session, presented: str | None, *,
                 now: datetime | None = None) -> TokenHolder | None:
    """The holder of ``presented``, or None: malformed, unknown, a wrong secret, revoked or
    expired are all None (the log line says which, by prefix; never the token)."""
    now = now or datetime.now(UTC)
    prefix = parse_prefix(presented)
    if prefix is None:
        log_event("api_token.refused", reason="malformed")
        return None
    row = session.execute(
        sa.select(ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.secret_hash,
                  ApiToken.expires_at, ApiToken.revoked_at, ApiToken.last_used_at)
        .where(ApiToken.prefix == prefix)).first()
    session.rollback()
    matches = hmac.compare_digest(digest(presented),
                                  row.secret_hash if row is not None else _NO_ONE)
    reason = ("unknown" if row is None else "wrong_secret" if not matches
              else "revoked" if row.revoked_at is not None
              else "expired" if row.expires_at is not None and now >= row.expires_at
              else None)
    if reason is not None:
        log_event("api_token.refused", reason=reason, prefix=prefix)
        return None
    if row.last_used_at is None or now - row.last_used_at >= USE_RESOLUTION:
        _used(session, row.id, now)
    return TokenHolder(row.id, row.name, row.role, prefix)


def _used(session: Session, token_id: int, now: datetime) -> None:
    """``last_used_at`` = now, unless another request moved it within the resolution."""
    with write_transaction(session):
        session.execute(sa.update(ApiToken).where(
            ApiToken.id == token_id,
            sa.or_(ApiToken.last_used_at.is_(None),
                   ApiToken.last_used_at <= now - USE_RESOLUTION))
            .values(last_used_at=now))
