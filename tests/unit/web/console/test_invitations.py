"""The invitations page at /manage/programs/<slug>/invitations: counts equal to the database's,
the progress of a send, and the buttons that send invitations and reminders (managers and
admins, with a CSRF token, audited); viewers read the counts; creators get 403."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import FOLLOW_SCRIPT, assert_followed_in_place, csrf_token, followed_block
from wellness_perks import dispatch
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Creator, Invitation, OutboundEmail
from wellness_perks.services import claims

SLUG = "headspace-6m"
PAGE = f"/manage/programs/{SLUG}/invitations"
EMAILS = ["ayesha@example.com", "bilal@example.com", "chand@example.com", "dua@example.com"]


@pytest.fixture
def program(factory):
    program = factory.program(slug=SLUG)
    factory.creators(program, EMAILS)
    return program


def _count(page: str, name: str) -> int:
    match = re.search(rf'id="{name}">.*?<td class="number">([\d,]+)</td>', page, re.S)
    assert match, f"no count {name} on the page"
    return int(match.group(1).replace(",", ""))


def _press(browser, kind: str):
    page = browser.get(PAGE)
    return browser.post(PAGE, data={"csrf_token": csrf_token(page.text), "kind": kind})


def _sql(session, text: str, program_id: int) -> int:
    value = session.execute(sa.text(text), {"p": program_id}).scalar_one()
    session.rollback()
    return value


def test_the_dashboard_links_the_page(manager_client, program):
    assert f'href="{PAGE}"' in manager_client("viewer").get(f"/manage/programs/{SLUG}").text


def test_a_manager_sends_the_invitations_and_they_arrive(manager_client, program, session,
                                                         smtp_server):
    browser = manager_client("manager")
    response = _press(browser, "invitation")
    assert response.status_code == 302 and response.headers["Location"] == PAGE
    for address in EMAILS:
        smtp_server.wait_for_mail(address, "invited")
    page = browser.get(PAGE).text
    assert "are on their way" in page
    assert _count(page, "count-invited") == len(EMAILS) and _count(page, "count-waiting") == 0
    events = session.exec(select(AuditEvent.action, AuditEvent.actor)
                          .where(AuditEvent.program_id == program.id)).all()
    actor = f"manager:{browser.manager_id}"
    assert ("program.invitations_requested", actor) in events
    assert ("program.invitations_queued", actor) in events
    assert _press(browser, "invitation").status_code == 302  # again: nobody twice
    assert len(session.exec(select(OutboundEmail)).all()) == len(EMAILS)


def test_the_counts_are_the_databases(manager_client, program, session, app):
    ids = dict(session.exec(select(Creator.email, Creator.id)).all())
    session.rollback()
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=ids["ayesha@example.com"])
    browser = manager_client("manager")
    _press(browser, "invitation")
    session.execute(sa.update(Invitation).where(Invitation.creator_id == ids["bilal@example.com"])
                    .values(opted_out_at=datetime.now(UTC)))
    session.execute(sa.update(Invitation).values(
        invited_at=datetime.now(UTC) - timedelta(days=app.config["INVITE_REMINDER_DAYS"])))
    session.commit()
    page = manager_client("viewer").get(PAGE).text
    p = program.id
    assert _count(page, "count-eligible") == _sql(
        session, "SELECT count(*) FROM eligibility WHERE program_id = :p", p)
    assert _count(page, "count-claimed") == _sql(
        session, "SELECT count(*) FROM claim WHERE program_id = :p", p) == 1
    assert _count(page, "count-invited") == _sql(
        session, "SELECT count(*) FROM invitation WHERE program_id = :p", p) == 3
    assert _count(page, "count-opted_out") == _sql(
        session, "SELECT count(*) FROM invitation WHERE program_id = :p "
        "AND opted_out_at IS NOT NULL", p) == 1
    assert _count(page, "count-reminders_due") == 2 and _count(page, "count-reminded") == 0
    _press(browser, "reminder")
    page = browser.get(PAGE).text
    assert _count(page, "count-reminded") == _sql(
        session, "SELECT count(*) FROM invitation WHERE program_id = :p "
        "AND reminded_at IS NOT NULL", p) == 2
    assert _count(page, "count-reminders_due") == 0
    assert _count(page, "mails-reminder") == 0  # none waiting: both sent
    assert followed_block(page).running == "no" and FOLLOW_SCRIPT not in page  # nothing going
    assert "follows the mails going out" not in page and "<noscript>" not in page


def test_the_page_follows_the_progress_of_a_send_in_place(manager_client, program, monkeypatch,
                                                          session):
    """While mails go out the page carries the script that follows the send in place (its
    counts, its progress, read out), never a timed reload (axe-core's meta-refresh: a page
    reloading on a timer fails WCAG 2.2.1); what the script fetches again shows the new counts."""
    monkeypatch.setattr(dispatch, "send_emails", lambda ids: None)  # the mails wait their turn
    browser = manager_client("manager")
    _press(browser, "invitation")
    page = browser.get(PAGE).text
    block = assert_followed_in_place(browser, page)
    assert block.id == "invitations-run"
    assert block.parts == ["as-of", "counts-body", "mails-body", "progress"]
    assert block.live_parts == ["progress"]
    assert _count(page, "mails-invitation") == len(EMAILS)  # waiting to go
    assert f"Sending: 0 of {len(EMAILS)} mails sent so far." in page
    first = session.exec(select(OutboundEmail.id).order_by(OutboundEmail.id)).first()
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == first)
                    .values(status="sent"))
    session.commit()
    page = browser.get(PAGE).text  # as the script fetches it: still running, one more sent
    assert followed_block(page).running == "yes"
    assert f"Sending: 1 of {len(EMAILS)} mails sent so far." in page


def test_no_send_once_the_window_has_closed(manager_client, factory, session):
    program = factory.program(slug=SLUG, opens_at=datetime.now(UTC) - timedelta(days=3),
                              closes_at=datetime.now(UTC) - timedelta(days=1))
    factory.creators(program, EMAILS)
    browser = manager_client("manager")
    response = _press(browser, "invitation")
    assert response.status_code == 302
    assert "has closed: nobody is invited any more" in browser.get(PAGE).text
    assert session.exec(select(Invitation)).all() == []


@pytest.mark.parametrize(("kind", "status"), [("", 400), ("x" * 100, 400), ("code", 302)])
def test_an_unknown_kind_is_refused(manager_client, program, session, kind, status):
    browser = manager_client("manager")
    response = _press(browser, kind)
    assert response.status_code == status
    if status == 302:  # the form's shape was right: the service refused the kind
        assert "Choose invitations or reminders." in browser.get(PAGE).text
    assert session.exec(select(Invitation)).all() == []


def test_a_viewer_reads_the_counts_but_cannot_send(manager_client, program, session):
    viewer = manager_client("viewer")
    page = viewer.get(PAGE)
    assert page.status_code == 200 and "Send invitations" not in page.text
    assert _count(page.text, "count-waiting") == len(EMAILS)
    response = viewer.post(PAGE, data={"csrf_token": csrf_token(page.text),
                                       "kind": "invitation"})
    assert response.status_code == 403
    assert session.exec(select(Invitation)).all() == []


def test_a_send_without_its_csrf_token_is_refused(manager_client, program, session):
    response = manager_client("manager").post(PAGE, data={"kind": "invitation"})
    assert response.status_code == 400
    assert session.exec(select(Invitation)).all() == []


def test_a_creator_gets_403(signed_in, program, session):
    browser = signed_in("ayesha@example.com")
    assert browser.get(PAGE).status_code == 403
    token = csrf_token(browser.get("/").text)  # a valid token of the creator's own session
    assert browser.post(PAGE, data={"csrf_token": token, "kind": "invitation"}).status_code == 403
    assert session.exec(select(Invitation)).all() == []


def test_nobody_signed_in_is_sent_to_the_console_sign_in(client, program):
    response = client.get(PAGE)
    assert response.status_code == 302 and "/manage/login" in response.headers["Location"]
