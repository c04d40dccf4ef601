"""The outbox: every mail we owe is a row, and each is sent once.

A mail's row (``OutboundEmail``) is written by ``owe`` in the same transaction as the thing it
tells about. Sending takes rows with a conditional UPDATE (``queued -> sending``), so two
workers never both send one; a batch is taken by one UPDATE, what its messages say is loaded by
one query and rendered (``render``), and the transport delivers them (``transport``) while this
module keeps the books: which messages are still the batch's to send, and what became of each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session

from ... import dispatch
from ...db import (
    connection_lost,
    found_by_key,
    is_postgresql,
    planned_each_execution,
    write_transaction,
)
from ...logs import log_event
from ...models import (
    DEFAULT_LOCALE,
    AuditEvent,
    Claim,
    ClaimState,
    Code,
    CodeBatch,
    CodeStatus,
    Creator,
    Eligibility,
    Invitation,
    MailKind,
    MailProblem,
    MailStatus,
    OutboundEmail,
    Program,
)
from .. import audit
from ..emails import normalise_email
from ..errors import Conflict, NoCodeHeld, ResendTooSoon
from . import transport
from .mime import HeaderInjection
from .render import INVITATION_KINDS, render
from .transport import Outgoing, PermanentMailError

MAX_ERROR_LENGTH = 1000


class MailRetryLater(Exception):
    """The attempt failed for a reason that may pass; try again after ``countdown`` seconds."""

    def __init__(self, countdown: int) -> None:
        super().__init__(f"retry in {countdown}s")
        self.countdown = countdown


@dataclass
class BatchOutcome:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    retry: dict[int, int] = field(default_factory=dict)  # outbound id -> seconds until retry
    not_taken: list[int] = field(default_factory=list)   # not queued: sent, or held elsewhere

    def counts(self) -> dict[str, int]:
        return {"sent": len(self.sent), "retry": len(self.retry), "failed": len(self.failed),
                "cancelled": len(self.cancelled)}


# --------------------------------------------------------------------------- owing


def owed(*, kind: MailKind, to_email: str, creator_id: int, now: datetime,
         claim_id: int | None = None, code_id: int | None = None,
         locale: str = DEFAULT_LOCALE, program_id: int | None = None) -> dict:
    """The row of a mail we now owe, for ``owe`` (``program_id``: the program an invitation
    or a reminder invites to, or a code mail's claim's)."""
    return {"kind": kind.value, "to_email": to_email, "creator_id": creator_id,
            "claim_id": claim_id, "code_id": code_id, "locale": locale,
            "program_id": program_id,
            "status": MailStatus.queued.value, "attempts": 0, "created_at": now}


def owe(connection: sa.Connection, mails: list[dict]) -> list[int]:
    """Write these owed mails (rows from ``owed``) in the connection's transaction; their ids,
    in the same order. The caller hands them to ``dispatch`` after its commit."""
    return list(connection.execute(_INSERT, mails).scalars())


# --------------------------------------------------------------------------- sending


def send(session: Session, *, outbound_id: int) -> str:
    """Make one attempt at one owed mail. Returns its status afterwards.

    Raises MailRetryLater when the attempt failed and another is due later.
    """
    outcome = send_batch(session, outbound_ids=[outbound_id])
    if outbound_id in outcome.retry:
        raise MailRetryLater(outcome.retry[outbound_id])
    status = session.execute(sa.select(OutboundEmail.status)
                             .where(OutboundEmail.id == outbound_id)).scalar_one_or_none()
    session.commit()
    if status is None:
        log_event("mail.unknown", logging.WARNING, outbound_id=outbound_id)  # pragma: no mutate
        return "unknown"
    return status


def send_batch(session: Session, *, outbound_ids: list[int]) -> BatchOutcome:
    """One attempt at each of these mails that is queued; the rest are left alone."""
    outcome = BatchOutcome()
    session.commit()
    with planned_each_execution(session):
        taken = dict(session.connection().execute(
            _TAKE, {"b_ids": list(outbound_ids), "b_now": datetime.now(UTC)}).all())
    session.commit()
    outcome.not_taken = [i for i in outbound_ids if i not in taken]
    if not taken:
        return outcome

    with _Lease(session.get_bind(), taken) as lease:
        with planned_each_execution(session):
            outgoing = _prepare(session, sorted(taken), outcome)
        session.commit()
        for outbound_id in outcome.failed + list(outcome.retry) + outcome.cancelled:
            lease.release(outbound_id)
        if not outgoing:
            return outcome
        with _bookkeeping(session) as book:
            transport.deliver_all(outgoing, _Ledger(book, lease, outgoing, outcome,
                                                    postgresql=is_postgresql(session)))
    return outcome


Book = Callable[[sa.Executable, dict], set[int]]


class _Lease:
    """A batch's lease on its messages, kept alive while its worker lives.

    Taking the batch stamped each message with the lease (``sending_started_at``); the sweeper
    takes back a message whose lease is MAIL_SENDING_TIMEOUT_SECONDS old. A thread of the
    batch's own renews the lease of every message the batch still holds, every third of that,
    on a connection of its own: however long one message takes (a slow or hanging server), a
    live batch keeps its lease, and one whose worker died loses it within the timeout, so the
    rest of its messages go out without waiting for anything else. A message a renewal finds
    no longer ours (the sweeper took it back: our connection to the database was away too
    long) is dropped from the batch, never sent by it. The renewal stamps one time on all the
    batch holds: the messages of one batch share their lease, which is how the sweeper tells
    the one message that may have been in flight (see ``sweeper``).
    """

    def __init__(self, engine: sa.Engine, held: dict[int, int]) -> None:
        self.engine = engine
        self.held = dict(held)  # outbound id -> attempts: the lease is this attempt's
        self.every = max(current_app.config["MAIL_SENDING_TIMEOUT_SECONDS"] / 3, 0.01)
        self.retry_every = self.every / 10
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._renew_until_stopped, daemon=True,
                                       name="mail-lease")

    def __enter__(self) -> _Lease:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)

    def holds(self, outbound_id: int) -> bool:
        with self.lock:
            return outbound_id in self.held

    def release(self, outbound_id: int) -> None:
        with self.lock:
            self.held.pop(outbound_id, None)

    def _renew_until_stopped(self) -> None:
        wait = self.every
        while not self.stopped.wait(wait):
            wait = self.every
            with self.lock:
                held = list(self.held.items())
            if not held:
                continue
            try:
                with self.engine.begin() as connection:
                    renewed = set(connection.execute(_RENEW_LEASES, {
                        "b_held": held, "b_now": datetime.now(UTC)}).scalars())
            except Exception as exc:  # noqa: BLE001 - the database is away: try again soon
                # A renewal that failed is tried again within a tenth of a beat, on a new
                # connection (the failed one is discarded), not a whole beat later: two
                # failed beats in a row (the database cut twice) would leave the lease
                # two thirds old, and the sweeper would take back messages still being sent.
                log_event("mail.lease_not_renewed", logging.WARNING, messages=len(held),
                          error=type(exc).__name__)
                wait = self.retry_every
                continue
            with self.lock:
                for outbound_id, _attempts in held:
                    if outbound_id not in renewed:
                        self.held.pop(outbound_id, None)


class _Ledger:
    """The books of one batch while it is delivered: which messages are still ours to send,
    and what became of each.

    Right before each message goes, it is checked to be still ours (the lease holds it, and
    its row says so): one the sweeper took back (another worker may hold it now) is skipped,
    never sent twice. Each message is recorded the moment the server has taken or refused it,
    and the batch goes on only once it is: if the database is away then, the outcome is kept
    here and the record tried again (``_bookkeeping``), so a message the server took is never
    sent again because the database blinked. A worker killed mid-batch leaves at most the one
    message in flight without an outcome. On PostgreSQL the statement that records a message
    sent also reads whether the next one is still ours: one bookkeeping statement, one row
    written, per message on a healthy server.
    """

    def __init__(self, book: Book, lease: _Lease, outgoing: list[Outgoing],
                 outcome: BatchOutcome, *, postgresql: bool) -> None:
        self.book = book
        self.lease = lease
        self.outcome = outcome
        self.following = {a.outbound_id: b for a, b in zip(outgoing, outgoing[1:], strict=False)}
        self.checked_ahead: dict[int, bool] = {}  # next message: still ours, as last read
        # SQLite has no UPDATE in a WITH: there, recording and checking are two statements.
        self.record_sent_and_check = _MARK_SENT_AND_CHECK_NEXT if postgresql else None

    def still_ours(self, item: Outgoing) -> bool:
        if not self.lease.holds(item.outbound_id):
            return False
        if item.outbound_id in self.checked_ahead:
            return self.checked_ahead.pop(item.outbound_id)
        return self._check(item)

    def record(self, item: Outgoing, error: Exception | None) -> None:
        if error is not None:
            _record_failure(self.book, item, error, self.outcome)
            self.lease.release(item.outbound_id)
            return
        upcoming = self.following.get(item.outbound_id)
        params = {"b_id": item.outbound_id, "b_now": datetime.now(UTC),
                  "b_message_id": item.message_id,
                  "b_next": upcoming.outbound_id if upcoming else None,
                  "b_next_attempts": upcoming.attempts if upcoming else None}
        if upcoming is not None and self.record_sent_and_check is not None:
            self.checked_ahead[upcoming.outbound_id] = bool(
                self.book(self.record_sent_and_check, params))
        else:
            self.book(_MARK_SENT, params)
            if upcoming is not None:
                self.checked_ahead[upcoming.outbound_id] = self._check(upcoming)
        self.lease.release(item.outbound_id)
        self.outcome.sent.append(item.outbound_id)
        # pragma: no mutate start (the log line only)
        log_event("mail.sent", outbound_id=item.outbound_id, kind=item.kind,
                  claim_id=item.claim_id, attempts=item.attempts)
        # pragma: no mutate end

    def _check(self, item: Outgoing) -> bool:
        return bool(self.book(_STILL_OURS, {"b_next": item.outbound_id,
                                             "b_next_attempts": item.attempts}))


_outbound = OutboundEmail.__table__.c
_INSERT = sa.insert(OutboundEmail.__table__).returning(_outbound.id, sort_by_parameter_order=True)
_TAKE = (
    sa.update(OutboundEmail.__table__)
    .where(_outbound.id.in_(sa.bindparam("b_ids", expanding=True)),
           found_by_key(_outbound.status == MailStatus.queued.value))
    .values(status=MailStatus.sending.value, attempts=_outbound.attempts + 1,
            sending_started_at=sa.bindparam("b_now"))
    .returning(_outbound.id, _outbound.attempts)
)
_RENEW_LEASES = (
    sa.update(OutboundEmail.__table__)
    .where(sa.tuple_(_outbound.id, _outbound.attempts).in_(
               sa.bindparam("b_held", expanding=True)),
           found_by_key(_outbound.status == MailStatus.sending.value))
    .values(sending_started_at=sa.bindparam("b_now"))
    .returning(_outbound.id)
)
# The server took the message: that is recorded whatever the row says meanwhile (the sweeper
# may have taken it back while the database was away from us), so that no one sends it again.
_MARK_SENT = (
    sa.update(OutboundEmail.__table__)
    .where(_outbound.id == sa.bindparam("b_id"),
           found_by_key(_outbound.status != MailStatus.sent.value))
    .values(status=MailStatus.sent.value, sent_at=sa.bindparam("b_now"),
            message_id=sa.bindparam("b_message_id"), last_error=None, next_attempt_at=None)
    .returning(_outbound.id)
)
_STILL_OURS = (
    sa.select(_outbound.id)
    .where(_outbound.id == sa.bindparam("b_next"),
           found_by_key(_outbound.status == MailStatus.sending.value),
           _outbound.attempts == sa.bindparam("b_next_attempts"))
)
# PostgreSQL: one statement records a message sent and reads whether the next is still ours.
_MARK_SENT_AND_CHECK_NEXT = _STILL_OURS.add_cte(_MARK_SENT.cte("recorded"))
_RECORD_FAILURE = (
    sa.update(OutboundEmail.__table__)
    .where(_outbound.id == sa.bindparam("b_id"),
           found_by_key(_outbound.status == MailStatus.sending.value))
    .values(status=sa.bindparam("b_status"), next_attempt_at=sa.bindparam("b_next_attempt_at"),
            last_error=sa.bindparam("b_error"))
    .returning(_outbound.id)
)


@contextmanager
def _bookkeeping(session: Session) -> Iterator[Book]:
    """A function that runs one prepared statement of the per-message bookkeeping, committed on
    its own, and returns the ids of the rows it changed.

    On PostgreSQL it runs on a connection of its own in autocommit mode with
    ``synchronous_commit`` off: one round trip a statement, and no wait for the disk flush. That
    is durable against a worker dying (the risk here); a database crash could at worst cause a
    resend. Each statement stands alone (a message's record, or whether the next is still ours)
    and may run twice, so when the connection is lost under one, it is run again on a new
    connection, with backoff, for up to MAIL_RECORD_RETRY_SECONDS: the outcome of a message
    the server answered is kept until the database has it.
    """
    if not is_postgresql(session):
        def book_in_session(statement: sa.Executable, params: dict) -> set[int]:
            ids = _in_session(session)(statement, params)
            session.commit()
            return ids
        yield book_in_session
        return
    engine = session.get_bind()
    patience = current_app.config["MAIL_RECORD_RETRY_SECONDS"]
    held: list[sa.Connection] = []

    def connection() -> sa.Connection:
        if not held:
            fresh = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            held.append(fresh)
            fresh.exec_driver_sql("SET synchronous_commit TO OFF")
        return held[0]

    def drop_connection() -> None:
        if held:
            with suppress(Exception):
                held.pop().close()

    def book(statement: sa.Executable, params: dict) -> set[int]:
        give_up_at, wait = None, 0.1
        while True:
            try:
                return set(connection().execute(statement, params).scalars())
            except sa.exc.DBAPIError as exc:
                if not connection_lost(exc):
                    raise
                drop_connection()
                now = time.monotonic()
                give_up_at = give_up_at or now + patience
                if now >= give_up_at:
                    raise
                log_event("mail.bookkeeping_retry", logging.WARNING,
                          error=type(exc.orig).__name__, retry_in=wait)
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    try:
        yield book
    finally:
        if held and not held[0].invalidated:
            with suppress(Exception):
                held[0].exec_driver_sql("RESET synchronous_commit")
        drop_connection()


def _in_session(session: Session) -> Book:
    """A Book that runs in the session's transaction, leaving the commit to the caller."""
    return lambda statement, params: set(session.connection().execute(statement, params).scalars())


def _record_failure(book: Book, item: Outgoing, exc: Exception, outcome: BatchOutcome) -> None:
    error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
    countdown = None  # pragma: no mutate (read by the log line only)
    if isinstance(exc, PermanentMailError) or item.attempts >= gives_up_after():
        status, next_attempt_at = MailStatus.failed, None
        outcome.failed.append(item.outbound_id)
    else:
        countdown = retry_delay(item.attempts)
        status = MailStatus.queued
        next_attempt_at = datetime.now(UTC) + timedelta(seconds=countdown)
        outcome.retry[item.outbound_id] = countdown
    book(_RECORD_FAILURE, {"b_id": item.outbound_id, "b_status": status.value,
                           "b_next_attempt_at": next_attempt_at, "b_error": error})
    # pragma: no mutate start (the log line only)
    log_event("mail.failed" if countdown is None else "mail.retry_scheduled", logging.WARNING,
              outbound_id=item.outbound_id, kind=item.kind, claim_id=item.claim_id,
              attempts=item.attempts, error=type(exc).__name__, retry_in=countdown)
    # pragma: no mutate end


def retry_delay(attempts: int) -> int:
    """Exponential backoff after the ``attempts``-th failure: base, 2x base, 4x base, ...,
    each wait at most MAIL_RETRY_MAX_DELAY_SECONDS."""
    config = current_app.config
    base = config["MAIL_RETRY_BASE_SECONDS"]
    return int(min(base * 2 ** max(attempts - 1, 0), config["MAIL_RETRY_MAX_DELAY_SECONDS"]))


def gives_up_after() -> int:
    """The attempt whose failure (short of a permanent refusal) marks a mail failed: the first
    one by which the waits between attempts span MAIL_RETRY_WINDOW_SECONDS. A mail is owed
    through a provider's incident of hours; only a refusal for good, or the window, ends it."""
    window = current_app.config["MAIL_RETRY_WINDOW_SECONDS"]
    attempts, waited = 1, 0
    while waited < window:
        waited += max(retry_delay(attempts), 1)  # a zero base still ends
        attempts += 1
    return attempts


def _prepare(session: Session, outbound_ids: list[int], outcome: BatchOutcome) -> list[Outgoing]:
    """Load what the taken mails say (one query) and render them; mails whose code was voided
    before they went out are cancelled (the reissue mail carries the new code)."""
    rows = session.execute(
        sa.select(OutboundEmail, Creator, Code, CodeBatch, Program)
        .join(Creator, Creator.id == OutboundEmail.creator_id)
        .outerjoin(Code, Code.id == OutboundEmail.code_id)
        .outerjoin(CodeBatch, CodeBatch.id == Code.batch_id)
        .outerjoin(Claim, Claim.id == OutboundEmail.claim_id)
        # A code mail's program is its claim's; an invitation's is on its row.
        .outerjoin(Program, Program.id == sa.func.coalesce(Claim.program_id,
                                                           OutboundEmail.program_id))
        .where(OutboundEmail.id.in_(outbound_ids))
        .order_by(OutboundEmail.id)
    ).all()
    unwanted = _invitations_no_longer_wanted(session, [o for o, *_rest in rows])
    outgoing, cancelled, unwanted_ids = [], [], []
    for outbound, creator, code, batch, program in rows:
        if code is not None and code.status == CodeStatus.void:
            cancelled.append(outbound.id)
            continue
        if outbound.id in unwanted:
            unwanted_ids.append(outbound.id)
            continue
        item = Outgoing(outbound.id, outbound.to_email, outbound.attempts, outbound.kind,
                        outbound.claim_id)
        try:
            item.message_id, item.raw = render(outbound, creator, code, batch, program)
        except HeaderInjection as exc:  # the same message would be refused on every attempt
            _record_failure(_in_session(session), item, PermanentMailError(str(exc)), outcome)
            continue
        except Exception as exc:  # noqa: BLE001 - recorded on the row like a failed send
            _record_failure(_in_session(session), item, exc, outcome)
            continue
        outgoing.append(item)
    for ids, problem in ((cancelled, MailProblem.code_voided),
                         (unwanted_ids, MailProblem.no_longer_wanted)):
        if not ids:
            continue
        session.execute(
            sa.update(OutboundEmail)
            .where(OutboundEmail.id.in_(ids), OutboundEmail.status == MailStatus.sending)
            .values(status=MailStatus.cancelled, last_error=problem)
            .execution_options(synchronize_session=False))
        outcome.cancelled += ids
        for outbound_id in ids:
            log_event("mail.cancelled", outbound_id=outbound_id)  # pragma: no mutate
    return outgoing


def _invitations_no_longer_wanted(session: Session, mails: list) -> set[int]:
    """Of these mails (rows or records with id, kind, program_id and creator_id), the
    invitations and reminders whose creator has claimed in the program, opted out of its
    invitations, or been taken off its list, since the mail was owed: never sent (a run may
    queue thousands, which the rate limit spreads over hours), nor sent again by
    ``resend_failed``."""
    invitations = [m for m in mails if m.kind in INVITATION_KINDS]
    if not invitations:
        return set()
    pairs = {(m.program_id, m.creator_id) for m in invitations}
    programs = {program_id for program_id, _creator in pairs}
    creators = {creator_id for _program, creator_id in pairs}
    claimed = {tuple(row) for row in session.execute(
        sa.select(Claim.program_id, Claim.creator_id)
        .where(Claim.program_id.in_(programs), Claim.creator_id.in_(creators)))}
    opted_out = {tuple(row) for row in session.execute(
        sa.select(Invitation.program_id, Invitation.creator_id)
        .where(Invitation.program_id.in_(programs), Invitation.creator_id.in_(creators),
               Invitation.opted_out_at.is_not(None)))}
    listed = {tuple(row) for row in session.execute(
        sa.select(Eligibility.program_id, Eligibility.creator_id)
        .where(Eligibility.program_id.in_(programs), Eligibility.creator_id.in_(creators)))}
    unwanted = claimed | opted_out
    return {m.id for m in invitations
            if (m.program_id, m.creator_id) in unwanted
            or (m.program_id, m.creator_id) not in listed}


CODE_MAIL_KINDS = (MailKind.redemption.value, MailKind.reissue.value)
RESENT = "mail.resent"


@dataclass
class Resent:
    """What ``resend_failed`` did with a program's failed mails."""

    mail_ids: list[int] = field(default_factory=list)  # queued again (code and invitation mails)
    # Invitations and reminders whose creator has claimed or opted out since: cancelled
    # (``no_longer_wanted``), as they would be at send time, never sent again.
    cancelled: list[int] = field(default_factory=list)


def resend_failed(session: Session, *, program_id: int, actor: str,
                  since: datetime | None = None) -> Resent:
    """Queue again the mails of a program that failed (those created at or after ``since``,
    if given), and hand them to the mail workers: its code mails, and its invitations and
    reminders.

    Only a code mail that still carries its claim's code is sent again: one whose code was
    voided since (its claim has a new code and a mail of its own) stays failed. An invitation
    or a reminder whose creator has claimed in the program or opted out of its invitations
    since is cancelled (``no_longer_wanted``, the rule a send applies), not sent. A mail to a
    creator who asked to be forgotten stays failed (no address is left to send to). Each mail
    sent again starts a new run of attempts, and an audit event says who asked for it.
    """
    from ..privacy import FORGOTTEN_DOMAIN

    now = datetime.now(UTC)
    known = ~OutboundEmail.to_email.endswith(f"@{FORGOTTEN_DOMAIN}")
    created = OutboundEmail.created_at >= since if since is not None else sa.true()
    outcome = Resent()
    with write_transaction(session):
        code_mails = list(session.execute(
            sa.select(OutboundEmail.id).join(Claim, Claim.id == OutboundEmail.claim_id)
            .where(OutboundEmail.status == MailStatus.failed.value,
                   OutboundEmail.kind.in_(CODE_MAIL_KINDS), Claim.program_id == program_id,
                   Claim.code_id == OutboundEmail.code_id, known, created)
            .order_by(OutboundEmail.id).with_for_update(of=OutboundEmail)).scalars())
        invitation_mails = session.execute(
            sa.select(OutboundEmail.id, OutboundEmail.kind, OutboundEmail.program_id,
                      OutboundEmail.creator_id)
            .where(OutboundEmail.status == MailStatus.failed.value,
                   OutboundEmail.kind.in_([kind.value for kind in INVITATION_KINDS]),
                   OutboundEmail.program_id == program_id, known, created)
            .order_by(OutboundEmail.id).with_for_update()).all()
        unwanted = _invitations_no_longer_wanted(session, invitation_mails)
        outcome.cancelled = [m.id for m in invitation_mails if m.id in unwanted]
        outcome.mail_ids = sorted(code_mails + [m.id for m in invitation_mails
                                                if m.id not in unwanted])
        if outcome.cancelled:
            session.execute(
                sa.update(OutboundEmail).where(OutboundEmail.id.in_(outcome.cancelled))
                .values(status=MailStatus.cancelled, last_error=MailProblem.no_longer_wanted)
                .execution_options(synchronize_session=False))
        _queue_again(session, outcome.mail_ids, program_id=program_id, actor=actor, now=now)
    for outbound_id in outcome.cancelled:
        log_event("mail.cancelled", outbound_id=outbound_id)  # pragma: no mutate
    if outcome.mail_ids:
        log_event(RESENT, program_id=program_id,  # pragma: no mutate
                  count=len(outcome.mail_ids))
        dispatch.send_emails(outcome.mail_ids)
    return outcome


def _queue_again(session: Session, ids: list[int], *, program_id: int, actor: str,
                 now: datetime, detail: dict | None = None, new_message: bool = False) -> None:
    """Queue these mails (row-locked by the caller) for a new run of attempts, in the
    caller's transaction, with an audit event each: the one way a mail is sent again.
    ``new_message``: the mail went out before, and this is a second copy on purpose, under a
    Message-ID of its own (the Message-ID is made from the row's id and ``created_at``), so
    that a mail system which drops repeated Message-IDs delivers it."""
    if not ids:
        return
    values = {"status": MailStatus.queued.value, "attempts": 0, "next_attempt_at": now,
              "sending_started_at": None}
    if new_message:
        values["created_at"] = now
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id.in_(ids)).values(**values))
    audit.record(session, *(audit.event(
        actor=actor, action=RESENT, object_type="outbound_email", object_id=outbound_id,
        program_id=program_id, at=now, detail=detail) for outbound_id in ids))


def resend_claim_mail(session: Session, *, program_id: int, creator_email: str, actor: str,
                      now: datetime | None = None) -> int:
    """Send a creator's code mail again (a manager's request: "I never got it"); returns the
    mail's id. The mail is the one about the code their claim holds (its redemption mail, or
    its reissue mail after a reissue), queued again as ``resend_failed`` does.

    Refused (NoCodeHeld) when the creator holds no code in the program; refused
    (ResendTooSoon) when a code mail was queued for the claim, first or again, less than
    ``RESEND_MIN_INTERVAL_MINUTES`` ago; refused (Conflict) while an attempt is sending it. A
    creator who asked to be forgotten has no address left to be found by. A mail that had been
    sent goes out as a new message (see ``_queue_again``).
    """
    now = now or datetime.now(UTC)
    interval = timedelta(minutes=current_app.config["RESEND_MIN_INTERVAL_MINUTES"])
    address = normalise_email(creator_email)
    with write_transaction(session):
        claim = session.execute(
            sa.select(Claim.id, Claim.state, Claim.code_id)
            .join(Creator, Creator.id == Claim.creator_id)
            .where(Claim.program_id == program_id, Creator.email == address)
            .with_for_update(of=Claim)).first()
        if claim is None or claim.state != ClaimState.allocated or claim.code_id is None:
            raise NoCodeHeld(address)
        mails = session.execute(
            sa.select(OutboundEmail.id, OutboundEmail.code_id, OutboundEmail.status,
                      OutboundEmail.created_at, OutboundEmail.to_email, OutboundEmail.sent_at)
            .where(OutboundEmail.claim_id == claim.id,
                   OutboundEmail.kind.in_(CODE_MAIL_KINDS))
            .order_by(OutboundEmail.id).with_for_update()).all()
        current = [m for m in mails if m.code_id == claim.code_id
                   and m.status != MailStatus.cancelled.value]
        if not current:  # verify (I5) names such a claim
            raise Conflict(f"claim #{claim.id} has no mail for its code", claim_id=claim.id)
        mail = current[-1]
        if mail.status == MailStatus.sending.value:
            raise Conflict(f"mail #{mail.id} is being sent right now", claim_id=claim.id)
        mail_ids = [m.id for m in mails]
        resent_at = session.execute(
            sa.select(sa.func.max(AuditEvent.at))
            .where(AuditEvent.object_type == "outbound_email",
                   AuditEvent.object_id.in_(mail_ids), AuditEvent.action == RESENT)
        ).scalar()
        last_queued = max([m.created_at for m in mails] + ([resent_at] if resent_at else []))
        if now - last_queued < interval:
            left = interval - (now - last_queued)
            raise ResendTooSoon(claim_id=claim.id,
                                minutes=max(1, -(-int(left.total_seconds()) // 60)))
        _queue_again(session, [mail.id], program_id=program_id, actor=actor, now=now,
                     detail={"claim_id": claim.id, "status_before": mail.status,
                             "sent_at_before": mail.sent_at},
                     new_message=mail.status == MailStatus.sent.value)
    log_event(RESENT, program_id=program_id, count=1, claim_id=claim.id)  # pragma: no mutate
    dispatch.send_emails([mail.id])
    return mail.id
