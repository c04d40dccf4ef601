"""Password-less sign-in: a link mailed to an address on an eligibility list, usable once."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadData, SignatureExpired
from sqlmodel import Session, select
from werkzeug.security import generate_password_hash

from .. import dispatch
from ..db import write_transaction
from ..logs import log_event
from ..models import Creator, Eligibility, MailKind, Manager
from . import audit, tokens
from .emails import normalise_email
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


def request_sign_in(session: Session, *, email: str) -> int | None:
    """Queue a sign-in mail if the address is on an eligibility list; the mail's id.

    Returns None otherwise; callers answer the same way in both cases. A malformed address
    raises InvalidInput (that says nothing about any list).
    """
    normalised = normalise_email(email)
    outbound_id = None
    with write_transaction(session):
        creator = session.exec(select(Creator).where(Creator.email == normalised)).first()
        if creator is not None and session.exec(
            select(Eligibility.id).where(Eligibility.creator_id == creator.id)
        ).first():
            [outbound_id] = owe(session.connection(), [owed(
                kind=MailKind.sign_in, to_email=creator.email, creator_id=creator.id,
                locale=creator.locale, now=datetime.now(UTC))])
    if outbound_id is None:
        log_event("sign_in.requested", known=False)
        return None
    log_event("sign_in.requested", known=True, creator_id=creator.id, outbound_id=outbound_id)
    dispatch.send_email(outbound_id)
    return outbound_id


def get_creator(session: Session, *, creator_id: int) -> Creator:
    creator = session.get(Creator, creator_id)
    if creator is None:
        raise NotFound(f"no creator with id {creator_id}")
    return creator


def redeem_sign_in_token(session: Session, *, token: str) -> Creator:
    """The creator a valid, fresh, unused link names; using it spends it (and older links)."""
    max_age = current_app.config["LOGIN_TOKEN_MAX_AGE"]
    try:
        creator_id, nonce = tokens.parse_sign_in_token(token, max_age=max_age)
    except SignatureExpired as exc:
        raise SignInLinkExpired() from exc
    except BadData as exc:
        raise SignInLinkInvalid() from exc
    payload = {"c": creator_id, "n": nonce}
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
    audit.record(session, audit.event(actor=f"creator:{payload['c']}",
                                      action="creator.signed_in", object_type="creator",
                                      object_id=payload["c"], at=now))
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
        audit.record(session, audit.event(actor=actor, action="manager.created",
                                          object_type="manager", object_id=manager.id,
                                          detail={"email": normalised}))
    return manager

