"""Password-less sign-in: a link mailed to an address on an eligibility list, usable once."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlmodel import Session, select
from werkzeug.security import check_password_hash, generate_password_hash

from .. import dispatch
from ..db import write_transaction
from ..logs import log_event
from ..models import Creator, Eligibility, MailKind, Manager, OutboundEmail
from . import audit
from .emails import normalise_email
from .errors import Conflict, DomainError, InvalidInput

SIGN_IN_SALT = "wellness-perks.sign-in"


class SignInLinkError(DomainError):
    status_code = 400


class SignInLinkExpired(SignInLinkError):
    def __init__(self) -> None:
        super().__init__("This sign-in link has expired. Ask for a new one below.")


class SignInLinkInvalid(SignInLinkError):
    def __init__(self) -> None:
        super().__init__("This sign-in link is not valid. Ask for a new one below.")


class SignInLinkUsed(SignInLinkError):
    def __init__(self) -> None:
        super().__init__("This sign-in link has already been used. Ask for a new one below.")


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SIGN_IN_SALT)


def request_sign_in(session: Session, *, email: str) -> OutboundEmail | None:
    """Queue a sign-in mail if the address is on an eligibility list.

    Returns None otherwise; callers answer the same way in both cases. A malformed address
    raises InvalidInput (that says nothing about any list).
    """
    normalised = normalise_email(email)
    with write_transaction(session):
        creator = session.exec(select(Creator).where(Creator.email == normalised)).first()
        if creator is None or not session.exec(
            select(Eligibility.id).where(Eligibility.creator_id == creator.id)
        ).first():
            outbound = None
        else:
            outbound = OutboundEmail(kind=MailKind.sign_in, to_email=creator.email,
                                     creator_id=creator.id)
            session.add(outbound)
    if outbound is None:
        log_event("sign_in.requested", known=False)
        return None
    log_event("sign_in.requested", known=True, creator_id=creator.id, outbound_id=outbound.id)
    dispatch.send_email(outbound.id)
    return outbound


def mint_sign_in_token(creator: Creator) -> str:
    """A signed token naming the creator and their current nonce; minted at mail-send time."""
    return _serializer().dumps({"c": creator.id, "n": creator.login_nonce})


def redeem_sign_in_token(session: Session, *, token: str) -> Creator:
    """The creator a valid, fresh, unused link names; using it spends it (and older links)."""
    max_age = current_app.config["LOGIN_TOKEN_MAX_AGE"]
    try:
        payload = _serializer().loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise SignInLinkExpired() from exc
    except BadSignature as exc:
        raise SignInLinkInvalid() from exc
    if not isinstance(payload, dict) or not {"c", "n"} <= payload.keys():
        raise SignInLinkInvalid()
    now = datetime.now(UTC)
    spent = session.execute(
        sa.update(Creator)
        .where(Creator.id == payload["c"], Creator.login_nonce == payload["n"])
        .values(login_nonce=Creator.login_nonce + 1, last_login_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not spent:
        session.rollback()
        if session.get(Creator, payload["c"]) is None:
            raise SignInLinkInvalid()
        raise SignInLinkUsed()
    audit.record(session, actor=f"creator:{payload['c']}", action="creator.signed_in",
                 object_type="creator", object_id=payload["c"])
    session.commit()
    creator = session.get(Creator, payload["c"], populate_existing=True)
    log_event("sign_in.completed", creator_id=creator.id)
    return creator


def create_manager(session: Session, *, email: str, password: str, actor: str) -> Manager:
    normalised = normalise_email(email)
    if len(password) < 12:
        raise InvalidInput("password must be at least 12 characters", field="password")
    with write_transaction(session):
        if session.exec(select(Manager.id).where(Manager.email == normalised)).first():
            raise Conflict(f"a manager with email {normalised} already exists")
        manager = Manager(email=normalised, password_hash=generate_password_hash(password))
        session.add(manager)
        session.flush()
        audit.record(session, actor=actor, action="manager.created", object_type="manager",
                     object_id=manager.id, detail={"email": normalised})
    return manager


def check_manager_password(manager: Manager, password: str) -> bool:
    return check_password_hash(manager.password_hash, password)
