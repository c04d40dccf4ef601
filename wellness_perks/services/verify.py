"""``verify``: check the invariants I1-I5 of a program against the database.

I1 a code is assigned to at most one claim, ever, and only an allocated claim holds one;
I2 allocations never exceed the quota, global or per country, and the counters (allocations,
   global and per country, codes in stock, per program and per batch, and the claims rolled
   up per hour) match the rows they count;
I3 at most one claim per creator per program;
I4 every accepted claim ends allocated, waitlisted or refused (with a reason); none stays
   pending longer than ``grace``;
I5 every allocated claim's current code has a redemption mail (not cancelled) that is sent, or
   failed with its error visible; none is overdue, none in a state the outbox does not know;
   each mail of a claim names the claim's program.

``owed_work`` lists, apart from the invariants, what the program still owes: its failed code
mails (``resend-failed`` sends them again), its mails overdue and its claims pending for longer
than ``HEALTH_GRACE_SECONDS``. Owed work breaks no invariant until it outlasts the invariants'
own grace periods, so it never changes ``verify``'s verdict by itself: an operator sees it early.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session

from ..models import (
    Claim,
    ClaimHour,
    ClaimState,
    Code,
    CodeAssignment,
    CodeBatch,
    CodeStatus,
    CountryQuota,
    MailKind,
    MailProblem,
    MailStatus,
    OutboundEmail,
    Program,
)


@dataclass(frozen=True)
class Violation:
    invariant: str
    message: str
    claim_id: int | None = None
    code_id: int | None = None
    creator_id: int | None = None

    def __str__(self) -> str:
        refs = " ".join(f"{k}={v}" for k, v in (("claim", self.claim_id), ("code", self.code_id),
                                                ("creator", self.creator_id)) if v is not None)
        return f"{self.invariant}: {self.message}" + (f" ({refs})" if refs else "")

    def as_dict(self) -> dict:
        return {"invariant": self.invariant, "message": self.message, "claim_id": self.claim_id,
                "code_id": self.code_id, "creator_id": self.creator_id}


KNOWN_MAIL_STATES = frozenset(MailStatus)


def verify_program(session: Session, *, program_id: int, now: datetime | None = None,
                   pending_grace: timedelta = timedelta(minutes=5),
                   mail_grace: timedelta = timedelta(minutes=30)) -> list[Violation]:
    now = now or datetime.now(UTC)
    session.commit()  # a fresh view
    out: list[Violation] = []
    program = session.get(Program, program_id, populate_existing=True)
    q = session.execute

    # I1 -----------------------------------------------------------------------------------
    for code_id, n in q(sa.select(Claim.code_id, sa.func.count()).where(
            Claim.program_id == program_id, Claim.code_id.is_not(None))
            .group_by(Claim.code_id).having(sa.func.count() > 1)):
        out.append(Violation("I1", f"code held by {n} claims", code_id=code_id))
    for code_id, n in q(sa.select(CodeAssignment.code_id, sa.func.count()).where(
            CodeAssignment.program_id == program_id)
            .group_by(CodeAssignment.code_id).having(sa.func.count() > 1)):
        out.append(Violation("I1", f"code assigned {n} times", code_id=code_id))
    for claim_id, code_id, creator_id, state, status, holder in q(
            sa.select(Claim.id, Claim.code_id, Claim.creator_id, Claim.state, Code.status,
                      CodeAssignment.claim_id)
            .join(Code, Code.id == Claim.code_id)
            .outerjoin(CodeAssignment, CodeAssignment.code_id == Claim.code_id)
            .where(Claim.program_id == program_id)):
        if state != ClaimState.allocated:
            out.append(Violation("I1", f"{state} claim holds a code", claim_id, code_id,
                                 creator_id))
        if status != CodeStatus.assigned:
            out.append(Violation("I1", f"claim holds a code whose status is {status}",
                                 claim_id, code_id, creator_id))
        if holder != claim_id:
            out.append(Violation("I1", "claim holds a code whose assignment names another claim",
                                 claim_id, code_id, creator_id))
    for (code_id,) in q(sa.select(Code.id).join(CodeAssignment, CodeAssignment.code_id == Code.id)
                        .where(Code.program_id == program_id,
                               Code.status == CodeStatus.available)):
        out.append(Violation("I1", "a code given out once is back in stock", code_id=code_id))
    for (code_id,) in q(sa.select(Code.id).outerjoin(Claim, Claim.code_id == Code.id)
                        .where(Code.program_id == program_id, Code.status == CodeStatus.assigned,
                               Claim.id.is_(None))):
        out.append(Violation("I1", "code marked assigned but no claim holds it", code_id=code_id))

    # I2 -----------------------------------------------------------------------------------
    allocated = q(sa.select(sa.func.count()).select_from(Claim).where(
        Claim.program_id == program_id, Claim.state == ClaimState.allocated)).scalar_one()
    if allocated > program.quota:
        out.append(Violation("I2", f"{allocated} allocated, quota {program.quota}"))
    if allocated != program.allocated_count:
        out.append(Violation("I2", f"{allocated} allocated, counter says "
                                   f"{program.allocated_count}"))
    in_stock = q(sa.select(sa.func.count()).select_from(Code).where(
        Code.program_id == program_id, Code.status == CodeStatus.available)).scalar_one()
    if in_stock != program.in_stock_count:
        out.append(Violation("I2", f"{in_stock} codes in stock, counter says "
                                   f"{program.in_stock_count}"))
    for batch_id, counter, counted in q(
            sa.select(CodeBatch.id, CodeBatch.in_stock_count,
                      sa.select(sa.func.count()).select_from(Code)
                      .where(Code.batch_id == CodeBatch.id,
                             Code.status == CodeStatus.available)
                      .correlate(CodeBatch).scalar_subquery())
            .where(CodeBatch.program_id == program_id).order_by(CodeBatch.id)):
        if counted != counter:
            out.append(Violation("I2", f"batch #{batch_id}: {counted} codes in stock, "
                                       f"counter says {counter}"))
    for hour, rolled in q(sa.select(ClaimHour.hour, ClaimHour.claims)
                          .where(ClaimHour.program_id == program_id)
                          .order_by(ClaimHour.hour)):
        counted = q(sa.select(sa.func.count()).select_from(Claim).where(
            Claim.program_id == program_id, Claim.requested_at >= hour,
            Claim.requested_at < hour + timedelta(hours=1))).scalar_one()
        if counted != rolled:
            out.append(Violation("I2", f"{counted} claims in the hour of {hour:%Y-%m-%d %H:00}, "
                                       f"its rollup says {rolled}"))
    for country, quota, counter in q(sa.select(CountryQuota.country, CountryQuota.quota,
                                               CountryQuota.allocated_count)
                                     .where(CountryQuota.program_id == program_id)):
        n = q(sa.select(sa.func.count()).select_from(Claim).where(
            Claim.program_id == program_id, Claim.country == country,
            Claim.state == ClaimState.allocated)).scalar_one()
        if n > quota:
            out.append(Violation("I2", f"{country}: {n} allocated, country quota {quota}"))
        if n != counter:
            out.append(Violation("I2", f"{country}: {n} allocated, counter says {counter}"))

    # I3 -----------------------------------------------------------------------------------
    for creator_id, n in q(sa.select(Claim.creator_id, sa.func.count())
                           .where(Claim.program_id == program_id)
                           .group_by(Claim.creator_id).having(sa.func.count() > 1)):
        out.append(Violation("I3", f"{n} claims by one creator", creator_id=creator_id))

    # I4 -----------------------------------------------------------------------------------
    for claim_id, creator_id, state, requested_at in q(
            sa.select(Claim.id, Claim.creator_id, Claim.state, Claim.requested_at)
            .where(Claim.program_id == program_id,
                   sa.or_(Claim.state.not_in(["allocated", "waitlisted", "refused"]),
                          sa.and_(Claim.state == "refused", Claim.reason.is_(None)),
                          sa.and_(Claim.state == "allocated", Claim.code_id.is_(None))))):
        if state == ClaimState.pending:
            if requested_at < now - pending_grace:
                out.append(Violation("I4", f"pending since {requested_at:%Y-%m-%d %H:%M:%S}",
                                     claim_id, creator_id=creator_id))
        elif state == ClaimState.refused:
            out.append(Violation("I4", "refused without a reason", claim_id,
                                 creator_id=creator_id))
        elif state == ClaimState.allocated:
            out.append(Violation("I4", "allocated without a code", claim_id,
                                 creator_id=creator_id))
        else:
            out.append(Violation("I4", f"unknown state {state!r}", claim_id,
                                 creator_id=creator_id))

    # I5 -----------------------------------------------------------------------------------
    # A cancelled mail is not one the creator gets: it does not count as the code's mail.
    mails = sa.select(OutboundEmail).where(
        OutboundEmail.claim_id == Claim.id, OutboundEmail.code_id == Claim.code_id,
        OutboundEmail.kind.in_([MailKind.redemption, MailKind.reissue]),
        OutboundEmail.status != MailStatus.cancelled).correlate(Claim)
    for claim_id, code_id, creator_id in q(
            sa.select(Claim.id, Claim.code_id, Claim.creator_id)
            .where(Claim.program_id == program_id, Claim.state == ClaimState.allocated,
                   ~mails.exists())):
        out.append(Violation("I5", "allocated, but no mail for its code", claim_id, code_id,
                             creator_id))
    for mail in session.scalars(
            sa.select(OutboundEmail).join(Claim, Claim.id == OutboundEmail.claim_id)
            .where(Claim.program_id == program_id)):
        refs = {"claim_id": mail.claim_id, "code_id": mail.code_id, "creator_id": mail.creator_id}
        if mail.program_id != program_id:  # the delivery page finds a mail by its own program
            named = "no program" if mail.program_id is None else f"program #{mail.program_id}"
            out.append(Violation("I5", f"mail #{mail.id} names {named}, its claim is of "
                                       f"program #{program_id}", **refs))
        if mail.status == MailStatus.failed and not mail.last_error:
            out.append(Violation("I5", f"mail #{mail.id} failed with no error recorded", **refs))
        elif mail.status == MailStatus.sent and mail.sent_at is None:
            out.append(Violation("I5", f"mail #{mail.id} sent with no time", **refs))
        elif mail.status in (MailStatus.queued, MailStatus.sending):
            due = mail.next_attempt_at or mail.sending_started_at or mail.created_at
            if due < now - mail_grace:
                out.append(Violation("I5", f"mail #{mail.id} {mail.status} and overdue since "
                                           f"{due:%Y-%m-%d %H:%M:%S}", **refs))
        elif mail.status not in KNOWN_MAIL_STATES:
            out.append(Violation("I5", f"mail #{mail.id} has unknown status {mail.status!r}",
                                 **refs))
    session.commit()
    return out


# --------------------------------------------------------------------------- owed work


class OwedKind(enum.StrEnum):
    failed_mails = "failed_mails"
    overdue_mails = "overdue_mails"
    overdue_claims = "overdue_claims"


OWED_IDS_SHOWN = 10


@dataclass(frozen=True)
class Owed:
    """Work of one kind the program owes: how many, since when (the oldest), the first ids."""

    kind: OwedKind
    count: int
    since: datetime
    ids: tuple[int, ...]

    def __str__(self) -> str:
        ids = ", ".join(f"#{i}" for i in self.ids[:OWED_IDS_SHOWN])
        if self.count > OWED_IDS_SHOWN:
            ids += ", ..."
        since = f"{self.since:%Y-%m-%d %H:%M:%S}"
        if self.kind == OwedKind.failed_mails:
            return (f"owed: {self.count} failed code mail(s), owed since {since} (mail {ids}); "
                    "resend-failed sends them again")
        if self.kind == OwedKind.overdue_mails:
            return f"owed: {self.count} mail(s) overdue, due since {since} (mail {ids})"
        return f"owed: {self.count} claim(s) pending past the grace period, since {since} " \
               f"(claim {ids})"

    def as_dict(self) -> dict:
        return {"kind": self.kind.value, "count": self.count, "since": self.since.isoformat(),
                "ids": list(self.ids), "message": str(self)}


def owed_work(session: Session, *, program_id: int, now: datetime | None = None,
              grace: timedelta | None = None) -> list[Owed]:
    """The program's failed code mails, its mails overdue (queued and due, or in a send
    attempt past its lease, for longer than ``grace``) and its claims pending longer than
    ``grace`` (``HEALTH_GRACE_SECONDS`` by default), oldest first within each kind."""
    config = current_app.config
    now = now or datetime.now(UTC)
    grace = grace if grace is not None else timedelta(seconds=config["HEALTH_GRACE_SECONDS"])
    lease = timedelta(seconds=config["MAIL_SENDING_TIMEOUT_SECONDS"])
    cutoff = now - grace
    session.commit()  # a fresh view
    failed: list[tuple[datetime, int]] = []
    overdue: list[tuple[datetime, int]] = []
    for (mail_id, status, created_at, next_attempt_at, sending_started_at, last_error,
         mail_code_id, held_code_id) in session.execute(
            sa.select(OutboundEmail.id, OutboundEmail.status, OutboundEmail.created_at,
                      OutboundEmail.next_attempt_at, OutboundEmail.sending_started_at,
                      OutboundEmail.last_error, OutboundEmail.code_id, Claim.code_id)
            .join(Claim, Claim.id == OutboundEmail.claim_id)
            .where(Claim.program_id == program_id,
                   OutboundEmail.status.in_([MailStatus.failed, MailStatus.queued,
                                             MailStatus.sending]))):
        if status == MailStatus.failed:
            # Owed while it is about the code the claim holds and its creator is still known
            # (what ``resend-failed`` would send again).
            if mail_code_id == held_code_id and last_error != MailProblem.recipient_forgotten:
                failed.append((created_at, mail_id))
        elif status == MailStatus.queued:
            due = next_attempt_at or created_at
            if due < cutoff:
                overdue.append((due, mail_id))
        elif sending_started_at is not None and sending_started_at + lease < cutoff:
            overdue.append((sending_started_at + lease, mail_id))
    claims = [(requested_at, claim_id) for claim_id, requested_at in session.execute(
        sa.select(Claim.id, Claim.requested_at).where(
            Claim.program_id == program_id, Claim.state == ClaimState.pending,
            Claim.requested_at < cutoff))]
    session.commit()
    out = []
    for kind, found in ((OwedKind.failed_mails, failed), (OwedKind.overdue_mails, overdue),
                        (OwedKind.overdue_claims, claims)):
        if found:
            found.sort()
            out.append(Owed(kind, len(found), found[0][0], tuple(i for _at, i in found)))
    return out


def possibly_sent(session: Session, *, program_id: int) -> list[tuple[int, int | None]]:
    """The program's mails (id, claim id) an attempt of which was cut off mid-send (its worker
    died between handing the message to the SMTP server and recording it): the creator may
    hold two copies. Not a violation (every code is still mailed once or more, with one
    Message-ID), but what an operator should see."""
    rows = session.execute(
        sa.select(OutboundEmail.id, OutboundEmail.claim_id)
        .join(Claim, Claim.id == OutboundEmail.claim_id)
        .where(Claim.program_id == program_id, OutboundEmail.possibly_sent_at.is_not(None))
        .order_by(OutboundEmail.id)).all()
    session.commit()
    return [(outbound_id, claim_id) for outbound_id, claim_id in rows]


# --------------------------------------------------------------------------- undelivered mails


class Undelivered(enum.StrEnum):
    """Which of a program's code mails the delivery page lists."""

    failed = "failed"    # refused for good, or out of retries: ``resend-failed`` sends them again
    overdue = "overdue"  # queued and due, or in a send attempt past its lease, beyond the grace


UNDELIVERED_PAGE = 50
_CODE_MAIL_KINDS = (MailKind.redemption.value, MailKind.reissue.value)


@dataclass(frozen=True)
class UndeliveredMail:
    id: int
    claim_id: int
    kind: str
    to_email: str
    status: str
    attempts: int
    last_error: str | None  # as the outbox stored it: a transport's error or a MailProblem
    created_at: datetime
    next_attempt_at: datetime | None
    sending_started_at: datetime | None


@dataclass(frozen=True)
class UndeliveredPage:
    mails: list[UndeliveredMail]
    next_after: int | None  # the keyset of the next page (ids above it), None on the last


def undelivered_statement(*, program_id: int, show: Undelivered, after_id: int, limit: int,
                          cutoff: datetime, lease: timedelta) -> sa.Select:
    """One page of the program's failed or overdue code mails, by id after ``after_id``.

    Each status is read on its own, in id order from ``after_id`` on ix_outbound_undelivered
    (program_id, status, id), and stops at the page: a UNION ALL of one branch per status
    (failed; or queued and sending), each with the page's limit, merged by id. Never a walk of
    the outbox by id (the mails sought are few and the newest, at the walk's far end), nor a
    read and sort of every mail of the status, nor of other programs' backlogs: the keyset is
    the row (status, id), which the primary key cannot serve, so that walk is never planned."""
    mail = OutboundEmail.__table__.c

    def status(value: MailStatus):
        # A literal, not a parameter: the partial index's predicate is proved from it.
        literal = sa.literal_column(f"'{value.value}'")
        return sa.and_(mail.status == literal,
                       sa.tuple_(mail.status, mail.id) > sa.tuple_(literal, after_id))

    if show == Undelivered.failed:
        branches = [status(MailStatus.failed)]
    else:
        branches = [
            sa.and_(status(MailStatus.queued),
                    sa.or_(mail.next_attempt_at < cutoff,
                           sa.and_(mail.next_attempt_at.is_(None), mail.created_at < cutoff))),
            sa.and_(status(MailStatus.sending), mail.sending_started_at < cutoff - lease)]
    pages = [
        sa.select(mail.id, mail.claim_id, mail.kind, mail.to_email, mail.status, mail.attempts,
                  mail.last_error, mail.created_at, mail.next_attempt_at,
                  mail.sending_started_at)
        .where(mail.program_id == program_id, condition, mail.kind.in_(_CODE_MAIL_KINDS))
        .order_by(mail.id).limit(limit + 1)
        for condition in branches]
    if len(pages) == 1:
        return pages[0]
    # Each branch a subquery of its own: SQLite allows no ORDER BY or LIMIT in a UNION's arms.
    merged = sa.union_all(*(sa.select(page.subquery()) for page in pages)).subquery()
    return sa.select(merged).order_by(merged.c.id).limit(limit + 1)


def undelivered_mails(session: Session, *, program_id: int, show: Undelivered,
                      after_id: int = 0, limit: int = UNDELIVERED_PAGE,
                      now: datetime | None = None) -> UndeliveredPage:
    """A page of the program's failed (or overdue, as ``owed_work`` counts them) code mails,
    oldest id first, with their errors and attempts."""
    config = current_app.config
    now = now or datetime.now(UTC)
    statement = undelivered_statement(
        program_id=program_id, show=show, after_id=after_id, limit=limit,
        cutoff=now - timedelta(seconds=config["HEALTH_GRACE_SECONDS"]),
        lease=timedelta(seconds=config["MAIL_SENDING_TIMEOUT_SECONDS"]))
    rows = [UndeliveredMail(**row._mapping) for row in session.execute(statement)]
    session.commit()
    more = len(rows) > limit
    rows = rows[:limit]
    return UndeliveredPage(mails=rows, next_after=rows[-1].id if more else None)
