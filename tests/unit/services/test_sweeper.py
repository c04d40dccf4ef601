"""The sweeper finds work whose task was lost: claims pending too long, a waitlist that could
be served, mails due or interrupted; and hands it out once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import redemption_code
from tests.unit.services.scenarios import LONG_AGO, lost_claims
from wellness_perks.db import get_session
from wellness_perks.models import Claim, OutboundEmail
from wellness_perks.services import sweeper
from wellness_perks.services.verify import verify_program

NO_IMPORTS = {"imports": [], "interrupted_imports": [], "failed_imports": []}


def test_claims_pending_too_long_are_allocated(app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com", "c@example.com"])
    factory.codes(program, ["HS-A1-0001", "HS-A2-0002"])
    lost_claims(session, program, ["a@example.com", "b@example.com", "c@example.com"])
    with app.app_context():
        report = sweeper.sweep(get_session())
        assert verify_program(get_session(), program_id=program.id) == []
    assert report.programs == [program.id]
    session.rollback()
    assert session.exec(select(Claim.state).order_by(Claim.id)).all() == [
        "allocated", "allocated", "waitlisted"]
    assert redemption_code(smtp_server.to("a@example.com")[0]) == "HS-A1-0001"


def test_fresh_pending_claims_are_left_to_their_task(app, factory, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-A1-0001"])
    lost_claims(session, program, ["a@example.com"], requested_at=datetime.now(UTC))
    with app.app_context():
        assert sweeper.sweep(get_session()).programs == []
    session.rollback()
    assert session.exec(select(Claim.state)).one() == "pending"


def test_servable_waitlist_is_served_when_a_trigger_was_missed(app, factory, session,
                                                              smtp_server):
    program = factory.program(quota=1)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-A1-0001"])
    lost_claims(session, program, ["a@example.com"], requested_at=datetime.now(UTC))
    session.execute(sa.update(Claim).values(state="waitlisted", reason="quota_reached"))
    session.commit()
    with app.app_context():
        assert sweeper.sweep(get_session()).programs == [program.id]
    session.rollback()
    assert session.exec(select(Claim.state)).one() == "allocated"


def test_due_and_interrupted_mails_are_sent_once(app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com"])
    factory.codes(program, ["HS-A1-0001", "HS-A2-0002"])
    smtp_server.refuse_with = "451 later"
    lost_claims(session, program, ["a@example.com", "b@example.com"])
    with app.app_context():
        sweeper.sweep(get_session())  # allocates; both mails refused, retries scheduled
    session.rollback()
    first, second = session.exec(select(OutboundEmail).order_by(OutboundEmail.id)).all()
    assert (first.status, first.attempts) == ("queued", 1)
    # The first one's retry message was lost; the second's worker died mid-attempt.
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == first.id)
                    .values(next_attempt_at=LONG_AGO))
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == second.id)
                    .values(status="sending", sending_started_at=LONG_AGO))
    session.commit()
    smtp_server.refuse_with = None
    with app.app_context():
        report = sweeper.sweep(get_session())
        again = sweeper.sweep(get_session())
    assert (report.mails, report.interrupted_mails) == ([first.id, second.id], [second.id])
    assert (again.mails, again.interrupted_mails) == ([], [])
    assert len(smtp_server.to("a@example.com")) == len(smtp_server.to("b@example.com")) == 1
    rows = session.exec(select(OutboundEmail).order_by(OutboundEmail.id)
                        .execution_options(populate_existing=True)).all()
    assert [(r.status, r.attempts) for r in rows] == [("sent", 2), ("sent", 2)]


def test_mails_still_being_sent_or_waiting_out_their_backoff_are_left_alone(
        app, factory, session, smtp_server):
    """A mail in ``sending`` whose lease is fresh is in a live attempt: taking it back would
    send it twice. A queued mail whose retry is not due yet waits out its backoff."""
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com", "c@example.com"])
    factory.codes(program, ["HS-A1-0001", "HS-A2-0002", "HS-A3-0003"])
    smtp_server.refuse_with = "451 later"
    lost_claims(session, program, ["a@example.com", "b@example.com", "c@example.com"])
    with app.app_context():
        sweeper.sweep(get_session())  # allocates; every first attempt refused
    session.rollback()
    sending, backing_off, due = session.exec(select(OutboundEmail).order_by(OutboundEmail.id)
                                             ).all()
    timeout = app.config["MAIL_SENDING_TIMEOUT_SECONDS"]
    now = datetime.now(UTC)
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == sending.id).values(
        status="sending", sending_started_at=now - timedelta(seconds=timeout / 2)))
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == backing_off.id).values(
        next_attempt_at=now + timedelta(minutes=5), created_at=now - timedelta(days=1)))
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == due.id).values(
        next_attempt_at=now - timedelta(seconds=1)))
    session.commit()
    smtp_server.refuse_with = None
    with app.app_context():
        report = sweeper.sweep(get_session(), now=now)
    assert (report.mails, report.interrupted_mails) == ([due.id], [])
    rows = {r.id: r for r in session.exec(select(OutboundEmail).execution_options(
        populate_existing=True)).all()}
    assert (rows[sending.id].status, rows[sending.id].attempts) == ("sending", 1)
    assert (rows[backing_off.id].status, rows[backing_off.id].attempts) == ("queued", 1)
    assert rows[due.id].status == "sent"
    assert smtp_server.to("a@example.com") == smtp_server.to("b@example.com") == []


def test_of_a_batch_cut_off_only_the_message_that_may_have_been_in_flight_is_possibly_sent(
        app, factory, session, smtp_server):
    """Two batches whose worker died: each batch's messages share their lease and go out in id
    order, each recorded before the next, so only the first left of each may have reached the
    SMTP server. That one is marked possibly sent (and kept so once sent again); the others
    are just queued again. All are sent."""
    emails = [f"c{i}@example.com" for i in range(5)]
    program = factory.program(quota=10)
    factory.creators(program, emails)
    factory.codes(program, [f"HS-A{i}-000{i}" for i in range(5)])
    smtp_server.refuse_with = "451 later"
    lost_claims(session, program, emails)
    with app.app_context():
        sweeper.sweep(get_session())  # allocates; every first attempt refused
    session.rollback()
    ids = session.exec(select(OutboundEmail.id).order_by(OutboundEmail.id)).all()
    first_batch, second_batch = ids[:3], ids[3:]
    for batch, lease in ((first_batch, LONG_AGO), (second_batch, LONG_AGO + timedelta(seconds=1))):
        session.execute(sa.update(OutboundEmail).where(OutboundEmail.id.in_(batch))
                        .values(status="sending", sending_started_at=lease))
    session.commit()
    smtp_server.refuse_with = None
    with app.app_context():
        report = sweeper.sweep(get_session())
    assert report.interrupted_mails == ids
    assert report.possibly_sent == [first_batch[0], second_batch[0]]
    rows = session.exec(select(OutboundEmail).order_by(OutboundEmail.id)
                        .execution_options(populate_existing=True)).all()
    assert [r.status for r in rows] == ["sent"] * 5
    assert [r.possibly_sent_at is not None for r in rows] == [True, False, False, True, False]


def test_only_a_program_with_room_stock_and_a_waitlist_is_servable(app, factory, session,
                                                                   smtp_server):
    """Once allocation has decided every claim, the sweeper leaves alone a program that is
    full, one out of codes and one nobody waits for."""
    full = factory.program(slug="full", quota=1)
    factory.creators(full, ["full-a@example.com", "full-b@example.com"])
    factory.codes(full, ["HS-F1-0001", "HS-F2-0002"])
    dry = factory.program(slug="dry", quota=2)
    factory.creators(dry, ["dry-a@example.com", "dry-b@example.com"])
    factory.codes(dry, ["HS-D1-0001"])
    served = factory.program(slug="served", quota=10)
    factory.creators(served, ["served-a@example.com"])
    factory.codes(served, ["HS-S1-0001", "HS-S2-0002"])
    for program in (full, dry, served):
        lost_claims(session, program, [e for e in (f"{program.slug}-a@example.com",
                                                    f"{program.slug}-b@example.com")])
    with app.app_context():
        assert sweeper.sweep(get_session()).programs == [full.id, dry.id, served.id]
        assert sweeper.sweep(get_session()).programs == []
    session.rollback()
    assert session.exec(select(Claim.state, Claim.reason).order_by(Claim.id)).all() == [
        ("allocated", None), ("waitlisted", "quota_reached"),
        ("allocated", None), ("waitlisted", "out_of_stock"),
        ("allocated", None)]


def test_the_sweepers_thresholds_count_to_the_second(app, factory, session, smtp_server):
    """A claim pending SWEEP_PENDING_AFTER_SECONDS, a mail queued as long with no retry time,
    an attempt MAIL_SENDING_TIMEOUT_SECONDS old are not lost yet; a second more and they are.
    A retry is due at its time."""
    program = factory.program(quota=10)
    emails = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    factory.creators(program, emails)
    factory.codes(program, ["HS-A1-0001", "HS-A2-0002", "HS-A3-0003"])
    smtp_server.refuse_with = "451 later"
    lost_claims(session, program, emails[:3])
    with app.app_context():
        sweeper.sweep(get_session())  # allocates; every first attempt refused
    session.rollback()
    never_tried, retry, sending = (m.id for m in session.exec(
        select(OutboundEmail).order_by(OutboundEmail.id)).all())
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    pending_after = timedelta(seconds=app.config["SWEEP_PENDING_AFTER_SECONDS"])
    timeout = timedelta(seconds=app.config["MAIL_SENDING_TIMEOUT_SECONDS"])
    lost_claims(session, program, ["d@example.com"], requested_at=t)
    for outbound_id, values in (
            (never_tried, {"next_attempt_at": None, "created_at": t}),
            (retry, {"next_attempt_at": t + pending_after}),
            (sending, {"status": "sending", "sending_started_at": t + pending_after - timeout})):
        session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == outbound_id)
                        .values(**values))
    session.commit()
    second = timedelta(seconds=1)
    with app.app_context():
        report = sweeper.sweep(get_session(), now=t + pending_after)
        assert report.as_dict() == {"programs": [], "mails": [retry], "interrupted_mails": [],
                                    "possibly_sent": [], **NO_IMPORTS}
    smtp_server.refuse_with = None
    with app.app_context():
        report = sweeper.sweep(get_session(), now=t + pending_after + second)
    assert report.as_dict() == {"programs": [program.id], "mails": [never_tried, sending],
                                "interrupted_mails": [sending], "possibly_sent": [sending],
                                **NO_IMPORTS}
    # What is sent, or waits out its backoff, is neither due nor interrupted, however old.
    session.execute(sa.update(OutboundEmail).values(created_at=t - timedelta(days=1),
                                                    sending_started_at=t - timedelta(days=1)))
    session.commit()
    with app.app_context():
        report = sweeper.sweep(get_session(), now=t + pending_after + 2 * second)
    assert report.as_dict() == {"programs": [], "mails": [], "interrupted_mails": [],
                                "possibly_sent": [], **NO_IMPORTS}
    session.rollback()
    assert sorted(session.exec(select(OutboundEmail.status)).all()) == ["queued", "sent", "sent"]


def test_an_interrupted_attempt_goes_back_to_the_queue_due_now_and_says_so(
        app, factory, session, smtp_server, monkeypatch):
    """What the sweeper writes, before any worker sends the mail again."""
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-A1-0001"])
    lost_claims(session, program, ["a@example.com"])
    with app.app_context():
        sweeper.sweep(get_session())
    session.rollback()
    mail = session.exec(select(OutboundEmail)).one()
    session.execute(sa.update(OutboundEmail).values(status="sending", sent_at=None,
                                                    sending_started_at=LONG_AGO))
    session.commit()
    handed_out: list[int] = []
    monkeypatch.setattr("wellness_perks.dispatch.send_emails", handed_out.extend)
    now = datetime.now(UTC)
    with app.app_context():
        report = sweeper.sweep(get_session(), now=now)
    assert (report.interrupted_mails, report.mails, handed_out) == ([mail.id], [mail.id],
                                                                    [mail.id])
    row = session.exec(select(OutboundEmail).execution_options(populate_existing=True)).one()
    assert (row.status, row.next_attempt_at, row.last_error) == ("queued", now, "interrupted")
