"""Mail in batches: composed bytes equal to the email package's, one pooled SMTP connection,
reconnecting when the server drops it, pacing, and never sending a mail taken back."""

from __future__ import annotations

import email
import email.policy
import io
import time
from datetime import date

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import redemption_code
from wellness_perks import create_app
from wellness_perks.db import get_session
from wellness_perks.models import Claim, Creator, OutboundEmail
from wellness_perks.services import allocation, imports, mail
from wellness_perks.services.mail import mime, transport


def _parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


@pytest.mark.parametrize(("subject", "text", "html"), [
    ("Your Headspace code", "Hello @ali,\n\n    HS-AAAA-0001\n", "<p>Hello @ali</p>"),
    ("Your Headspace · 6 months code", "Hello @عائشہ,\n\n    HS-AAAA-0001\n" + "x" * 1200,
     "<p>Hello @عائشہ — ça va?</p>"),
])
def test_composed_message_reads_back_like_the_email_packages(subject, text, html):
    headers = [("Subject", mime.encode_header(subject)), ("From", "Perks <perks@example.com>"),
               ("To", "ali@example.com"), ("Message-ID", "<wp.1@example.com>")]
    raw = mime.compose(headers=headers, text=text, html=html)
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line endings only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    ours = _parse(raw)

    reference = email.message.EmailMessage(policy=email.policy.SMTP)
    for name, value in (("Subject", subject), ("From", "Perks <perks@example.com>"),
                        ("To", "ali@example.com"), ("Message-ID", "<wp.1@example.com>")):
        reference[name] = value
    reference.set_content(text)
    reference.add_alternative(html, subtype="html")
    theirs = _parse(reference.as_bytes())

    for name in ("Subject", "From", "To", "Message-ID"):
        assert str(ours[name]) == str(theirs[name]), name
    assert ours.get_content_type() == "multipart/alternative"
    for kind in ("plain", "html"):
        assert ours.get_body((kind,)).get_content() == theirs.get_body((kind,)).get_content()
    expected = "7bit" if text.isascii() and len(text) < 990 else "quoted-printable"
    assert ours.get_body(("plain",))["Content-Transfer-Encoding"] == expected


@pytest.fixture
def stocked(app, factory, session):
    """20 creators with allocated claims whose mails are queued, not yet sent."""
    from wellness_perks import dispatch

    program = factory.program(quota=50)
    factory.creators(program, [f"c{i:02d}@example.com" for i in range(20)])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(20)],
                  expires_on=date(2027, 6, 30))
    session.rollback()
    creators = session.exec(select(Creator).order_by(Creator.id)).all()
    session.add_all(Claim(program_id=program.id, creator_id=c.id, country=c.country)
                    for c in creators)
    session.commit()
    held = dispatch.send_emails
    dispatch.send_emails = lambda ids: None  # keep the mails queued for the test to send
    try:
        with app.app_context():
            allocation.allocate_program(get_session(), program_id=program.id)
    finally:
        dispatch.send_emails = held
    return sorted(session.exec(select(OutboundEmail.id)).all())


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


@pytest.fixture
def slow_batch(app_config, stocked):
    """An app whose batches renew their leases before every message, as a batch does once it
    has run for a third of MAIL_SENDING_TIMEOUT_SECONDS (a slow server, a low rate limit)."""
    app_config["MAIL_SENDING_TIMEOUT_SECONDS"] = 0
    app = create_app(app_config)
    yield app
    app.extensions["db_engine"].dispose()


@pytest.mark.parametrize("lease", ["fresh", "renewed"])
@pytest.mark.parametrize("taken_back", ["requeued", "retaken"])
def test_a_mail_taken_back_meanwhile_is_not_sent(request, stocked, session, smtp_server,
                                                 taken_back, lease):
    """The sweeper re-queued one mail of a batch in progress (and maybe another worker re-took
    it): the batch must skip it rather than send it a second time, whether it checks the
    message alone (a fresh lease) or renews the lease of all it has left."""
    app = request.getfixturevalue("app" if lease == "fresh" else "slow_batch")
    victim = stocked[3]
    real_send_all = transport.SmtpPool.send_all

    def send_all(pool, outgoing, ledger):
        session.rollback()
        took_back = {"status": "queued"} if taken_back == "requeued" else {
            "status": "sending", "attempts": OutboundEmail.attempts + 1}
        session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == victim)
                        .values(**took_back))
        session.commit()
        real_send_all(pool, outgoing, ledger)

    with app.app_context():
        transport.SmtpPool.send_all = send_all
        try:
            outcome = mail.send_batch(get_session(), outbound_ids=stocked)
        finally:
            transport.SmtpPool.send_all = real_send_all
    assert victim not in outcome.sent and len(outcome.sent) == 19
    assert len(smtp_server.messages) == 19


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


def test_outbox_batches_write_one_file_per_mail(app_config, factory, session, tmp_path):
    app_config["SMTP_HOST"] = ""
    app = create_app(app_config)
    from tests.conftest import Factory

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


def _outbound_updates(app):
    """The statements that write outboundemail while the block runs."""
    engine = app.extensions["db_engine"]
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        if "UPDATE OUTBOUNDEMAIL" in statement.upper():
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", count)


def _leases(session, ids):
    session.rollback()
    return session.exec(select(OutboundEmail.sending_started_at)
                        .where(OutboundEmail.id.in_(ids))
                        .execution_options(populate_existing=True)).all()


@pytest.mark.parametrize(("lease", "writes", "leases"), [
    # A healthy batch: the take's lease lasts it; the take, then one record a message (on
    # PostgreSQL the same statement reads whether the next message is still ours).
    ("fresh", 1 + 20, 1),
    # A batch whose lease grew old: before each message a renewal for the rest of the batch,
    # so each message's lease was renewed last just before it went.
    ("renewed", 1 + 20 + 20, 20),
])
def test_the_writes_a_batch_costs(request, stocked, session, smtp_server, lease, writes,
                                  leases):
    app = request.getfixturevalue("app" if lease == "fresh" else "slow_batch")
    seen, stop = _outbound_updates(app)
    try:
        with app.app_context():
            outcome = mail.send_batch(get_session(), outbound_ids=stocked)
    finally:
        stop()
    assert len(outcome.sent) == 20
    assert len(seen) == writes
    assert len(set(_leases(session, stocked))) == leases
