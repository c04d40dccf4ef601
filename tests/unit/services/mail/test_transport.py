"""Delivering mail (``mail/transport.py``), against real aiosmtpd servers.

One SMTP transaction (``transport.transact``): pipelined where the server offers PIPELINING,
smtplib's ``sendmail`` elsewhere, with the same outcome and the same errors either way, and the
connection left usable after a refusal. A batch goes over one pooled connection, reopened when
the server drops it, paced to MAIL_RATE_LIMIT; without an SMTP host, one ``.eml`` file a mail
in OUTBOX_DIR."""

from __future__ import annotations

import email
import email.policy
import io
import smtplib
import socket
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import select

from tests.conftest import Factory
from tests.helpers import free_port, redemption_code
from wellness_perks import create_app
from wellness_perks.db import get_session
from wellness_perks.models import Claim, Creator, OutboundEmail
from wellness_perks.services import allocation, auth, claims, imports, mail
from wellness_perks.services.mail import transport

SENDER = "perks@example.com"


class Server:
    """An SMTP server that refuses at the stage it is told to, and keeps what it accepts."""

    def __init__(self, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.refuse: dict[str, str] = {}  # stage (MAIL, RCPT, DATA) -> reply
        self.received: list[tuple[str, list[str], bytes]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: N802
        if "MAIL" in self.refuse:
            return self.refuse["MAIL"]
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        if "RCPT" in self.refuse and address.startswith("refused"):
            return self.refuse["RCPT"]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if "DATA" in self.refuse:
            return self.refuse["DATA"]
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture(params=[True, False], ids=["pipelining", "plain"])
def server(request):
    srv = Server(pipelining=request.param)
    srv.controller.start()
    yield srv
    srv.controller.stop()


@pytest.fixture
def connection(server):
    conn = smtplib.SMTP("127.0.0.1", server.controller.port, timeout=10)
    yield conn
    conn.close()


MESSAGE = (b"Subject: test\r\nTo: ali@example.com\r\n\r\n"
           b"first line\r\n.a line that starts with a dot\r\n.\r\n..two dots\r\nlast\r\n")


def test_delivers_the_message_as_given(server, connection, monkeypatch):
    if server.pipelining:  # the pipelined path must not fall back to smtplib's four round trips
        monkeypatch.setattr(smtplib.SMTP, "sendmail", _must_not_be_called)
    transport.transact(connection, SENDER, "ali@example.com", MESSAGE)
    transport.transact(connection, SENDER, "sara@example.com", MESSAGE.rstrip(b"\r\n"))
    assert [(f, r) for f, r, _ in server.received] == [
        (SENDER, ["ali@example.com"]), (SENDER, ["sara@example.com"])]
    # Dot-stuffing undone by the server: the content is what we gave, line for line.
    assert server.received[0][2] == MESSAGE
    assert server.received[1][2].rstrip(b"\r\n") == MESSAGE.rstrip(b"\r\n")


def test_pipelining_is_used_only_where_offered(server, connection, monkeypatch):
    calls = []
    real = smtplib.SMTP.sendmail
    monkeypatch.setattr(smtplib.SMTP, "sendmail",
                        lambda self, *args: calls.append(args) or real(self, *args))
    transport.transact(connection, SENDER, "ali@example.com", MESSAGE)
    assert len(calls) == (0 if server.pipelining else 1)
    assert len(server.received) == 1


@pytest.mark.parametrize(("stage", "reply", "error", "code"), [
    ("MAIL", "451 4.3.0 sender check failed, try later", smtplib.SMTPSenderRefused, 451),
    ("MAIL", "553 5.1.8 sender refused", smtplib.SMTPSenderRefused, 553),
    ("RCPT", "550 5.1.1 no such mailbox", smtplib.SMTPRecipientsRefused, 550),
    ("RCPT", "450 4.2.1 mailbox busy", smtplib.SMTPRecipientsRefused, 450),
    ("DATA", "451 4.3.0 try again later", smtplib.SMTPDataError, 451),
    ("DATA", "554 5.6.0 message refused", smtplib.SMTPDataError, 554),
])
def test_refusals_raise_what_sendmail_raises_and_leave_the_connection_usable(
        server, connection, stage, reply, error, code):
    server.refuse[stage] = reply
    with pytest.raises(error) as raised:
        transport.transact(connection, SENDER, "refused@example.com", MESSAGE)
    exc = raised.value
    got = (list(exc.recipients.values())[0][0] if isinstance(exc, smtplib.SMTPRecipientsRefused)
           else exc.smtp_code)
    assert got == code
    # Classified as before: 5xx is for good, 4xx may pass.
    assert isinstance(transport._classify(exc), transport.PermanentMailError) == (code >= 500)
    assert server.received == []

    server.refuse.clear()
    transport.transact(connection, SENDER, "ali@example.com", MESSAGE)  # same connection, next mail
    assert [r for _, r, _ in server.received] == [["ali@example.com"]]


def test_a_closed_connection_raises_disconnected(server, connection):
    """What the pool reconnects on: the same error on both paths."""
    transport.transact(connection, SENDER, "ali@example.com", MESSAGE)
    connection.sock.shutdown(socket.SHUT_RDWR)  # the connection is gone
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
        transport.transact(connection, SENDER, "sara@example.com", MESSAGE)


def _must_not_be_called(*_args, **_kwargs):
    raise AssertionError("sendmail was called although the server offers PIPELINING")


# --------------------------------------------------------------------------- batches over SMTP


def _parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def _statuses(session):
    session.rollback()
    return session.exec(select(OutboundEmail.status).order_by(OutboundEmail.id)
                        .execution_options(populate_existing=True)).all()


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_a_batch_goes_over_one_connection(app, stocked, session, smtp_server, pipelining):
    smtp_server.clear()
    smtp_server.pipelining = pipelining
    with app.app_context():
        mail.close_pools()
        outcome = mail.send_batch(get_session(), outbound_ids=stocked)
        again = mail.send_batch(get_session(), outbound_ids=stocked)
    assert sorted(outcome.sent) == stocked and again.not_taken == stocked
    assert smtp_server.connections == 1
    assert len(smtp_server.messages) == 20
    assert {redemption_code(m) for m in smtp_server.messages} == {
        f"HS-CODE-{i:04d}" for i in range(20)}
    assert set(_statuses(session)) == {"sent"}


def test_a_dropped_connection_is_reopened(app, stocked, session, smtp_server):
    with app.app_context():
        mail.close_pools()
        mail.send_batch(get_session(), outbound_ids=stocked[:5])
        pool = transport._pool()
        pool.connection.sock.close()  # the server (or a NAT) dropped the idle connection
        outcome = mail.send_batch(get_session(), outbound_ids=stocked[5:])
    assert sorted(outcome.sent) == stocked[5:]
    assert len(smtp_server.messages) == 20


def test_mail_rate_limit_paces_sending(app_config, stocked, session, smtp_server):
    app_config["MAIL_RATE_LIMIT"] = 40  # messages a second
    app = create_app(app_config)
    started = time.monotonic()
    with app.app_context():
        outcome = mail.send_batch(get_session(), outbound_ids=stocked[:9])
    elapsed = time.monotonic() - started
    assert len(outcome.sent) == 9
    assert elapsed >= 8 / 40 * 0.9  # a lower bound only: pacing may never be faster
    app.extensions["db_engine"].dispose()


# --------------------------------------------------------------------------- the outbox


def test_without_smtp_host_mail_goes_to_the_outbox(app_config, factory, smtp_server):
    app_config["SMTP_HOST"] = ""
    app = create_app(app_config)
    factory = Factory(app)
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
    outbox = Path(app_config["OUTBOX_DIR"])
    [sign_in_file] = sorted(outbox.glob("*.eml"))
    message = email.message_from_bytes(sign_in_file.read_bytes(), policy=email.policy.default)
    for header in ("From", "To", "Subject", "Date", "Message-ID"):
        assert message[header], header
    assert message["To"] == "ayesha@example.com"
    link = [line for line in message.get_body(("plain",)).get_content().splitlines()
            if "/login/" in line][0].strip()
    with app.app_context():  # the link in the file works, and the code mail follows it
        creator = auth.redeem_sign_in_token(get_session(), token=link.rsplit("/", 1)[1])
        claims.request_claim(get_session(), program=program, creator_id=creator.id)
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 2 and not list(outbox.glob(".tmp-*"))
    code_mail = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    assert redemption_code(code_mail) == "HS-AAAA-0001"
    assert b"\r\n" in files[1].read_bytes()  # RFC 5322 line endings
    assert smtp_server.messages == []
    app.extensions["db_engine"].dispose()


def test_outbox_batches_write_one_file_per_mail(app_config, factory, session, tmp_path):
    app_config["SMTP_HOST"] = ""
    app = create_app(app_config)
    program = Factory(app).program(quota=5)
    with app.app_context():
        imports.import_creators(get_session(), program=program, actor="test",
                                stream=io.BytesIO(b"handle,email,country\n@a,a@example.com,PK\n"))
    Factory(app).codes(program, ["HS-CODE-0001"])
    session.rollback()
    creator = session.exec(select(Creator)).one()
    session.add(Claim(program_id=program.id, creator_id=creator.id, country="PK"))
    session.commit()
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=program.id)
    files = list((tmp_path / "outbox").glob("*-redemption.eml"))
    assert len(files) == 1
    assert redemption_code(_parse(files[0].read_bytes())) == "HS-CODE-0001"
    app.extensions["db_engine"].dispose()
