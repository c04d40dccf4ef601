"""The Bcc attack through the real mail path: a program name with a line break and a ``Bcc:``
header in it. It is refused where names enter; a name that got into the database anyway (by
SQL, or stored before the rule) never reaches a message: the code mail fails for good, naming
the header, and the SMTP server never sees the header or the attacker's address."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import csrf_token
from wellness_perks.models import OutboundEmail, Program

ATTACKER = "attacker@evil.example"


def test_the_bcc_attack_is_refused_where_the_name_enters(runner, session):
    result = runner.invoke(args=["create-program", "--slug", "headspace-6m", "--name",
                                 f"Headspace\r\nBcc: {ATTACKER}", "--quota", "10"])
    assert result.exit_code == 1
    assert "name must be one line: it contains a line break" in result.stderr
    assert session.exec(select(Program)).all() == []


def test_a_stored_name_with_a_bcc_header_never_reaches_the_smtp_server(
        client, factory, signed_in, session, smtp_server):
    program = factory.program(quota=5)
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    session.execute(sa.update(Program).where(Program.id == program.id)
                    .values(name=f"Headspace\r\nBcc: {ATTACKER}\r\nX-Evil: 1"))
    session.commit()
    signed_in("ayesha@example.com")  # the sign-in mail does not carry the name: it goes
    page = client.get("/programs/headspace-6m")
    response = client.post("/programs/headspace-6m/claim",
                           data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 302
    assert "HS-AAAA-0001" in client.get("/programs/headspace-6m").text  # the claim stands

    session.rollback()
    [code_mail] = session.exec(select(OutboundEmail)
                               .where(OutboundEmail.kind == "redemption")).all()
    assert code_mail.status == "failed" and code_mail.attempts == 1  # never retried as is
    assert code_mail.last_error == (
        "PermanentMailError: the Subject header value contains a line break: refused")
    received = list(smtp_server.messages)
    assert [m["To"] for m in received] == ["ayesha@example.com"]  # the sign-in mail only
    for message in received:
        assert message["Bcc"] is None and message["X-Evil"] is None
        assert ATTACKER not in message.as_string()
