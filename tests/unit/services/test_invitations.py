"""Invitations and reminders (``services/invitations.py``): each creator on a program's list who
has not claimed is invited once, however often or however interrupted the run; the reminder
goes once, after INVITE_REMINDER_DAYS, to those who still have not claimed nor opted out; the
mails are the outbox's, and arrive with a working sign-in link and a one-click opt-out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import csrf_token, sign_in_link, text_body
from wellness_perks import dispatch
from wellness_perks.db import get_session
from wellness_perks.models import (
    AuditEvent,
    Claim,
    Creator,
    Invitation,
    MailStatus,
    OutboundEmail,
)
from wellness_perks.services import (
    audit,
    claims,
    creators,
    invitations,
    mail,
    privacy,
    sweeper,
    tokens,
)

EMAILS = ["ayesha@example.com", "bilal@example.com", "chand@example.com", "dua@example.com",
          "ehsan@example.com"]


@pytest.fixture
def program(factory):
    program = factory.program()
    factory.creators(program, EMAILS)
    return program


def _ids(session) -> dict[str, int]:
    found = dict(session.exec(select(Creator.email, Creator.id)).all())
    session.rollback()
    return found


def _invite(app, program, **kwargs):
    with app.app_context():
        return invitations.send_invitations(get_session(), program_id=program.id, actor="test",
                                            **kwargs)


def _remind(app, program, **kwargs):
    with app.app_context():
        return invitations.send_reminders(get_session(), program_id=program.id, actor="test",
                                          **kwargs)


def _mails(session, kind: str) -> list[OutboundEmail]:
    found = list(session.exec(select(OutboundEmail).where(OutboundEmail.kind == kind)
                              .order_by(OutboundEmail.id)).all())
    session.rollback()
    return found


def _age_invitations(session, days: float) -> None:
    session.execute(sa.update(Invitation).values(
        invited_at=datetime.now(UTC) - timedelta(days=days)))
    session.commit()


def test_every_eligible_creator_is_invited_once_and_the_mails_arrive(app, program, session,
                                                                     smtp_server):
    outcome = _invite(app, program, chunk=2)  # three chunks
    assert outcome.queued == len(EMAILS)
    for address in EMAILS:
        [message] = smtp_server.wait_for_mail(address, "invited")
        assert program.name in message["Subject"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Unsubscribe"].startswith("<http://localhost/opt-out/")
    rows = session.exec(select(Invitation)).all()
    assert sorted(r.creator_id for r in rows) == sorted(_ids(session).values())
    assert {m.status for m in _mails(session, "invitation")} == {MailStatus.sent}
    assert {m.program_id for m in _mails(session, "invitation")} == {program.id}


def test_the_invitations_sign_in_link_signs_in_and_lands_on_the_program(app, client, program,
                                                                         smtp_server):
    _invite(app, program)
    [message] = smtp_server.wait_for_mail("ayesha@example.com", "invited")
    link = sign_in_link(message)
    assert f"/login/{link.rsplit('/login/', 1)[1]}?next=/programs/{program.slug}" in (
        text_body(message))
    # An invitation's link lives days (INVITE_LINK_MAX_AGE), which a sign-in link does not.
    assert "The link works once, for 7 days." in text_body(message)
    with app.app_context():
        tokens.parse_invitation_token(link.rsplit("/login/", 1)[1], max_age=3600)
    path = link.replace("http://localhost", "") + f"?next=/programs/{program.slug}"
    page = client.get(path)
    # The confirm page carries the landing in its form, as a browser posts it.
    landing = re.search(r'name="next"[^>]*value="([^"]*)"', page.text).group(1)
    assert landing == f"/programs/{program.slug}"
    response = client.post(path, data={"csrf_token": csrf_token(page.text), "next": landing})
    assert response.status_code == 302
    assert response.headers["Location"] == f"/programs/{program.slug}"
    assert client.get(f"/programs/{program.slug}").status_code == 200


def test_a_second_run_invites_nobody_again(app, program, session, smtp_server):
    assert _invite(app, program).queued == len(EMAILS)
    assert _invite(app, program).queued == 0
    assert len(_mails(session, "invitation")) == len(EMAILS)
    for address in EMAILS:
        assert len(smtp_server.wait_for_mail(address, "invited")) == 1


def test_a_run_stopped_after_a_chunk_goes_on_where_it_stopped(app, program, session,
                                                              smtp_server, monkeypatch):
    """The worker dies right after a chunk's commit (its mails owed, not yet handed to the
    workers): started again, the run invites only the others; the sweeper sends the rest."""
    real = dispatch.send_emails

    def killed(ids):
        raise SystemExit("worker killed")

    monkeypatch.setattr(dispatch, "send_emails", killed)
    with pytest.raises(SystemExit):
        _invite(app, program, chunk=2)
    assert len(session.exec(select(Invitation)).all()) == 2
    session.rollback()
    monkeypatch.setattr(dispatch, "send_emails", real)
    assert _invite(app, program, chunk=2).queued == len(EMAILS) - 2
    mails = _mails(session, "invitation")
    assert len(mails) == len(EMAILS)
    assert len({m.creator_id for m in mails}) == len(EMAILS)
    # The first chunk's mails, never handed to the workers, are the sweeper's.
    assert sum(m.status == MailStatus.queued for m in mails) == 2
    with app.app_context():
        later = datetime.now(UTC) + timedelta(seconds=app.config["SWEEP_PENDING_AFTER_SECONDS"])
        sweeper.sweep(get_session(), now=later + timedelta(seconds=1))
    for address in EMAILS:
        assert len(smtp_server.wait_for_mail(address, "invited")) == 1
    assert {m.status for m in _mails(session, "invitation")} == {MailStatus.sent}


def test_a_chunk_that_fails_before_its_commit_leaves_nothing_behind(app, program, session,
                                                                    monkeypatch):
    real, calls = audit.record, []

    def fails_second_time(where, *events):
        calls.append(events)
        if len(calls) == 2:
            raise RuntimeError("the worker dies mid-chunk")
        return real(where, *events)

    monkeypatch.setattr(audit, "record", fails_second_time)
    with pytest.raises(RuntimeError):
        _invite(app, program, chunk=2)
    assert len(session.exec(select(Invitation)).all()) == 2
    assert len(_mails(session, "invitation")) == 2  # the second chunk's mails went with it
    monkeypatch.setattr(audit, "record", real)
    assert _invite(app, program, chunk=2).queued == len(EMAILS) - 2
    assert len(_mails(session, "invitation")) == len(EMAILS)


def test_a_support_case_shows_the_creators_invitation(app, program, session):
    _invite(app, program)
    with app.app_context():
        case = creators.creator_case(get_session(), program_id=program.id,
                                     email="ayesha@example.com")
    assert [(m["kind"], m["status"]) for m in case["mails"]] == [("invitation", "sent")]


def test_the_database_refuses_a_second_invitation_of_one_creator(app, program, session):
    _invite(app, program)
    first = session.exec(select(Invitation)).first()
    session.add(Invitation(program_id=first.program_id, creator_id=first.creator_id,
                           invited_at=datetime.now(UTC),
                           invitation_mail_id=first.invitation_mail_id))
    with pytest.raises(sa.exc.IntegrityError):
        session.commit()
    session.rollback()
    with pytest.raises(sa.exc.IntegrityError):  # a reminder slot filled without its mail
        session.execute(sa.update(Invitation).where(Invitation.id == first.id)
                        .values(reminded_at=datetime.now(UTC)))
        session.commit()
    session.rollback()


def test_creators_who_claimed_or_were_forgotten_are_not_invited(app, program, session,
                                                                smtp_server):
    ids = _ids(session)
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=ids["ayesha@example.com"])
        privacy.forget_creator(get_session(), email="bilal@example.com", actor="test")
    outcome = _invite(app, program)
    assert outcome.queued == len(EMAILS) - 2
    invited = {r.creator_id for r in session.exec(select(Invitation)).all()}
    assert ids["ayesha@example.com"] not in invited and ids["bilal@example.com"] not in invited
    smtp_server.wait_for_mail("chand@example.com", "invited")
    assert smtp_server.to("ayesha@example.com", "invited") == []


def test_an_invitation_owed_to_someone_who_claims_before_it_goes_is_cancelled(
        app, program, session, smtp_server, monkeypatch):
    monkeypatch.setattr(dispatch, "send_emails", lambda ids: None)  # the mails wait in the queue
    _invite(app, program)
    ids = _ids(session)
    monkeypatch.undo()
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=ids["ayesha@example.com"])
        mail.send_batch(get_session(), outbound_ids=[m.id for m in _mails(session, "invitation")])
    by_creator = {m.creator_id: m for m in _mails(session, "invitation")}
    assert by_creator[ids["ayesha@example.com"]].status == MailStatus.cancelled
    assert by_creator[ids["ayesha@example.com"]].last_error == "no_longer_wanted"
    assert by_creator[ids["bilal@example.com"]].status == MailStatus.sent
    assert smtp_server.to("ayesha@example.com", "invited") == []


def test_an_invitation_owed_to_someone_who_opts_out_before_it_goes_is_cancelled(
        app, program, session, smtp_server, monkeypatch):
    """Their reminder was owed; they opt out through the invitation's link meanwhile."""
    _invite(app, program)
    _age_invitations(session, 3)
    ids = _ids(session)
    monkeypatch.setattr(dispatch, "send_emails", lambda ids: None)  # the mails wait in the queue
    _remind(app, program)
    monkeypatch.undo()
    with app.app_context():
        token = tokens.mint_opt_out_token(creator_id=ids["ayesha@example.com"],
                                          program_id=program.id)
        invitations.opt_out(get_session(), token=token)
        mail.send_batch(get_session(), outbound_ids=[m.id for m in _mails(session, "reminder")])
    by_creator = {m.creator_id: m for m in _mails(session, "reminder")}
    assert by_creator[ids["ayesha@example.com"]].status == MailStatus.cancelled
    assert by_creator[ids["bilal@example.com"]].status == MailStatus.sent
    assert smtp_server.to("ayesha@example.com", "Reminder") == []


def test_failed_invitations_are_sent_again_unless_their_creator_claimed_or_opted_out(
        app, program, session, smtp_server):
    """``resend-failed`` (the same service the console's one click calls) sends a program's
    failed invitations and reminders again, audited; one to a creator who has claimed, opted
    out or been taken off the list since is cancelled (``no_longer_wanted``), as a send would,
    never sent."""
    _invite(app, program)
    _age_invitations(session, 3)
    smtp_server.refuse_with = "550 5.7.1 relay refused for now"
    _remind(app, program)  # every reminder fails for good
    smtp_server.refuse_with = None
    reminders = {m.creator_id: m.id for m in _mails(session, "reminder")}
    assert {m.status for m in _mails(session, "reminder")} == {MailStatus.failed}
    ids = _ids(session)
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=ids["ayesha@example.com"])
        invitations.opt_out(get_session(), token=tokens.mint_opt_out_token(
            creator_id=ids["bilal@example.com"], program_id=program.id))
        creators.remove_from_list(get_session(), program_id=program.id,
                                  email="dua@example.com", reason="left", actor="test")
        resent = mail.resend_failed(get_session(), program_id=program.id, actor="cli")
        again = mail.resend_failed(get_session(), program_id=program.id, actor="cli")
    unwanted = [reminders[ids[e]]
                for e in ("ayesha@example.com", "bilal@example.com", "dua@example.com")]
    wanted = sorted(set(reminders.values()) - set(unwanted))
    assert (resent.mail_ids, sorted(resent.cancelled)) == (wanted, sorted(unwanted))
    assert (again.mail_ids, again.cancelled) == ([], [])
    by_id = {m.id: m for m in _mails(session, "reminder")}
    assert {(by_id[i].status, by_id[i].last_error) for i in unwanted} == {
        (MailStatus.cancelled, "no_longer_wanted")}
    assert {by_id[i].status for i in wanted} == {MailStatus.sent}
    assert smtp_server.to("ayesha@example.com", "Reminder") == []
    assert smtp_server.to("bilal@example.com", "Reminder") == []
    assert smtp_server.to("dua@example.com", "Reminder") == []
    assert len(smtp_server.to("chand@example.com", "Reminder")) == 1
    events = session.exec(select(AuditEvent).where(AuditEvent.action == "mail.resent")).all()
    assert sorted((e.actor, e.program_id, e.object_id) for e in events) == [
        ("cli", program.id, i) for i in wanted]


def test_an_invitation_owed_to_someone_taken_off_the_list_since_is_not_sent(
        app, program, session, smtp_server, monkeypatch):
    """Invitations are owed in a run and sent later (the rate limit spreads them): one whose
    creator was taken off the list meanwhile is cancelled at send time, never sent."""
    from wellness_perks import dispatch

    held: list[int] = []
    monkeypatch.setattr(dispatch, "send_emails", held.extend)  # owed, not sent yet
    _invite(app, program)
    monkeypatch.undo()
    with app.app_context():
        creators.remove_from_list(get_session(), program_id=program.id,
                                  email="ayesha@example.com", reason="left", actor="test")
        mail.send_batch(get_session(), outbound_ids=sorted(held))
    ayesha = _ids(session)["ayesha@example.com"]
    statuses = {m.creator_id: (m.status, m.last_error) for m in _mails(session, "invitation")}
    assert statuses.pop(ayesha) == (MailStatus.cancelled, "no_longer_wanted")
    assert {status for status, _error in statuses.values()} == {MailStatus.sent}
    assert smtp_server.to("ayesha@example.com", "") == []


def test_no_reminder_to_someone_taken_off_the_list(app, program, session):
    _invite(app, program)
    _age_invitations(session, 3)
    with app.app_context():
        creators.remove_from_list(get_session(), program_id=program.id,
                                  email="ayesha@example.com", reason="left", actor="test")
    assert _remind(app, program).queued == len(EMAILS) - 1
    ids = _ids(session)
    assert ids["ayesha@example.com"] not in {m.creator_id for m in _mails(session, "reminder")}


def test_no_invitation_once_the_window_has_closed(app, factory, session):
    program = factory.program(slug="closed", opens_at=datetime.now(UTC) - timedelta(days=3),
                              closes_at=datetime.now(UTC) - timedelta(days=1))
    factory.creators(program, ["ayesha@example.com"])
    with pytest.raises(invitations.InvitationsClosed):
        _invite(app, program)
    assert session.exec(select(Invitation)).all() == []


# --------------------------------------------------------------------------- reminders


def test_no_reminder_before_its_days_have_passed(app, program, session):
    _invite(app, program)
    _age_invitations(session, 2.9)
    assert app.config["INVITE_REMINDER_DAYS"] == 3
    assert _remind(app, program).queued == 0
    assert _remind(app, program, after_days=2).queued == len(EMAILS)


def test_a_reminder_goes_once_to_those_who_have_not_claimed_nor_opted_out(
        app, program, session, smtp_server):
    _invite(app, program)
    ids = _ids(session)
    _age_invitations(session, 3)
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=ids["ayesha@example.com"])
    session.execute(sa.update(Invitation).where(Invitation.creator_id == ids["bilal@example.com"])
                    .values(opted_out_at=datetime.now(UTC)))
    session.commit()
    assert _remind(app, program).queued == len(EMAILS) - 2
    assert _remind(app, program).queued == 0  # never twice
    reminded = {m.creator_id for m in _mails(session, "reminder")}
    assert reminded == {ids[e] for e in EMAILS[2:]}
    [message] = smtp_server.wait_for_mail("chand@example.com", "Reminder")
    assert "still waiting" in text_body(message) and sign_in_link(message)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert smtp_server.to("bilal@example.com", "Reminder") == []
    rows = {r.creator_id: r for r in session.exec(select(Invitation)).all()}
    assert rows[ids["chand@example.com"]].reminder_mail_id is not None
    assert rows[ids["ayesha@example.com"]].reminded_at is None


def test_a_negative_reminder_delay_is_refused(app, program):
    with pytest.raises(invitations.InvalidInput):
        _remind(app, program, after_days=-1)


# --------------------------------------------------------------------------- opting out


def test_opting_out_is_recorded_once_and_stops_the_reminder(app, program, session, smtp_server):
    _invite(app, program)
    [message] = smtp_server.wait_for_mail("ayesha@example.com", "invited")
    token = message["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    with app.app_context():
        link = invitations.inspect_opt_out(get_session(), token=token)
        assert (link.program_name, link.masked_email, link.opted_out) == (
            program.name, "a***@example.com", False)
        assert invitations.opt_out(get_session(), token=token).opted_out
        invitations.opt_out(get_session(), token=token)  # again: nothing more
    events = session.exec(select(AuditEvent).where(AuditEvent.action == "creator.opted_out")).all()
    assert len(events) == 1 and events[0].actor.startswith("creator:")
    _age_invitations(session, 5)
    assert _remind(app, program).queued == len(EMAILS) - 1


@pytest.mark.parametrize("token", ["", "not-a-token", "eyJjIjo3LCJwIjozfQ.forged", "x" * 2000])
def test_a_bad_opt_out_token_is_refused(app, program, token):
    with app.app_context(), pytest.raises(invitations.OptOutLinkInvalid):
        invitations.opt_out(get_session(), token=token)


def test_a_signed_opt_out_token_naming_no_invitation_is_refused(app, program):
    with app.app_context():
        token = tokens.mint_opt_out_token(creator_id=1, program_id=program.id)
        with pytest.raises(invitations.OptOutLinkInvalid):
            invitations.inspect_opt_out(get_session(), token=token)


# --------------------------------------------------------------------------- counts


def _sql(session, text: str, program_id: int) -> int:
    value = session.execute(sa.text(text), {"p": program_id}).scalar_one()
    session.rollback()
    return value


def test_the_counts_are_the_databases(app, program, session):
    ids = _ids(session)
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=ids["ayesha@example.com"])
    _invite(app, program)
    session.execute(sa.update(Invitation).where(Invitation.creator_id == ids["bilal@example.com"])
                    .values(opted_out_at=datetime.now(UTC)))
    session.commit()
    _age_invitations(session, 4)
    _remind(app, program, after_days=4)
    with app.app_context():
        found = invitations.counts(get_session(), program_id=program.id)
    p = program.id
    assert found.eligible == _sql(session, "SELECT count(*) FROM eligibility "
                                  "WHERE program_id = :p", p) == len(EMAILS)
    assert found.claimed == _sql(session, "SELECT count(*) FROM claim WHERE program_id = :p",
                                 p) == 1
    assert found.invited == _sql(session, "SELECT count(*) FROM invitation "
                                 "WHERE program_id = :p", p) == len(EMAILS) - 1
    assert found.reminded == _sql(session, "SELECT count(*) FROM invitation WHERE program_id = "
                                  ":p AND reminded_at IS NOT NULL", p) == len(EMAILS) - 2
    assert found.opted_out == _sql(session, "SELECT count(*) FROM invitation WHERE program_id "
                                   "= :p AND opted_out_at IS NOT NULL", p) == 1
    assert found.waiting == 0 and found.reminders_due == 0
    assert found.mails["invitation"]["sent"] == _sql(
        session, "SELECT count(*) FROM outboundemail WHERE kind = 'invitation' AND "
        "status = 'sent' AND program_id = :p", p) == len(EMAILS) - 1
    assert found.mails["reminder"]["sent"] == len(EMAILS) - 2 and not found.sending
    assert session.exec(select(Claim)).first() is not None
