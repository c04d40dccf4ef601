"""Inviting a program's creators to claim, reminding those who have not, and their opt-out.

An invitation is a mail of the outbox (kind ``invitation``, its reminder ``reminder``): it is
sent, paced by MAIL_RATE_LIMIT, retried and swept like every other mail, and carries a sign-in
link made as a sign-in mail's is (``mail.render``) and a one-click opt-out link
(``tokens.mint_opt_out_token``; RFC 8058 headers too).

Whom: a creator on the program's list who has not claimed in it (any claim), and has not been
forgotten. Each is invited once: the row of their invitation (``Invitation``, one per program
and creator in the database) is written in the transaction that owes its mail, a chunk of
``CHUNK`` at a time under the program's lock, so a run stopped half way (its worker killed)
and started again invites only those not invited yet. A reminder goes, once (the row's one
reminder slot), to those invited at least INVITE_REMINDER_DAYS days before who have still not
claimed nor opted out. A mail owed to someone who claims or opts out before it goes out is
cancelled, not sent (``mail.queue``). Opting out stops the program's invitation mails only:
they may still sign in and claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadData
from sqlmodel import Session

from .. import dispatch
from ..db import write_transaction
from ..logs import log_event
from ..models import (
    Claim,
    Creator,
    Eligibility,
    Invitation,
    MailKind,
    MailStatus,
    OutboundEmail,
    Program,
    WindowState,
)
from . import audit, tokens
from .emails import mask_email
from .errors import Conflict, DomainError, InvalidInput, NotFound
from .mail import owe, owed
from .privacy import FORGOTTEN_DOMAIN
from .programs import lock_program

KINDS = (MailKind.invitation, MailKind.reminder)
# Invitations owed per transaction: the program's lock is held for one chunk at a time, so
# claims and allocation go on between chunks, and a stopped run loses at most one chunk's work.
CHUNK = 500  # pragma: no mutate (a bound on one transaction's work)

REQUESTED = "program.invitations_requested"
QUEUED = {MailKind.invitation: "program.invitations_queued",
          MailKind.reminder: "program.reminders_queued"}
OPTED_OUT = "creator.opted_out"


class InvitationsClosed(Conflict):
    """The program's claim window has closed: nobody is invited to claim any more."""

    code = "invitations_window_closed"


class InvitationsUnavailable(DomainError):
    """The send could not be handed to the workers (the broker is down): ask again."""

    status_code = 503
    code = "invitations_unavailable"


class OptOutLinkInvalid(DomainError):
    """An opt-out link that is not one of ours (damaged, forged, or naming no invitation)."""

    status_code = 400
    code = "opt_out_link_invalid"


@dataclass
class SendOutcome:
    kind: str
    mail_ids: list[int] = field(default_factory=list)  # the mails this run owed, in order

    @property
    def queued(self) -> int:
        return len(self.mail_ids)


def _kind(kind: str | MailKind) -> MailKind:
    if kind not in {k.value for k in KINDS}:
        raise InvalidInput(f"kind must be one of {', '.join(k.value for k in KINDS)}",
                           field="kind", code="invitation_kind_unknown")
    return MailKind(kind)


def reminder_days(after_days: int | None = None) -> int:
    days = current_app.config["INVITE_REMINDER_DAYS"] if after_days is None else after_days
    if type(days) is not int or days < 0:
        raise InvalidInput("the reminder's days must be a whole number, 0 or more",
                           field="after_days", code="reminder_days_invalid")
    return days


# --------------------------------------------------------------------------- who


def _claimed(program_id: int):
    return (sa.select(Claim.id).where(Claim.program_id == program_id,
                                      Claim.creator_id == Creator.id)
            .correlate(Creator).exists())


def _not_forgotten():
    return ~Creator.email.endswith(f"@{FORGOTTEN_DOMAIN}")


def uninvited(program_id: int) -> sa.Select:
    """The creators an invitation run of the program would invite, in id order."""
    invited = (sa.select(Invitation.id).where(Invitation.program_id == program_id,
                                              Invitation.creator_id == Creator.id)
               .correlate(Creator).exists())
    return (sa.select(Creator.id.label("creator_id"), Creator.email, Creator.locale)
            .join(Eligibility, sa.and_(Eligibility.creator_id == Creator.id,
                                       Eligibility.program_id == program_id))
            .where(~invited, ~_claimed(program_id), _not_forgotten())
            .order_by(Creator.id))


def reminders_due(program_id: int, invited_before: datetime) -> sa.Select:
    """The invitations a reminder run would remind, in id order: invited at or before
    ``invited_before``, not reminded, not opted out, not claimed, still on the list."""
    on_list = (sa.select(Eligibility.id).where(Eligibility.program_id == program_id,
                                               Eligibility.creator_id == Creator.id)
               .correlate(Creator).exists())
    return (sa.select(Invitation.id.label("invitation_id"), Creator.id.label("creator_id"),
                      Creator.email,
                      Creator.locale)
            .join(Creator, Creator.id == Invitation.creator_id)
            .where(Invitation.program_id == program_id, Invitation.reminded_at.is_(None),
                   Invitation.opted_out_at.is_(None), Invitation.invited_at <= invited_before,
                   ~_claimed(program_id), on_list, _not_forgotten())
            .order_by(Invitation.id))


# --------------------------------------------------------------------------- sending


def _still_inviting(program: Program, now: datetime) -> None:
    if program.window_state(now) == WindowState.closed:
        raise InvitationsClosed(f"the claim window of {program.name} has closed: nobody is "
                                "invited any more", name=program.name)


_REMIND = (sa.update(Invitation.__table__)
           .where(Invitation.__table__.c.id == sa.bindparam("b_id"),
                  Invitation.__table__.c.reminded_at.is_(None))
           .values(reminded_at=sa.bindparam("b_at"), reminder_mail_id=sa.bindparam("b_mail")))


def _owe_chunk(session: Session, *, program_id: int, kind: MailKind, actor: str,
               now: datetime, invited_before: datetime | None, chunk: int) -> list[int]:
    """One transaction: the next ``chunk`` creators of the run, their mails and their rows
    (``Invitation`` for an invitation, its reminder slot for a reminder) written together."""
    with write_transaction(session):
        # One run of a program at a time; the unique constraint and the reminder's
        # ``reminded_at IS NULL`` hold the rule even without it.
        program = lock_program(session, program_id)
        _still_inviting(program, now)
        statement = (uninvited(program_id) if kind == MailKind.invitation
                     else reminders_due(program_id, invited_before))
        rows = session.execute(statement.limit(chunk)).all()
        if not rows:
            return []
        connection = session.connection()
        mail_ids = owe(connection, [
            owed(kind=kind, to_email=row.email, creator_id=row.creator_id, locale=row.locale,
                 now=now, program_id=program_id) for row in rows])
        if kind == MailKind.invitation:
            connection.execute(sa.insert(Invitation.__table__), [
                {"program_id": program_id, "creator_id": row.creator_id, "invited_at": now,
                 "invitation_mail_id": mail_id} for row, mail_id in zip(rows, mail_ids,
                                                                         strict=True)])
        else:
            connection.execute(_REMIND, [{"b_id": row.invitation_id, "b_at": now,
                                          "b_mail": mail_id}
                                         for row, mail_id in zip(rows, mail_ids, strict=True)])
        audit.record(session, audit.event(
            actor=actor, action=QUEUED[kind], object_type="program", object_id=program_id,
            program_id=program_id, at=now, detail={"count": len(mail_ids)}))
    log_event(QUEUED[kind], program_id=program_id, count=len(mail_ids))  # pragma: no mutate
    dispatch.send_emails(mail_ids)
    return mail_ids


def send(session: Session, *, program_id: int, kind: str | MailKind, actor: str,
         after_days: int | None = None, now: datetime | None = None,
         chunk: int = CHUNK) -> SendOutcome:
    """Invite (``kind`` invitation) or remind (``reminder``) everyone of the program not yet
    invited or reminded, ``chunk`` a transaction, each chunk's mails handed to the mail
    workers after its commit. Started again after a stop, it goes on where it stopped.
    Reminders go to those invited ``after_days`` (INVITE_REMINDER_DAYS) days ago or more.
    InvitationsClosed once the program's window has closed."""
    kind = _kind(kind)
    now = now or datetime.now(UTC)
    invited_before = None
    if kind == MailKind.reminder:
        invited_before = now - timedelta(days=reminder_days(after_days))
    outcome = SendOutcome(kind.value)
    while True:
        owed_now = _owe_chunk(session, program_id=program_id, kind=kind, actor=actor, now=now,
                              invited_before=invited_before, chunk=chunk)
        outcome.mail_ids += owed_now
        if len(owed_now) < chunk:
            return outcome


def send_invitations(session: Session, **kwargs) -> SendOutcome:
    return send(session, kind=MailKind.invitation, **kwargs)


def send_reminders(session: Session, **kwargs) -> SendOutcome:
    return send(session, kind=MailKind.reminder, **kwargs)


def request_send(session: Session, *, program_id: int, kind: str, actor: str) -> None:
    """A manager's request (the console's buttons): recorded, then run by a worker
    (``send``), which the console's page shows the progress of. InvitationsClosed once the
    window has closed; InvitationsUnavailable when the broker could not take it."""
    kind = _kind(kind)
    now = datetime.now(UTC)
    with write_transaction(session):
        program = session.get(Program, program_id, populate_existing=True)
        if program is None:
            raise NotFound(f"no program with id {program_id}")
        _still_inviting(program, now)
        audit.record(session, audit.event(
            actor=actor, action=REQUESTED, object_type="program", object_id=program_id,
            program_id=program_id, at=now, detail={"kind": kind.value}))
    if not dispatch.send_invitations(program_id, kind.value, actor):
        raise InvitationsUnavailable("the send could not be queued; try again")


# --------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class InvitationCounts:
    """A program's invitations as the console shows them."""

    eligible: int       # on the list
    claimed: int        # creators with a claim in the program (any state)
    invited: int
    reminded: int
    opted_out: int
    waiting: int        # whom an invitation run would invite now
    reminders_due: int  # whom a reminder run would remind now
    reminder_days: int
    # Per kind, the mails by status: queued (with those sending), sent, failed, cancelled.
    mails: dict[str, dict[str, int]]

    @property
    def sending(self) -> bool:
        """Mails of a run are still going out."""
        return any(by_status["queued"] for by_status in self.mails.values())


def mails_by_status(program_id: int) -> sa.Select:
    """(kind, status, count) of the program's invitation and reminder mails: a range of
    ``ix_outbound_program_kind_status``, which holds those mails only."""
    return (sa.select(OutboundEmail.kind, OutboundEmail.status, sa.func.count())
            .where(OutboundEmail.program_id == program_id,
                   OutboundEmail.kind.in_([k.value for k in KINDS]))
            .group_by(OutboundEmail.kind, OutboundEmail.status))


def counts(session: Session, *, program_id: int, now: datetime | None = None,
           after_days: int | None = None) -> InvitationCounts:
    now = now or datetime.now(UTC)
    days = reminder_days(after_days)
    q = session.execute

    def number(statement) -> int:
        return q(sa.select(sa.func.count()).select_from(statement.subquery())).scalar_one()

    invitations = sa.select(Invitation.id).where(Invitation.program_id == program_id)
    found_mails = {(kind, status): n for kind, status, n in q(mails_by_status(program_id))}
    mails = {}
    for kind in KINDS:
        by_status = {status: n for (k, status), n in found_mails.items() if k == kind.value}
        mails[kind.value] = {
            "queued": by_status.get(MailStatus.queued.value, 0)
            + by_status.get(MailStatus.sending.value, 0),
            **{status.value: by_status.get(status.value, 0)
               for status in (MailStatus.sent, MailStatus.failed, MailStatus.cancelled)}}
    found = InvitationCounts(
        eligible=number(sa.select(Eligibility.id).where(Eligibility.program_id == program_id)),
        claimed=number(sa.select(Claim.id).where(Claim.program_id == program_id)),
        invited=number(invitations),
        reminded=number(invitations.where(Invitation.reminded_at.is_not(None))),
        opted_out=number(invitations.where(Invitation.opted_out_at.is_not(None))),
        waiting=number(uninvited(program_id)),
        reminders_due=number(reminders_due(program_id, now - timedelta(days=days))),
        reminder_days=days, mails=mails)
    session.rollback()  # a read: nothing held
    return found


# --------------------------------------------------------------------------- opting out


@dataclass(frozen=True)
class OptOutLink:
    """What the page an opt-out link opens may show."""

    program_name: str
    masked_email: str
    opted_out: bool  # already opted out


def _invitation_of(session: Session, token: str):
    try:
        creator_id, program_id = tokens.parse_opt_out_token(token)
    except BadData as exc:
        raise OptOutLinkInvalid() from exc
    row = session.execute(
        sa.select(Invitation.id, Invitation.opted_out_at, Invitation.program_id,
                  Invitation.creator_id, Creator.email, Program.name)
        .join(Creator, Creator.id == Invitation.creator_id)
        .join(Program, Program.id == Invitation.program_id)
        .where(Invitation.program_id == program_id, Invitation.creator_id == creator_id)
    ).first()
    if row is None:  # signed by us, yet naming no invitation: never one we sent
        raise OptOutLinkInvalid()
    return row


def inspect_opt_out(session: Session, *, token: str) -> OptOutLink:
    """Whose opt-out a link is, and of which program; opening it changes nothing."""
    row = _invitation_of(session, token)
    session.rollback()
    return OptOutLink(row.name, mask_email(row.email), row.opted_out_at is not None)


def opt_out(session: Session, *, token: str, now: datetime | None = None) -> OptOutLink:
    """Opt the link's creator out of the program's invitation mails (once: opting out again
    changes nothing). OptOutLinkInvalid for a link that is not ours."""
    now = now or datetime.now(UTC)
    with write_transaction(session):
        row = _invitation_of(session, token)
        changed = session.execute(
            sa.update(Invitation).where(Invitation.id == row.id,
                                        Invitation.opted_out_at.is_(None))
            .values(opted_out_at=now).execution_options(synchronize_session=False)).rowcount
        if changed:
            audit.record(session, audit.event(
                actor=f"creator:{row.creator_id}", action=OPTED_OUT, object_type="creator",
                object_id=row.creator_id, program_id=row.program_id, at=now))
    if changed:
        log_event(OPTED_OUT, creator_id=row.creator_id, program_id=row.program_id)
    return OptOutLink(row.name, mask_email(row.email), True)
