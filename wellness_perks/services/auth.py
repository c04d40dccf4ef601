"""Password-less sign-in: a link mailed to an address on an eligibility list.

A link names its creator and the number of their newest link (``Creator.login_nonce``). Asking
for a link bumps that number, so only the newest link works; using it bumps it again, so it
works once. Opening a link only looks at it (``inspect_sign_in_link``): a mail scanner or a
link preview that fetches it uses nothing up; the creator's press of the button on the page
that opens redeems it (``redeem_sign_in_token``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadData, SignatureExpired
from sqlmodel import Session, select
from werkzeug.security import check_password_hash, generate_password_hash

from .. import dispatch
from ..db import once_more_if_disconnected, read_outside_transaction, write_transaction
from ..logs import log_event
from ..models import MANAGER_ROLES, Creator, Eligibility, MailKind, Manager, ManagerRole
from . import audit, tokens
from .emails import mask_email, normalise_email
from .errors import Conflict, DomainError, InvalidInput, NotFound
from .mail import owe, owed


class SignInLinkError(DomainError):
    """A sign-in link that cannot be used; ``code`` says why."""

    status_code = 400


class SignInLinkExpired(SignInLinkError):
    code = "sign_in_link_expired"


class SignInLinkInvalid(SignInLinkError):
    code = "sign_in_link_invalid"


class SignInLinkUsed(SignInLinkError):
    code = "sign_in_link_used"


class SignInLinkSuperseded(SignInLinkError):
    """A link never used, but a newer one was sent since: only the newest works."""

    code = "sign_in_link_superseded"


class SignInUnavailable(DomainError):
    """The request could not be handed to the workers (the broker is down): ask again."""

    status_code = 503
    code = "sign_in_unavailable"


def ask_for_sign_in(*, email: str) -> None:
    """What ``POST /login`` does: the same work whatever the address, and no look-up at all.

    The normalised address is handed to a task (``request_sign_in``, in a worker) that decides
    whether it is on a list and mails a link only if it is; so neither the answer nor the time
    it takes says anything about any list. A malformed address raises InvalidInput (that says
    nothing about lists either); SignInUnavailable when the task could not be queued.
    """
    if not dispatch.request_sign_in(normalise_email(email)):
        raise SignInUnavailable("the sign-in request could not be queued; try again")


def request_sign_in(session: Session, *, email: str) -> int | None:
    """Queue a sign-in mail if the address is on an eligibility list; the mail's id.

    Returns None otherwise. Runs in a worker (``ask_for_sign_in`` hands the address over), so
    the web request does the same work either way. A malformed address raises InvalidInput.
    """
    normalised = normalise_email(email)
    outbound_id = None
    with write_transaction(session):
        creator = session.exec(select(Creator).where(Creator.email == normalised)).first()
        if creator is not None and session.exec(
            select(Eligibility.id).where(Eligibility.creator_id == creator.id)
        ).first():
            # A new link: every link sent before it stops working.
            session.execute(sa.update(Creator).where(Creator.id == creator.id)
                            .values(login_nonce=Creator.login_nonce + 1)
                            .execution_options(synchronize_session=False))
            [outbound_id] = owe(session.connection(), [owed(
                kind=MailKind.sign_in, to_email=creator.email, creator_id=creator.id,
                locale=creator.locale, now=datetime.now(UTC))])
    if outbound_id is None:
        log_event("sign_in.requested", known=False)  # pragma: no mutate
        return None
    # pragma: no mutate start (the log line only)
    log_event("sign_in.requested", known=True, creator_id=creator.id, outbound_id=outbound_id)
    # pragma: no mutate end
    dispatch.send_email(outbound_id)
    return outbound_id


@dataclass(frozen=True)
class SignedInCreator:
    """Who a session names, read in one query when the session is still theirs."""

    creator_id: int
    email: str
    handle: str
    locale: str
    session_version: int


def signed_in_creator(session: Session, *, creator_id: int,
                      session_version: int) -> SignedInCreator | None:
    """The creator a session names, or None when that session has been ended (they signed out,
    or were forgotten, since it began): every session carries the version it began under."""
    # The first statement of a request: a connection the server dropped costs a retry (a read).
    row = once_more_if_disconnected(session, lambda: read_outside_transaction(
        session, _SIGNED_IN_CREATOR, {"b_creator": creator_id}))
    if row is None or row.session_version != session_version:
        return None
    return SignedInCreator(creator_id, row.email, row.handle, row.locale, row.session_version)


_SIGNED_IN_CREATOR = (
    sa.select(Creator.email, Creator.handle, Creator.locale, Creator.session_version)
    .where(Creator.id == sa.bindparam("b_creator")))


def end_sessions(session: Session, *, creator_id: int) -> None:
    """End every session of this creator, on every device, at once (sign-out)."""
    with write_transaction(session):
        session.execute(sa.update(Creator).where(Creator.id == creator_id)
                        .values(session_version=Creator.session_version + 1)
                        .execution_options(synchronize_session=False))
    log_event("sign_in.sessions_ended", creator_id=creator_id)  # pragma: no mutate


def get_creator(session: Session, *, creator_id: int) -> Creator:
    creator = session.get(Creator, creator_id)
    if creator is None:
        raise NotFound(f"no creator with id {creator_id}")
    return creator


@dataclass(frozen=True)
class SignInLink:
    """What the page a link opens may show: whose link it is, with the address masked."""

    creator_id: int
    masked_email: str


def _payload(token: str) -> tuple[int, int]:
    """(creator id, link number) of a well-signed, fresh token: a sign-in link's, fresh for
    LOGIN_TOKEN_MAX_AGE, or an invitation's, fresh for INVITE_LINK_MAX_AGE; SignInLinkError
    otherwise."""
    config = current_app.config
    try:
        return tokens.parse_sign_in_token(token, max_age=config["LOGIN_TOKEN_MAX_AGE"])
    except SignatureExpired as exc:
        raise SignInLinkExpired() from exc
    except BadData:
        pass  # not a sign-in link's token: an invitation's, or none of ours
    try:
        return tokens.parse_invitation_token(token, max_age=config["INVITE_LINK_MAX_AGE"])
    except SignatureExpired as exc:
        raise SignInLinkExpired() from exc
    except BadData as exc:
        raise SignInLinkInvalid() from exc


def _refusal(creator: Creator | None, nonce: int) -> SignInLinkError:
    """Why a link with this number no longer works for this creator."""
    if creator is None:
        return SignInLinkInvalid()
    if creator.login_used_nonce is not None and nonce <= creator.login_used_nonce:
        return SignInLinkUsed()
    if nonce < creator.login_nonce:
        return SignInLinkSuperseded()
    return SignInLinkInvalid()


def inspect_sign_in_link(session: Session, *, token: str) -> SignInLink:
    """The creator a link would sign in, if it would; reading it uses nothing up."""
    creator_id, nonce = _payload(token)

    def read() -> Creator | None:
        found = session.get(Creator, creator_id)
        session.commit()
        return found

    creator = once_more_if_disconnected(session, read)  # a dropped connection costs a retry
    if creator is None or creator.login_nonce != nonce:
        raise _refusal(creator, nonce)
    return SignInLink(creator_id=creator.id, masked_email=mask_email(creator.email))


def redeem_sign_in_token(session: Session, *, token: str) -> Creator:
    """The creator a valid, fresh, newest, unused link names; using it spends it."""
    creator_id, nonce = _payload(token)
    # A dropped connection costs a retry: the link is spent in one transaction, so a first
    # try that died before its commit left nothing behind.
    once_more_if_disconnected(session, lambda: _spend_link(session, creator_id, nonce))
    creator = once_more_if_disconnected(
        session, lambda: session.get(Creator, creator_id, populate_existing=True))
    log_event("sign_in.completed", creator_id=creator.id)  # pragma: no mutate
    return creator


def _spend_link(session: Session, creator_id: int, nonce: int) -> None:
    now = datetime.now(UTC)
    spent = session.execute(
        sa.update(Creator)
        .where(Creator.id == creator_id, Creator.login_nonce == nonce)
        .values(login_nonce=Creator.login_nonce + 1, login_used_nonce=nonce, last_login_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not spent:
        session.rollback()
        raise _refusal(session.get(Creator, creator_id, populate_existing=True), nonce)
    audit.record(session, audit.event(actor=f"creator:{creator_id}",
                                      action="creator.signed_in", object_type="creator",
                                      object_id=creator_id, at=now))
    session.commit()


MIN_PASSWORD_LENGTH = 12


def check_password_rules(password: str) -> None:
    """InvalidInput unless ``password`` may be a manager's: at least 12 characters (the same
    rule for a new account and a new password)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD_LENGTH} characters",
                           field="password", code="password_too_short")


# A stored password costs a guesser scrypt with 32 MiB and 2^15 rounds per try (werkzeug's
# default, named so it cannot drift with werkzeug's).
PASSWORD_HASH_METHOD = "scrypt:32768:8:1"


def password_hash(password: str) -> str:
    """The salted hash a manager's password is stored as (after ``check_password_rules``)."""
    check_password_rules(password)
    return generate_password_hash(password, method=PASSWORD_HASH_METHOD)


def create_manager(session: Session, *, email: str, password: str, actor: str,
                   role: str = "manager") -> Manager:
    normalised = normalise_email(email)
    if role not in MANAGER_ROLES:
        raise InvalidInput(f"role must be one of {', '.join(MANAGER_ROLES)}", field="role",
                           code="manager_role_unknown")
    hashed = password_hash(password)  # checks the rules; hashed before the write lock
    with write_transaction(session):
        if session.exec(select(Manager.id).where(Manager.email == normalised)).first():
            raise Conflict(f"a manager with email {normalised} already exists",
                           code="manager_exists")
        manager = Manager(email=normalised, password_hash=hashed, role=role)
        session.add(manager)
        session.flush()
        audit.record(session, audit.event(actor=actor, action="manager.created",
                                          object_type="manager", object_id=manager.id,
                                          detail={"email": normalised, "role": role}))
    return manager


class PasswordRejected(DomainError):
    """The address and password do not name an active manager (which of them is wrong is not
    said)."""

    status_code = 400
    code = "manager_password_rejected"


# Checked when the address names no manager, so that a wrong address costs the same hashing as
# a wrong password: the time of an answer tells no one which addresses are managers.
_NO_ONE = generate_password_hash("not a password of anyone", method=PASSWORD_HASH_METHOD)


@dataclass(frozen=True)
class SignedInManager:
    """Who a manager session names, read in one query when the session is still theirs."""

    manager_id: int
    email: str
    role: str
    session_version: int
    two_factor: bool = False  # signs in with a second factor (services/two_factor.py)

    @property
    def second_step(self) -> str | None:
        """What a sign-in asks for after the password: ``"code"`` (two-factor is on),
        ``"enroll"`` (an admin without it), or None (the password is enough)."""
        if self.two_factor:
            return "code"
        return "enroll" if self.role == ManagerRole.admin.value else None


def _signed_in(manager: Manager) -> SignedInManager:
    return SignedInManager(manager.id, manager.email, manager.role, manager.session_version,
                           manager.totp_enabled_at is not None)


def check_manager_password(session: Session, *, email: str, password: str) -> SignedInManager:
    """The manager this address and password name, or PasswordRejected (also for a disabled
    account). Records nothing: the sign-in is recorded when its session begins
    (``record_manager_sign_in``), after the second step if one is asked for."""
    try:
        normalised = normalise_email(email)
    except InvalidInput:
        normalised = None
    manager = (session.exec(select(Manager).where(Manager.email == normalised)).first()
               if normalised else None)
    matches = check_password_hash(manager.password_hash if manager else _NO_ONE, password)
    if manager is None or not matches or manager.disabled_at is not None:
        session.rollback()
        raise PasswordRejected()
    signed_in = _signed_in(manager)
    session.rollback()
    return signed_in


def record_manager_sign_in(session: Session, *, manager_id: int, session_version: int,
                           method: str = "password") -> SignedInManager:
    """Begin the sign-in of a manager who has passed every step: the manager as they are now,
    or PasswordRejected if the account was disabled, or its sessions ended, since the password
    was checked. ``method`` says what the last step was (password, totp, recovery_code)."""
    with write_transaction(session):
        manager = session.get(Manager, manager_id, with_for_update=True)
        if (manager is None or manager.disabled_at is not None
                or manager.session_version != session_version):
            raise PasswordRejected()
        manager.last_login_at = datetime.now(UTC)
        audit.record(session, audit.event(actor=f"manager:{manager.id}",
                                          action="manager.signed_in", object_type="manager",
                                          object_id=manager.id,
                                          detail=None if method == "password"
                                          else {"second_factor": method}))
        signed_in = _signed_in(manager)
    return signed_in


def signed_in_manager(session: Session, *, manager_id: int,
                      session_version: int) -> SignedInManager | None:
    """The manager a session names, or None when that session has been ended (sign-out, a
    disabled account)."""
    row = once_more_if_disconnected(session, lambda: read_outside_transaction(
        session, _SIGNED_IN_MANAGER, {"b_manager": manager_id}))
    if row is None or row.session_version != session_version or row.disabled_at is not None:
        return None
    return SignedInManager(manager_id, row.email, row.role, row.session_version,
                           row.totp_enabled_at is not None)


def end_manager_sessions(session: Session, *, manager_id: int) -> None:
    """End every session of this manager, on every device, at once."""
    with write_transaction(session):
        session.execute(sa.update(Manager).where(Manager.id == manager_id)
                        .values(session_version=Manager.session_version + 1)
                        .execution_options(synchronize_session=False))
    log_event("manager.sessions_ended", manager_id=manager_id)  # pragma: no mutate


_SIGNED_IN_MANAGER = (
    sa.select(Manager.email, Manager.role, Manager.session_version, Manager.disabled_at,
              Manager.totp_enabled_at)
    .where(Manager.id == sa.bindparam("b_manager")))
