"""Rendering an owed mail into the message that goes out: subject, text and HTML bodies from
``templates/email/``, in the language its row records, and the headers.

A mail's body is rendered at send time, from the database, and never stored or logged.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, parseaddr

from flask import current_app

from ...models import Code, CodeBatch, Creator, MailKind, OutboundEmail, Program, text_direction
from .. import code_cipher, tokens
from . import mime


def render(outbound: OutboundEmail, creator: Creator, code: Code | None,
           batch: CodeBatch | None, program: Program | None) -> tuple[str, bytes]:
    """(Message-ID, the whole message as bytes)."""
    subject, text, html = _content(outbound, creator, code, batch, program)
    extra = _list_headers(outbound, program)
    from_addr = current_app.config["MAIL_FROM"]
    for name, value in (("Subject", subject), ("From", from_addr), ("To", outbound.to_email)):
        mime.check_header(name, value)  # one line each, whichever way the message is written
    message_id = make_message_id(outbound, from_addr)
    if not outbound.to_email.isascii():  # an internationalised address needs SMTPUTF8
        return message_id, _email_message(outbound, subject, text, html, message_id,
                                          extra).as_bytes()
    headers = [("Subject", mime.encode_header(subject)),
               ("From", _encoded_from(from_addr)),
               ("To", outbound.to_email),
               ("Date", format_datetime(datetime.now(UTC))),
               ("Message-ID", message_id),
               ("Auto-Submitted", "auto-generated"), *extra]
    return message_id, mime.compose(headers=headers, text=text, html=html)


INVITATION_KINDS = (MailKind.invitation, MailKind.reminder)


def opt_out_url(creator_id: int, program_id: int) -> str:
    token = tokens.mint_opt_out_token(creator_id=creator_id, program_id=program_id)
    return f"{current_app.config['BASE_URL']}/opt-out/{token}"


def _list_headers(outbound, program) -> list[tuple[str, str]]:
    """An invitation's or a reminder's one-click opt-out (RFC 8058): the mail client may POST
    ``List-Unsubscribe=One-Click`` to the URL, which opts out at once."""
    if outbound.kind not in INVITATION_KINDS:
        return []
    return [("List-Unsubscribe", f"<{opt_out_url(outbound.creator_id, program.id)}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]


def _content(outbound, creator, code, batch, program) -> tuple[str, str, str]:
    """(subject, text, html) from the mail kind's three templates."""
    config = current_app.config
    context = {"creator": creator, "help_email": config["HELP_EMAIL"],
               "base_url": config["BASE_URL"], "lang": outbound.locale,
               "text_dir": text_direction(outbound.locale)}
    if outbound.kind == MailKind.sign_in:
        token = tokens.mint_sign_in_token(creator)
        context |= {"link": f"{config['BASE_URL']}/login/{token}",
                    "minutes": config["LOGIN_TOKEN_MAX_AGE"] // 60}
        template = "email/sign_in"
    elif outbound.kind in INVITATION_KINDS:
        # A sign-in link (``tokens``: an invitation's, which lives days, not minutes) that
        # lands on the program's page.
        token = tokens.mint_invitation_token(creator)
        context |= {
            "program": program,
            "link": f"{config['BASE_URL']}/login/{token}?next=/programs/{program.slug}",
            "login_url": f"{config['BASE_URL']}/login",
            "minutes": config["INVITE_LINK_MAX_AGE"] // 60,
            "reminder": outbound.kind == MailKind.reminder,
            "opt_out_link": opt_out_url(creator.id, program.id),
            "help_email": program.support_email or config["HELP_EMAIL"],
        }
        template = "email/invitation"
    elif outbound.kind in (MailKind.redemption, MailKind.reissue):
        value = code_cipher.cipher().decrypt(code.value_encrypted)  # one per mail, never kept
        context |= {
            "program": program,
            "code": value,
            "redeem_link": program.redeem_link(value),
            "expires_on": batch.expires_on,
            "program_url": f"{config['BASE_URL']}/programs/{program.slug}",
            "reissue": outbound.kind == MailKind.reissue,
            # The program's own support contact, in the body only (never a header).
            "help_email": program.support_email or config["HELP_EMAIL"],
        }
        template = "email/redemption"
    else:
        raise ValueError(f"unknown mail kind {outbound.kind!r}")
    env = current_app.jinja_env
    subject = env.get_template(f"{template}.subject.txt").render(context).strip()
    return (subject, env.get_template(f"{template}.txt").render(context),
            env.get_template(f"{template}.html").render(context))


@functools.lru_cache(maxsize=16)
def _encoded_from(from_addr: str) -> str:
    message = EmailMessage(policy=SMTP)
    message["From"] = from_addr
    return message.as_string().split(":", 1)[1].strip()


def _email_message(outbound, subject, text, html, message_id, extra=()) -> EmailMessage:
    """The same message through the ``email`` package (for non-ASCII addresses)."""
    message = EmailMessage(policy=SMTPUTF8)
    message["Subject"] = subject
    message["From"] = current_app.config["MAIL_FROM"]
    message["To"] = outbound.to_email
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    for name, value in extra:
        message[name] = value
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
