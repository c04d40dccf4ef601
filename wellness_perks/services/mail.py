"""Mail we owe people, sent once each.

Every mail is a row (OutboundEmail) written in the same transaction as the thing it tells about.
Sending takes rows with a conditional UPDATE (queued -> sending), so two workers never both send
one; the body is rendered at send time from the database and never stored or logged. Mails go
out in batches: one UPDATE takes the batch, one query loads what the messages say, and they are
sent over one SMTP connection that the process keeps open between batches.
Without SMTP_HOST, mail goes to ``OUTBOX_DIR`` as one RFC 5322 ``.eml`` file per message.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import smtplib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, parseaddr
from pathlib import Path

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session

from ..db import found_by_key, is_postgresql, planned_each_execution
from ..logs import log_event
from ..models import (
    Claim,
    Code,
    CodeBatch,
    Creator,
    MailKind,
    MailStatus,
    OutboundEmail,
    Program,
)
from . import mime
from .auth import mint_sign_in_token

MAX_ERROR_LENGTH = 1000


class MailRetryLater(Exception):
    """The attempt failed for a reason that may pass; try again after ``countdown`` seconds."""

    def __init__(self, countdown: int) -> None:
        super().__init__(f"retry in {countdown}s")
        self.countdown = countdown


class PermanentMailError(Exception):
    """The server refused the message for good (5xx): retrying won't help."""


@dataclass
class BatchOutcome:
    sent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    retry: dict[int, int] = field(default_factory=dict)  # outbound id -> seconds until retry
    not_taken: list[int] = field(default_factory=list)   # not queued: sent, or held elsewhere


@dataclass
class Outgoing:
    outbound_id: int
    to_email: str
    attempts: int
    kind: str
    claim_id: int | None
    raw: bytes = b""
    message_id: str = ""


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
        log_event("mail.unknown", logging.WARNING, outbound_id=outbound_id)
        return "unknown"
    return status


def send_batch(session: Session, *, outbound_ids: list[int]) -> BatchOutcome:
    """One attempt at each of these mails that is queued; the rest are left alone."""
    outcome = BatchOutcome()
    now = datetime.now(UTC)
    session.commit()
    with planned_each_execution(session):
        taken = set(session.connection().execute(
            _TAKE, {"b_ids": list(outbound_ids), "b_now": now}).scalars())
    session.commit()
    outcome.not_taken = [i for i in outbound_ids if i not in taken]
    if not taken:
        return outcome

    with planned_each_execution(session):
        outgoing = _prepare(session, sorted(taken), outcome)
    session.commit()
    if not outgoing:
        return outcome

    # The take stamped every message of the batch with a lease (``sending_started_at``): the
    # sweeper puts a message back in the queue only once its lease is MAIL_SENDING_TIMEOUT old,
    # so a lease a third that old is renewed, for all the batch has left, in one statement. And
    # right before each message goes, we check it is still ours: a message the sweeper took
    # back (another worker may hold it now) is skipped, not sent twice. The statement that
    # records a message also reads whether the next one is still ours, so on a healthy server
    # a message costs one bookkeeping statement, which writes one row.
    renew_every = current_app.config["MAIL_SENDING_TIMEOUT_SECONDS"] / 3
    ours = {item.outbound_id: item.attempts for item in outgoing}  # not yet sent, still ours
    following = {a.outbound_id: b for a, b in zip(outgoing, outgoing[1:], strict=False)}
    checked_ahead: dict[int, bool] = {}
    leased_at = time.monotonic()
    record_sent_and_check = (_MARK_SENT_AND_CHECK_NEXT if is_postgresql(session)
                             else None)  # SQLite has no UPDATE in a WITH: two statements

    with _bookkeeping(session) as book:
        def check(item: Outgoing) -> bool:
            return bool(book(_STILL_OURS, {"b_next": item.outbound_id,
                                           "b_next_attempts": item.attempts}))

        def still_ours(item: Outgoing) -> bool:
            nonlocal ours, leased_at
            if time.monotonic() - leased_at >= renew_every:
                leased_at = time.monotonic()
                renewed = book(_RENEW_LEASES, {"b_held": list(ours.items()),
                                                "b_now": datetime.now(UTC)})
                ours = {i: attempts for i, attempts in ours.items() if i in renewed}
                checked_ahead.clear()
            if item.outbound_id not in ours:
                return False
            if item.outbound_id in checked_ahead:
                return checked_ahead.pop(item.outbound_id)
            return check(item)

        def record(item: Outgoing, error: Exception | None) -> None:
            # Each message is recorded the moment the server has taken it (or refused it), so a
            # worker killed mid-batch leaves at most the one message in flight without an
            # outcome.
            ours.pop(item.outbound_id, None)
            if error is not None:
                _record_failure(book, item, error, outcome)
                return
            upcoming = following.get(item.outbound_id)
            params = {"b_id": item.outbound_id, "b_now": datetime.now(UTC),
                      "b_message_id": item.message_id,
                      "b_next": upcoming.outbound_id if upcoming else None,
                      "b_next_attempts": upcoming.attempts if upcoming else None}
            if upcoming is not None and record_sent_and_check is not None:
                checked_ahead[upcoming.outbound_id] = bool(book(record_sent_and_check, params))
            else:
                book(_MARK_SENT, params)
                if upcoming is not None:
                    checked_ahead[upcoming.outbound_id] = check(upcoming)
            outcome.sent.append(item.outbound_id)
            log_event("mail.sent", outbound_id=item.outbound_id, kind=item.kind,
                      claim_id=item.claim_id, attempts=item.attempts)

        deliver_all(outgoing, still_ours, record)
    return outcome


_outbound = OutboundEmail.__table__.c
_TAKE = (
    sa.update(OutboundEmail.__table__)
    .where(_outbound.id.in_(sa.bindparam("b_ids", expanding=True)),
           found_by_key(_outbound.status == MailStatus.queued.value))
    .values(status=MailStatus.sending.value, attempts=_outbound.attempts + 1,
            sending_started_at=sa.bindparam("b_now"))
    .returning(_outbound.id)
)
_RENEW_LEASES = (
    sa.update(OutboundEmail.__table__)
    .where(sa.tuple_(_outbound.id, _outbound.attempts).in_(
               sa.bindparam("b_held", expanding=True)),
           found_by_key(_outbound.status == MailStatus.sending.value))
    .values(sending_started_at=sa.bindparam("b_now"))
    .returning(_outbound.id)
)
_MARK_SENT = (
    sa.update(OutboundEmail.__table__)
    .where(_outbound.id == sa.bindparam("b_id"),
           found_by_key(_outbound.status == MailStatus.sending.value))
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

Book = Callable[[sa.Executable, dict], set[int]]


@contextmanager
def _bookkeeping(session: Session) -> Iterator[Book]:
    """A function that runs one prepared statement of the per-message bookkeeping, committed on
    its own, and returns the ids of the rows it changed.

    On PostgreSQL it runs on a connection of its own in autocommit mode with
    ``synchronous_commit`` off: one round trip a statement, and no wait for the disk flush. That
    is durable against a worker dying (the risk here); a database crash could at worst cause a
    resend. Each statement stands alone (a message's record, or a batch's lease renewal), so
    nothing needs them in one transaction.
    """
    if not is_postgresql(session):
        def book_in_session(statement: sa.Executable, params: dict) -> set[int]:
            ids = _in_session(session)(statement, params)
            session.commit()
            return ids
        yield book_in_session
        return
    with session.get_bind().connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("SET synchronous_commit TO OFF")
        try:
            yield lambda statement, params: set(connection.execute(statement, params).scalars())
        finally:
            if not connection.invalidated:
                connection.exec_driver_sql("RESET synchronous_commit")


def _in_session(session: Session) -> Book:
    """A Book that runs in the session's transaction, leaving the commit to the caller."""
    return lambda statement, params: set(session.connection().execute(statement, params).scalars())


def _record_failure(book: Book, item: Outgoing, exc: Exception, outcome: BatchOutcome) -> None:
    config = current_app.config
    error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
    countdown = None
    if isinstance(exc, PermanentMailError) or item.attempts >= config["MAIL_MAX_ATTEMPTS"]:
        status, next_attempt_at = MailStatus.failed, None
        outcome.failed.append(item.outbound_id)
    else:
        countdown = retry_delay(item.attempts)
        status = MailStatus.queued
        next_attempt_at = datetime.now(UTC) + timedelta(seconds=countdown)
        outcome.retry[item.outbound_id] = countdown
    book(_RECORD_FAILURE, {"b_id": item.outbound_id, "b_status": status.value,
                           "b_next_attempt_at": next_attempt_at, "b_error": error})
    log_event("mail.failed" if countdown is None else "mail.retry_scheduled", logging.WARNING,
              outbound_id=item.outbound_id, kind=item.kind, claim_id=item.claim_id,
              attempts=item.attempts, error=type(exc).__name__, retry_in=countdown)


def retry_delay(attempts: int) -> int:
    """Exponential backoff: base, 2x base, 4x base, ... capped at an hour."""
    base = current_app.config["MAIL_RETRY_BASE_SECONDS"]
    return int(min(base * 2 ** max(attempts - 1, 0), 3600))


# --------------------------------------------------------------------------- building


def _prepare(session: Session, outbound_ids: list[int], outcome: BatchOutcome) -> list[Outgoing]:
    """Load what the taken mails say (one query) and render them; mails whose code was voided
    before they went out are cancelled (the reissue mail carries the new code)."""
    rows = session.execute(
        sa.select(OutboundEmail, Creator, Code, CodeBatch, Program)
        .join(Creator, Creator.id == OutboundEmail.creator_id)
        .outerjoin(Code, Code.id == OutboundEmail.code_id)
        .outerjoin(CodeBatch, CodeBatch.id == Code.batch_id)
        .outerjoin(Claim, Claim.id == OutboundEmail.claim_id)
        .outerjoin(Program, Program.id == Claim.program_id)
        .where(OutboundEmail.id.in_(outbound_ids))
        .order_by(OutboundEmail.id)
    ).all()
    outgoing, cancelled = [], []
    for outbound, creator, code, batch, program in rows:
        if code is not None and code.status == "void":
            cancelled.append(outbound.id)
            continue
        item = Outgoing(outbound.id, outbound.to_email, outbound.attempts, outbound.kind,
                        outbound.claim_id)
        try:
            item.message_id, item.raw = render(outbound, creator, code, batch, program)
        except Exception as exc:  # noqa: BLE001 - recorded on the row like a failed send
            _record_failure(_in_session(session), item, exc, outcome)
            continue
        outgoing.append(item)
    if cancelled:
        session.execute(
            sa.update(OutboundEmail)
            .where(OutboundEmail.id.in_(cancelled), OutboundEmail.status == MailStatus.sending)
            .values(status=MailStatus.cancelled,
                    last_error="its code was voided before it was sent")
            .execution_options(synchronize_session=False))
        outcome.cancelled += cancelled
        for outbound_id in cancelled:
            log_event("mail.cancelled", outbound_id=outbound_id)
    return outgoing


def render(outbound: OutboundEmail, creator: Creator, code: Code | None,
           batch: CodeBatch | None, program: Program | None) -> tuple[str, bytes]:
    """(Message-ID, the whole message as bytes)."""
    subject, text, html = _content(outbound, creator, code, batch, program)
    config = current_app.config
    from_addr = config["MAIL_FROM"]
    message_id = make_message_id(outbound, from_addr)
    if not outbound.to_email.isascii():  # an internationalised address needs SMTPUTF8
        return message_id, _email_message(outbound, subject, text, html, message_id).as_bytes()
    headers = [("Subject", mime.encode_header(subject)),
               ("From", _encoded_from(from_addr)),
               ("To", outbound.to_email),
               ("Date", format_datetime(datetime.now(UTC))),
               ("Message-ID", message_id),
               ("Auto-Submitted", "auto-generated")]
    return message_id, mime.compose(headers=headers, text=text, html=html)


def _content(outbound, creator, code, batch, program) -> tuple[str, str, str]:
    config = current_app.config
    context = {"creator": creator, "help_email": config["HELP_EMAIL"],
               "base_url": config["BASE_URL"]}
    if outbound.kind == MailKind.sign_in:
        token = mint_sign_in_token(creator)
        context |= {"link": f"{config['BASE_URL']}/login/{token}",
                    "minutes": config["LOGIN_TOKEN_MAX_AGE"] // 60}
        subject, template = "Your sign-in link for Wellness Perks", "email/sign_in"
    elif outbound.kind in (MailKind.redemption, MailKind.reissue):
        reissue = outbound.kind == MailKind.reissue
        context |= {
            "program": program,
            "code": code.value,
            "redeem_link": program.redeem_link(code.value),
            "expires_on": batch.expires_on,
            "program_url": f"{config['BASE_URL']}/programs/{program.slug}",
            "reissue": reissue,
        }
        subject = f"Your new {program.name} code" if reissue else f"Your {program.name} code"
        template = "email/redemption"
    else:
        raise ValueError(f"unknown mail kind {outbound.kind!r}")
    env = current_app.jinja_env
    return (subject, env.get_template(f"{template}.txt").render(context),
            env.get_template(f"{template}.html").render(context))


@functools.lru_cache(maxsize=16)
def _encoded_from(from_addr: str) -> str:
    message = EmailMessage(policy=SMTP)
    message["From"] = from_addr
    return message.as_string().split(":", 1)[1].strip()


def _email_message(outbound, subject, text, html, message_id) -> EmailMessage:
    """The same message through the ``email`` package (for non-ASCII addresses)."""
    message = EmailMessage(policy=SMTPUTF8)
    message["Subject"] = subject
    message["From"] = current_app.config["MAIL_FROM"]
    message["To"] = outbound.to_email
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def make_message_id(outbound: OutboundEmail, from_addr: str) -> str:
    """The same Message-ID for every attempt at one mail: if an attempt whose outcome we could
    not record is repeated, mail systems that de-duplicate by Message-ID show it once."""
    domain = _domain_of(from_addr)
    created = outbound.created_at.strftime("%Y%m%d%H%M%S")
    return f"<wellness-perks.{outbound.id}.{created}@{domain}>"


@functools.lru_cache(maxsize=16)
def _domain_of(from_addr: str) -> str:
    return parseaddr(from_addr)[1].rpartition("@")[2] or "localhost"


# --------------------------------------------------------------------------- delivering


def deliver_all(outgoing: list[Outgoing], still_ours: Callable[[Outgoing], bool],
                record: Callable[[Outgoing, Exception | None], None]) -> None:
    """Deliver each message that is ``still_ours()`` when its turn comes, calling
    ``record(item, error or None)`` right after each one."""
    if not outgoing:
        return
    if current_app.config["SMTP_HOST"]:
        _pool().send_all(outgoing, still_ours, record)
        return
    for item in outgoing:
        if not still_ours(item):
            continue
        try:
            _deliver_outbox(item)
        except OSError as exc:
            record(item, exc)
        else:
            record(item, None)


class SmtpPool:
    """One SMTP connection per process, kept open between batches and reopened when the server
    has dropped it. ``MAIL_RATE_LIMIT`` (messages a second, 0 = no limit) paces this process."""

    def __init__(self, config) -> None:
        self.host, self.port = config["SMTP_HOST"], config["SMTP_PORT"]
        self.user, self.password = config["SMTP_USER"], config["SMTP_PASSWORD"]
        self.ssl, self.starttls = config["SMTP_SSL"], config["SMTP_STARTTLS"]
        self.timeout, self.from_addr = config["SMTP_TIMEOUT"], parseaddr(config["MAIL_FROM"])[1]
        self.rate = config["MAIL_RATE_LIMIT"]
        self.key = (self.host, self.port, self.user, self.ssl, self.starttls, self.rate)
        self.connection: smtplib.SMTP | None = None
        self.next_send = 0.0
        self.lock = threading.Lock()

    def send_all(self, outgoing: list[Outgoing], still_ours: Callable[[Outgoing], bool],
                 record: Callable[[Outgoing, Exception | None], None]) -> None:
        with self.lock:
            for item in outgoing:
                self._pace()
                if not still_ours(item):
                    continue
                try:
                    self._send(item)
                except Exception as exc:  # noqa: BLE001 - classified and recorded per message
                    record(item, _classify(exc))
                else:
                    record(item, None)

    def _send(self, item: Outgoing) -> None:
        for attempt in (1, 2):
            fresh = self.connection is None
            try:
                if fresh:
                    self.connection = self._connect()
                transact(self.connection, self.from_addr, item.to_email, item.raw)
                return
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError):
                self.close()
                if fresh or attempt == 2:  # a new connection failed: the server is the problem
                    raise

    def _connect(self) -> smtplib.SMTP:
        smtp_class = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
        connection = smtp_class(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls and not self.ssl:
                connection.starttls()
            if self.user:
                connection.login(self.user, self.password)
        except BaseException:
            connection.close()
            raise
        return connection

    def _pace(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if now < self.next_send:
            time.sleep(self.next_send - now)
        self.next_send = max(now, self.next_send) + 1.0 / self.rate

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None


_LEADING_DOT = re.compile(rb"(?m)^\.")


def transact(connection: smtplib.SMTP, from_addr: str, to_addr: str, raw: bytes) -> None:
    """Send one message over an open connection; raises what ``smtplib.SMTP.sendmail`` raises,
    so failures are classified the same way.

    Where the server offers PIPELINING (RFC 2920; every large provider does), MAIL, RCPT and
    DATA go in one write and the message in a second: two round trips instead of smtplib's
    four, and half the wake-ups on both ends. Elsewhere (or for an internationalised address)
    this is ``sendmail``.
    """
    connection.ehlo_or_helo_if_needed()
    if not (connection.has_extn("pipelining") and from_addr.isascii() and to_addr.isascii()):
        connection.sendmail(from_addr, [to_addr], raw)
        return
    size = f" SIZE={len(raw)}" if connection.has_extn("size") else ""
    connection.send(f"MAIL FROM:<{from_addr}>{size}\r\nRCPT TO:<{to_addr}>\r\nDATA\r\n"
                    .encode("ascii"))
    (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = (
        connection.getreply(), connection.getreply(), connection.getreply())
    if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
        connection.send(b".\r\n")  # a server that took DATA anyway: end it empty (RFC 2920)
        connection.getreply()
    if mail_code != 250:
        _abandon(connection, mail_code)
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, from_addr)
    if rcpt_code not in (250, 251):
        _abandon(connection, rcpt_code)
        raise smtplib.SMTPRecipientsRefused({to_addr: (rcpt_code, rcpt_reply)})
    if data_code != 354:
        _abandon(connection, data_code)
        raise smtplib.SMTPDataError(data_code, data_reply)
    body = _LEADING_DOT.sub(b"..", raw)
    connection.send(body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
    code, reply = connection.getreply()
    if code != 250:
        _abandon(connection, code)
        raise smtplib.SMTPDataError(code, reply)


def _abandon(connection: smtplib.SMTP, code: int) -> None:
    """After a refusal: as smtplib does, close on 421 (the server is closing), else RSET."""
    if code == 421:
        connection.close()
        return
    try:
        connection.rset()
    except smtplib.SMTPServerDisconnected:
        pass


_pools: dict[tuple, SmtpPool] = {}
_pools_lock = threading.Lock()


def _pool() -> SmtpPool:
    pool = SmtpPool(current_app.config)
    with _pools_lock:
        return _pools.setdefault(pool.key, pool)


def close_pools() -> None:
    """Close this process's SMTP connections (at shutdown, and between tests)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        with pool.lock:
            pool.close()


def _classify(exc: Exception) -> Exception:
    """5xx refusals are permanent; everything else may pass."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        if codes and all(code >= 500 for code in codes):
            return PermanentMailError(f"recipient refused ({codes[0]})")
    if isinstance(exc, smtplib.SMTPSenderRefused | smtplib.SMTPDataError) and exc.smtp_code >= 500:
        return PermanentMailError(f"refused by the server ({exc.smtp_code})")
    return exc


def _deliver_outbox(item: Outgoing) -> None:
    outbox = Path(current_app.config["OUTBOX_DIR"])
    outbox.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    target = outbox / f"{stamp}-{item.outbound_id:08d}-{item.kind}.eml"
    fd, tmp = tempfile.mkstemp(dir=outbox, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(item.raw)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
