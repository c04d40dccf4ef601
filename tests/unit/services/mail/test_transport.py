"""One SMTP transaction (``mail.transport.transact``): pipelined where the server offers
PIPELINING, smtplib's ``sendmail`` elsewhere, with the same outcome and the same errors either
way, and the connection left usable after a refusal. Against a real aiosmtpd server."""

from __future__ import annotations

import smtplib
import socket

import pytest
from aiosmtpd.controller import Controller

from tests.helpers import free_port
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
