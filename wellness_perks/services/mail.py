"""Mail we owe people, sent once each.

Every mail is a row (OutboundEmail) written in the same transaction as the thing it tells about.
Sending takes the row with a conditional UPDATE (queued -> sending), so two workers never both
send it; the body is rendered at send time from the database and never stored or logged.
Without SMTP_HOST, mail goes to ``OUTBOX_DIR`` as one RFC 5322 ``.eml`` file per message.
"""

from __future__ import annotations

import logging
import os
import smtplib
import tempfile
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, parseaddr
from pathlib import Path

import sqlalchemy as sa
from flask import current_app, render_template
from sqlmodel import Session

from ..logs import log_event
from ..models import Claim, Code, CodeBatch, Creator, MailKind, MailStatus, OutboundEmail, Program
from .auth import mint_sign_in_token

MAX_ERROR_LENGTH = 1000


class MailRetryLater(Exception):
    """The attempt failed for a reason that may pass; try again after ``countdown`` seconds."""

    def __init__(self, countdown: int) -> None:
        super().__init__(f"retry in {countdown}s")
        self.countdown = countdown


class PermanentMailError(Exception):
    """The server refused the message for good (5xx): retrying won't help."""


def send(session: Session, *, outbound_id: int) -> str:
    """Make one attempt at an owed mail. Returns its status afterwards.

    Raises MailRetryLater when the attempt failed and another is due later.
    """
    took = _update(session, outbound_id, (MailStatus.queued,), status=MailStatus.sending,
                   attempts=OutboundEmail.attempts + 1, sending_started_at=datetime.now(UTC))
    outbound = session.get(OutboundEmail, outbound_id, populate_existing=True)
    if outbound is None:
        log_event("mail.unknown", logging.WARNING, outbound_id=outbound_id)
        return "unknown"
    if not took:
        return outbound.status  # sent, failed, or another attempt holds it
    if outbound.code_id is not None and session.execute(
            sa.select(Code.status).where(Code.id == outbound.code_id)).scalar_one() == "void":
        _update(session, outbound_id, (MailStatus.sending,), status=MailStatus.cancelled,
                last_error="its code was voided before it was sent")
        log_event("mail.cancelled", outbound_id=outbound_id, claim_id=outbound.claim_id)
        return MailStatus.cancelled

    try:
        message = build_message(session, outbound)
        deliver(message, outbound)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the row
        return _record_failure(session, outbound, exc)

    _update(session, outbound_id, (MailStatus.sending,), status=MailStatus.sent,
            sent_at=datetime.now(UTC), message_id=message["Message-ID"], last_error=None,
            next_attempt_at=None)
    log_event("mail.sent", outbound_id=outbound.id, kind=outbound.kind,
              claim_id=outbound.claim_id, attempts=outbound.attempts)
    return MailStatus.sent


def _update(session: Session, outbound_id: int, from_states: tuple[MailStatus, ...],
            **values) -> bool:
    """Move an OutboundEmail on, only from the given states; True if it moved.

    Its own transaction, beginning with the UPDATE (so SQLite waits for the write lock).
    """
    session.commit()
    moved = session.execute(
        sa.update(OutboundEmail)
        .where(OutboundEmail.id == outbound_id, OutboundEmail.status.in_(from_states))
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return bool(moved)


def _record_failure(session: Session, outbound: OutboundEmail, exc: Exception) -> str:
    config = current_app.config
    permanent = isinstance(exc, PermanentMailError)
    error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
    countdown = None
    if permanent or outbound.attempts >= config["MAIL_MAX_ATTEMPTS"]:
        status, next_attempt_at = MailStatus.failed, None
    else:
        countdown = retry_delay(outbound.attempts)
        status = MailStatus.queued
        next_attempt_at = datetime.now(UTC) + timedelta(seconds=countdown)
    session.rollback()
    _update(session, outbound.id, (MailStatus.sending,), status=status, last_error=error,
            next_attempt_at=next_attempt_at)
    log_event("mail.failed" if countdown is None else "mail.retry_scheduled", logging.WARNING,
              outbound_id=outbound.id, kind=outbound.kind, claim_id=outbound.claim_id,
              attempts=outbound.attempts, error=type(exc).__name__, retry_in=countdown)
    if countdown is not None:
        raise MailRetryLater(countdown)
    return status


def retry_delay(attempts: int) -> int:
    """Exponential backoff: base, 2x base, 4x base, ... capped at an hour."""
    base = current_app.config["MAIL_RETRY_BASE_SECONDS"]
    return int(min(base * 2 ** max(attempts - 1, 0), 3600))


# --------------------------------------------------------------------------- building


def build_message(session: Session, outbound: OutboundEmail) -> EmailMessage:
    config = current_app.config
    creator = session.get(Creator, outbound.creator_id)
    context = {
        "creator": creator,
        "help_email": config["HELP_EMAIL"],
        "base_url": config["BASE_URL"],
    }
    if outbound.kind == MailKind.sign_in:
        token = mint_sign_in_token(creator)
        context |= {
            "link": f"{config['BASE_URL']}/login/{token}",
            "minutes": config["LOGIN_TOKEN_MAX_AGE"] // 60,
        }
        subject = "Your sign-in link for Wellness Perks"
        template = "email/sign_in"
    elif outbound.kind in (MailKind.redemption, MailKind.reissue):
        claim = session.get(Claim, outbound.claim_id)
        program = session.get(Program, claim.program_id)
        code = session.get(Code, outbound.code_id)
        batch = session.get(CodeBatch, code.batch_id)
        context |= {
            "program": program,
            "code": code.value,
            "redeem_link": program.redeem_link(code.value),
            "expires_on": batch.expires_on,
            "program_url": f"{config['BASE_URL']}/programs/{program.slug}",
            "reissue": outbound.kind == MailKind.reissue,
        }
        subject = (f"Your new {program.name} code" if outbound.kind == MailKind.reissue
                   else f"Your {program.name} code")
        template = "email/redemption"
    else:
        raise ValueError(f"unknown mail kind {outbound.kind!r}")

    text = render_template(f"{template}.txt", **context)
    html = render_template(f"{template}.html", **context)
    from_addr = config["MAIL_FROM"]
    needs_utf8 = not (outbound.to_email.isascii() and from_addr.isascii())
    message = EmailMessage(policy=SMTPUTF8 if needs_utf8 else SMTP)
    message["Subject"] = subject
    message["From"] = from_addr
    message["To"] = outbound.to_email
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id(outbound, from_addr)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text, cte=_transfer_encoding(text))
    message.add_alternative(html, subtype="html", cte=_transfer_encoding(html))
    return message


def message_id(outbound: OutboundEmail, from_addr: str) -> str:
    """The same Message-ID for every attempt at one mail: if an attempt whose outcome we could
    not record is repeated, mail systems that de-duplicate by Message-ID show it once."""
    domain = parseaddr(from_addr)[1].rpartition("@")[2] or "localhost"
    created = outbound.created_at.strftime("%Y%m%d%H%M%S")
    return f"<wellness-perks.{outbound.id}.{created}@{domain}>"


def _transfer_encoding(body: str) -> str:
    """7bit keeps links whole (readable in the raw .eml); non-ASCII text is quoted-printable."""
    if body.isascii() and all(len(line) <= 990 for line in body.splitlines()):
        return "7bit"
    return "quoted-printable"


# --------------------------------------------------------------------------- delivering


def deliver(message: EmailMessage, outbound: OutboundEmail) -> None:
    if current_app.config["SMTP_HOST"]:
        _deliver_smtp(message)
    else:
        _deliver_outbox(message, outbound)


def _deliver_smtp(message: EmailMessage) -> None:
    config = current_app.config
    host, port, timeout = config["SMTP_HOST"], config["SMTP_PORT"], config["SMTP_TIMEOUT"]
    smtp_class = smtplib.SMTP_SSL if config["SMTP_SSL"] else smtplib.SMTP
    try:
        with smtp_class(host, port, timeout=timeout) as smtp:
            if config["SMTP_STARTTLS"] and not config["SMTP_SSL"]:
                smtp.starttls()
            if config["SMTP_USER"]:
                smtp.login(config["SMTP_USER"], config["SMTP_PASSWORD"])
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _msg in exc.recipients.values()]
        if codes and all(code >= 500 for code in codes):
            raise PermanentMailError(f"recipient refused ({codes[0]})") from exc
        raise
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        if exc.smtp_code >= 500:
            raise PermanentMailError(f"refused by the server ({exc.smtp_code})") from exc
        raise


def _deliver_outbox(message: EmailMessage, outbound: OutboundEmail) -> None:
    outbox = Path(current_app.config["OUTBOX_DIR"])
    outbox.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    target = outbox / f"{stamp}-{outbound.id:08d}-{outbound.kind}.eml"
    fd, tmp = tempfile.mkstemp(dir=outbox, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(message.as_bytes())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
