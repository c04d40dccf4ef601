"""A creator's personal data: what is kept about them, their request to be forgotten, and
forgetting them.

Forgetting removes what identifies a person (email, handle, name) from every table, while the
code accounting stays whole: the eligibility, the claim, the code it holds, its assignment and
its mail rows stay, naming an anonymous creator, so ``verify`` holds as before. Mails still
owed to them can no longer be delivered: they end ``failed`` with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from ..db import write_transaction
from ..logs import log_event
from ..models import (
    AuditEvent,
    Claim,
    Creator,
    Eligibility,
    MailProblem,
    MailStatus,
    OutboundEmail,
    Program,
)
from . import audit
from .emails import normalise_email
from .errors import NotFound

FORGOTTEN_DOMAIN = "forgotten.invalid"  # RFC 2606: a domain no mail is ever delivered to
DELETION_REQUESTED = "creator.deletion_requested"
FORGOTTEN = "creator.forgotten"


def forgotten_address(creator_id: int) -> str:
    """What stands in for a forgotten creator's address: unique, and never deliverable."""
    return f"forgotten-{creator_id}@{FORGOTTEN_DOMAIN}"


@dataclass
class StoredData:
    """Everything kept about a creator that a page can show them (never a code: their program
    page shows it)."""

    email: str
    handle: str
    name: str | None
    country: str
    locale: str
    created_at: datetime
    last_login_at: datetime | None
    programs: list[tuple[str, str | None]] = field(default_factory=list)  # name, claim state
    mails: list[tuple[str, str, datetime]] = field(default_factory=list)  # kind, status, when
    deletion_requested_at: datetime | None = None


def stored_data(session: Session, *, creator_id: int) -> StoredData:
    creator = session.get(Creator, creator_id)
    if creator is None:
        raise NotFound(f"no creator with id {creator_id}")
    claims = dict(session.execute(sa.select(Claim.program_id, Claim.state)
                                  .where(Claim.creator_id == creator_id)).all())
    listed = sa.select(Eligibility.program_id).where(Eligibility.creator_id == creator_id)
    programs = session.execute(
        sa.select(Program.id, Program.name)
        .where(Program.id.in_(listed.union(sa.select(Claim.program_id)
                                           .where(Claim.creator_id == creator_id))))
        .order_by(Program.id)).all()
    mails = session.execute(
        sa.select(OutboundEmail.kind, OutboundEmail.status, OutboundEmail.created_at)
        .where(OutboundEmail.creator_id == creator_id).order_by(OutboundEmail.id)).all()
    requested = session.execute(
        sa.select(sa.func.max(AuditEvent.at))
        .where(AuditEvent.object_type == "creator", AuditEvent.object_id == creator_id,
               AuditEvent.action == DELETION_REQUESTED)).scalar()
    session.commit()
    return StoredData(
        email=creator.email, handle=creator.handle, name=creator.name, country=creator.country,
        locale=creator.locale, created_at=creator.created_at,
        last_login_at=creator.last_login_at,
        programs=[(name, claims.get(program_id)) for program_id, name in programs],
        mails=[tuple(row) for row in mails], deletion_requested_at=requested)


def request_deletion(session: Session, *, creator_id: int) -> datetime:
    """Record the creator's request to be forgotten, for managers to act on; when it was made
    (asking again changes nothing)."""
    with write_transaction(session):
        earlier = session.execute(
            sa.select(sa.func.min(AuditEvent.at))
            .where(AuditEvent.object_type == "creator", AuditEvent.object_id == creator_id,
                   AuditEvent.action == DELETION_REQUESTED)).scalar()
        if earlier is not None:
            return earlier
        now = datetime.now(UTC)
        audit.record(session, audit.event(actor=f"creator:{creator_id}",
                                          action=DELETION_REQUESTED, object_type="creator",
                                          object_id=creator_id, at=now))
    log_event("creator.deletion_requested", creator_id=creator_id)
    return now


@dataclass(frozen=True)
class Forgotten:
    creator_id: int
    mails_failed: int


def forget_creator(session: Session, *, email: str, actor: str) -> Forgotten:
    """Remove a person's email, handle and name from every table; the accounting stays."""
    address = normalise_email(email)
    with write_transaction(session):
        creator = session.exec(select(Creator).where(Creator.email == address)
                               .with_for_update()).first()
        if creator is None:
            raise NotFound(f"nobody with the address {address} is known")
        creator_id = creator.id
        placeholder = forgotten_address(creator_id)
        session.execute(sa.update(Creator).where(Creator.id == creator_id).values(
            email=placeholder, handle="forgotten", name=None,
            # Every sign-in link of theirs is dead, and says it was used.
            login_nonce=Creator.login_nonce + 1, login_used_nonce=Creator.login_nonce,
            session_version=Creator.session_version + 1))  # and every session of theirs
        # Mails still owed can no longer reach them: failed, with the reason visible.
        mails_failed = session.execute(
            sa.update(OutboundEmail)
            .where(OutboundEmail.creator_id == creator_id,
                   OutboundEmail.status.in_([MailStatus.queued, MailStatus.sending]))
            .values(status=MailStatus.failed, last_error=MailProblem.recipient_forgotten,
                    next_attempt_at=None)).rowcount
        session.execute(sa.update(OutboundEmail).where(OutboundEmail.creator_id == creator_id)
                        .values(to_email=placeholder))
        audit.record(session, audit.event(actor=actor, action=FORGOTTEN, object_type="creator",
                                          object_id=creator_id,
                                          detail={"mails_failed": mails_failed}))
    log_event("creator.forgotten", creator_id=creator_id, mails_failed=mails_failed)
    return Forgotten(creator_id, mails_failed)
