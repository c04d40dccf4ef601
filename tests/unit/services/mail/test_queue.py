"""Mail: each owed mail sent once; failures recorded and retried with backoff; outbox files."""

from __future__ import annotations

import email
import email.policy
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from tests.conftest import sign_in
from tests.helpers import LINK_RE, csrf_token, html_body, redemption_code
from wellness_perks import create_app
from wellness_perks.db import get_session
from wellness_perks.models import OutboundEmail
from wellness_perks.services import imports, mail


@pytest.fixture
def allocated(app, client, factory, smtp_server, session):
    """A creator with an allocated claim whose redemption mail is queued but not yet sent."""
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    sign_in(client, smtp_server, "ayesha@example.com")
    smtp_server.refuse_with = "451 4.3.0 try again later"
    page = client.get("/programs/headspace-6m")
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    outbound = session.exec(select(OutboundEmail).where(OutboundEmail.kind == "redemption")).one()
    return outbound.id


def _row(session, outbound_id):
    session.rollback()
    return session.get(OutboundEmail, outbound_id, populate_existing=True)


def test_refused_mail_is_recorded_and_retried_later(app, allocated, session, smtp_server):
    row = _row(session, allocated)
    assert (row.status, row.attempts) == ("queued", 1)
    assert "451" in row.last_error
    assert row.next_attempt_at > datetime.now(UTC)

    with app.app_context(), pytest.raises(mail.MailRetryLater) as later:
        mail.send(get_session(), outbound_id=allocated)
    assert later.value.countdown == 2  # backoff doubles: 1 s, 2 s, ...
    assert _row(session, allocated).attempts == 2

    smtp_server.refuse_with = None
    with app.app_context():
        assert mail.send(get_session(), outbound_id=allocated) == "sent"
        assert mail.send(get_session(), outbound_id=allocated) == "sent"  # no second send
    row = _row(session, allocated)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert len(smtp_server.to("ayesha@example.com", "code")) == 1


def test_mail_fails_for_good_after_max_attempts(app, allocated, session, smtp_server):
    max_attempts = app.config["MAIL_MAX_ATTEMPTS"]
    with app.app_context():
        for _ in range(max_attempts - 2):
            with pytest.raises(mail.MailRetryLater):
                mail.send(get_session(), outbound_id=allocated)
        assert mail.send(get_session(), outbound_id=allocated) == "failed"
        assert mail.send(get_session(), outbound_id=allocated) == "failed"
    row = _row(session, allocated)
    assert (row.status, row.attempts) == ("failed", max_attempts)
    assert "451" in row.last_error and row.next_attempt_at is None
    assert smtp_server.refused == max_attempts


def test_permanent_refusal_fails_at_once(app, allocated, session, smtp_server):
    smtp_server.refuse_with = "550 5.1.1 no such mailbox"
    with app.app_context():
        assert mail.send(get_session(), outbound_id=allocated) == "failed"
    row = _row(session, allocated)
    assert (row.status, row.attempts) == ("failed", 2)
    assert "550" in row.last_error


def test_unreachable_smtp_server_is_retried(app_config, allocated, session):
    app_config["SMTP_PORT"] = 1  # nothing listens there
    app = create_app(app_config)
    with app.app_context(), pytest.raises(mail.MailRetryLater):
        mail.send(get_session(), outbound_id=allocated)
    row = _row(session, allocated)
    assert row.status == "queued" and "Refused" in row.last_error
    app.extensions["db_engine"].dispose()


def test_without_smtp_host_mail_goes_to_the_outbox(app_config, factory, smtp_server):
    app_config["SMTP_HOST"] = ""
    app = create_app(app_config)
    from tests.conftest import Factory

    factory = Factory(app)
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    client = app.test_client()
    page = client.get("/login")
    client.post("/login", data={"email": "ayesha@example.com",
                                "csrf_token": csrf_token(page.text)})
    outbox = Path(app_config["OUTBOX_DIR"])
    [sign_in_file] = sorted(outbox.glob("*.eml"))
    message = email.message_from_bytes(sign_in_file.read_bytes(), policy=email.policy.default)
    for header in ("From", "To", "Subject", "Date", "Message-ID"):
        assert message[header], header
    assert message["To"] == "ayesha@example.com"
    link = [line for line in message.get_body(("plain",)).get_content().splitlines()
            if "/login/" in line][0].strip()
    client.get(link.removeprefix("http://localhost"))
    page = client.get("/programs/headspace-6m")
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 2 and not list(outbox.glob(".tmp-*"))
    code_mail = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    assert redemption_code(code_mail) == "HS-AAAA-0001"
    assert b"\r\n" in files[1].read_bytes()  # RFC 5322 line endings
    assert smtp_server.messages == []
    app.extensions["db_engine"].dispose()


def test_html_mail_escapes_creator_data(app, client, factory, smtp_server):
    program = factory.program()
    with app.app_context():
        imports.import_creators(
            get_session(), program=program, actor="test",
            stream=io.BytesIO(b"handle,email,country\n<b>x</b>,x@example.com,PK\n"))
    factory.codes(program, ["HS-AAAA-0001"])
    sign_in(client, smtp_server, "x@example.com")
    [message] = smtp_server.to("x@example.com")
    html = html_body(message)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_ascii_mail_keeps_links_whole_and_non_ascii_is_encoded(app, client, factory, smtp_server):
    program = factory.program()
    with app.app_context():
        imports.import_creators(
            get_session(), program=program, actor="test",
            stream=io.BytesIO("handle,email,country\n@plain,plain@example.com,PK\n"
                              "@عائشہ,aisha@example.com,PK\n".encode()))
    for address in ("plain@example.com", "aisha@example.com"):
        page = client.get("/login")
        client.post("/login", data={"email": address, "csrf_token": csrf_token(page.text)})
    plain = smtp_server.wait_for_mail("plain@example.com")[0]
    urdu = smtp_server.wait_for_mail("aisha@example.com")[0]
    raw = plain.as_bytes()
    assert b"Content-Transfer-Encoding: 7bit" in raw
    assert LINK_RE.search(raw.decode("ascii")) is not None  # no soft line breaks in the link
    assert "@عائشہ" in urdu.get_body(("plain",)).get_content()
    assert LINK_RE.search(urdu.get_body(("plain",)).get_content()) is not None
