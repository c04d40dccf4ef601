"""The sweeper finds work whose task was lost, and /healthz tells what answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import redemption_code
from wellness_perks import create_app
from wellness_perks.db import get_session
from wellness_perks.models import Claim, Creator, OutboundEmail
from wellness_perks.services import sweeper
from wellness_perks.services.verify import verify_program

LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


def _lost_claims(session, program, emails, requested_at=LONG_AGO):
    """Claims stored whose allocation task never ran (broker down, message lost)."""
    creators = session.exec(select(Creator).where(Creator.email.in_(emails))
                            .order_by(Creator.email)).all()
    session.add_all(Claim(program_id=program.id, creator_id=c.id, country=c.country,
                          requested_at=requested_at) for c in creators)
    session.commit()


def test_claims_pending_too_long_are_allocated(app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com", "c@example.com"])
    factory.codes(program, ["HS-A1-0001", "HS-A2-0002"])
    _lost_claims(session, program, ["a@example.com", "b@example.com", "c@example.com"])
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
    _lost_claims(session, program, ["a@example.com"], requested_at=datetime.now(UTC))
    with app.app_context():
        assert sweeper.sweep(get_session()).programs == []
    session.rollback()
    assert session.exec(select(Claim.state)).one() == "pending"


def test_servable_waitlist_is_served_when_a_trigger_was_missed(app, factory, session,
                                                              smtp_server):
    program = factory.program(quota=1)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-A1-0001"])
    _lost_claims(session, program, ["a@example.com"], requested_at=datetime.now(UTC))
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
    _lost_claims(session, program, ["a@example.com", "b@example.com"])
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


def test_sweep_command(runner, app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-A1-0001"])
    _lost_claims(session, program, ["a@example.com"])
    result = runner.invoke(args=["sweep"])
    assert result.exit_code == 0, result.output
    assert "programs re-allocated: 1" in result.output
    result = runner.invoke(args=["verify", program.slug])
    assert result.exit_code == 0 and "I1-I5 hold" in result.output


def test_verify_command_exits_non_zero_on_violation(runner, app, factory, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    _lost_claims(session, program, ["a@example.com"])
    result = runner.invoke(args=["verify", program.slug])
    assert result.exit_code == 1
    assert "I4: pending since" in result.output and "1 violation" in result.output
    result = runner.invoke(args=["verify", program.slug, "--json"])
    assert result.exit_code == 1 and '"invariant": "I4"' in result.output


def test_healthz_answers_when_the_database_does(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["broker"].startswith("not configured")


def test_healthz_names_what_failed(app_config):
    app_config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    app = create_app(app_config)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["status"] == "error"
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["broker"].startswith("error")
    app.extensions["db_engine"].dispose()

