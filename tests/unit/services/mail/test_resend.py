"""Sending a creator's code mail again on a manager's request (``resend_claim_mail``): the
same outbox row queued again, throttled per claim, refused when there is no code to mail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import redemption_code
from tests.unit.services.test_verify import healthy_program
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, OutboundEmail
from wellness_perks.services import mail, privacy
from wellness_perks.services.errors import Conflict, NoCodeHeld, ResendTooSoon
from wellness_perks.services.mail import queue
from wellness_perks.services.verify import verify_program


@pytest.fixture
def healthy(app, factory, session, smtp_server):
    return healthy_program(app, factory, session, smtp_server)


def _resend(app, program_id, email, **options):
    with app.app_context():
        return mail.resend_claim_mail(get_session(), program_id=program_id, creator_email=email,
                                      actor="manager:1", **options)


def _queued_long_ago(session, minutes=11):
    """Every mail as if it had been owed ``minutes`` earlier (the throttle passed)."""
    session.rollback()
    for mail_id, created_at in session.exec(select(OutboundEmail.id, OutboundEmail.created_at)
                                            ).all():
        session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == mail_id)
                        .values(created_at=created_at - timedelta(minutes=minutes)))
    session.commit()


def _row(session, outbound_id):
    session.rollback()
    return session.get(OutboundEmail, outbound_id, populate_existing=True)


def _resent_events(session):
    session.rollback()
    return session.exec(select(AuditEvent).where(AuditEvent.action == queue.RESENT)
                        .order_by(AuditEvent.id)).all()


def _verified(app, program_id):
    with app.app_context():
        assert [str(v) for v in verify_program(get_session(), program_id=program_id)] == []


def _mails(session) -> int:
    session.rollback()
    return session.exec(select(sa.func.count()).select_from(OutboundEmail)).one()


def test_a_sent_code_mail_is_sent_again_as_a_new_message(app, healthy, session, smtp_server):
    first_sent_at = _row(session, healthy.mail["in1"]).sent_at
    mails_before = _mails(session)
    later = datetime.now(UTC) + timedelta(minutes=11)  # the throttle has passed
    outbound_id = _resend(app, healthy.program_id, "IN1@example.com", now=later)
    assert outbound_id == healthy.mail["in1"]
    [before, after] = smtp_server.wait_for_mail("in1@example.com", "code", count=2)
    assert redemption_code(before) == redemption_code(after)  # the same code, once more
    assert before["Message-ID"] != after["Message-ID"]  # a copy no mail system drops
    row = _row(session, outbound_id)
    assert (row.status, row.attempts) == ("sent", 1) and row.sent_at > first_sent_at
    [event] = _resent_events(session)
    assert (event.actor, event.object_id, event.program_id) == (
        "manager:1", outbound_id, healthy.program_id)
    assert json.loads(event.detail)["claim_id"] == healthy.claim["in1"]
    assert json.loads(event.detail)["status_before"] == "sent"
    assert _mails(session) == mails_before  # the same row, not a new one
    _verified(app, healthy.program_id)


def test_the_mail_sent_again_is_the_one_of_the_code_the_claim_holds(app, healthy, session,
                                                                    smtp_server):
    """After a reissue the claim holds the new code: its reissue mail goes, not the first."""
    _queued_long_ago(session)
    assert _resend(app, healthy.program_id, "pk1@example.com") == healthy.mail["pk1"]
    assert _row(session, healthy.mail["pk1"]).kind == "reissue"
    smtp_server.wait_for_mail("pk1@example.com", count=3)
    _verified(app, healthy.program_id)


def test_a_resend_is_throttled_per_claim(app, healthy, session, smtp_server):
    with pytest.raises(ResendTooSoon) as too_soon:  # its first mail was queued just now
        _resend(app, healthy.program_id, "in1@example.com")
    assert too_soon.value.params == {"claim_id": healthy.claim["in1"], "minutes": 10}
    _queued_long_ago(session)
    _resend(app, healthy.program_id, "in1@example.com")
    smtp_server.wait_for_mail("in1@example.com", "code", count=2)
    with pytest.raises(ResendTooSoon, match="try again in 10 minutes"):  # queued again just now
        _resend(app, healthy.program_id, "in1@example.com")
    later = datetime.now(UTC) + timedelta(minutes=9, seconds=30)
    with pytest.raises(ResendTooSoon, match="try again in 1 minute$"):
        _resend(app, healthy.program_id, "in1@example.com", now=later)
    _resend(app, healthy.program_id, "in1@example.com", now=later + timedelta(minutes=1))
    smtp_server.wait_for_mail("in1@example.com", "code", count=3)
    assert len(_resent_events(session)) == 2
    _verified(app, healthy.program_id)


def test_the_throttle_is_a_setting(app, healthy, session, smtp_server):
    app.config["RESEND_MIN_INTERVAL_MINUTES"] = 0
    _resend(app, healthy.program_id, "in1@example.com")
    smtp_server.wait_for_mail("in1@example.com", "code", count=2)


def test_a_failed_code_mail_is_queued_again_with_its_message_id(app, healthy, session,
                                                                smtp_server):
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == healthy.mail["in1"])
                    .values(status="failed", last_error="550 mailbox full"))
    session.commit()
    created = _row(session, healthy.mail["in1"]).created_at
    _resend(app, healthy.program_id, "in1@example.com",
            now=datetime.now(UTC) + timedelta(minutes=11))
    [first, again] = smtp_server.wait_for_mail("in1@example.com", "code", count=2)
    row = _row(session, healthy.mail["in1"])
    assert (row.status, row.last_error, row.created_at) == ("sent", None, created)
    assert first["Message-ID"] == again["Message-ID"]  # it never arrived: the same message
    # Its owed time stays: the throttle knows it was queued again from its audit event.
    with pytest.raises(ResendTooSoon, match="try again in 9 minutes"):
        _resend(app, healthy.program_id, "in1@example.com",
                now=datetime.now(UTC) + timedelta(minutes=12))
    _verified(app, healthy.program_id)


@pytest.mark.parametrize("name", ["pk3", "tardy", "late", "outsider"])
def test_no_resend_without_a_code_held(app, healthy, session, name):
    _queued_long_ago(session)
    with pytest.raises(NoCodeHeld, match=f"{name}@example.com holds no code"):
        _resend(app, healthy.program_id, f"{name}@example.com")
    assert _resent_events(session) == []


def test_no_resend_while_an_attempt_is_sending_it(app, healthy, session):
    _queued_long_ago(session)
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == healthy.mail["in1"])
                    .values(status="sending", sending_started_at=datetime.now(UTC)))
    session.commit()
    with pytest.raises(Conflict, match="being sent right now"):
        _resend(app, healthy.program_id, "in1@example.com")
    assert _row(session, healthy.mail["in1"]).status == "sending"
    assert _resent_events(session) == []


def test_no_resend_to_a_forgotten_creator(app, healthy, session):
    """Their address is gone: nobody is found by it any more."""
    _queued_long_ago(session)
    with app.app_context():
        privacy.forget_creator(get_session(), email="in1@example.com", actor="test")
    with pytest.raises(NoCodeHeld):
        _resend(app, healthy.program_id, "in1@example.com")
    assert _resent_events(session) == []
