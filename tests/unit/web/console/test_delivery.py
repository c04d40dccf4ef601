"""The delivery page at /manage/programs/<slug>/delivery: a program's failed and overdue code
mails with their errors and attempts, page by page; one click re-sends every failed one (the
service of ``resend-failed``, audited); the workers and queues as /healthz sees them, a broker
that is down shown as down (not a 500); never a code in clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD, sign_in_manager
from tests.helpers import csrf_token
from wellness_perks import create_app
from wellness_perks.db import get_session, new_session
from wellness_perks.models import AuditEvent, Creator, OutboundEmail
from wellness_perks.services import auth, claims

SLUG = "headspace-6m"
PAGE = f"/manage/programs/{SLUG}/delivery"
CODES = [f"HS-AAAA-{i:04d}" for i in range(1, 5)]


@pytest.fixture
def mails(app, factory, session, smtp_server):
    """Three creators with a code each: two mails refused for good (failed), one left queued and
    due a day ago (overdue). Returns (failed ids, overdue id)."""
    program = factory.program(slug=SLUG)
    emails = ["ayesha@example.com", "bilal@example.com", "chand@example.com"]
    factory.creators(program, emails)
    factory.codes(program, CODES)
    creator_ids = dict(session.exec(select(Creator.email, Creator.id)).all())
    session.rollback()
    smtp_server.refuse_with = "550 5.1.1 mailbox unavailable"
    with app.app_context():
        for email in emails:
            claims.request_claim(get_session(), program=program, creator_id=creator_ids[email])
    smtp_server.refuse_with = None
    rows = {m.to_email: m for m in session.exec(select(OutboundEmail)).all()}
    assert {m.status for m in rows.values()} == {"failed"}
    overdue = rows["chand@example.com"].id
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == overdue).values(
        status="queued", next_attempt_at=datetime.now(UTC) - timedelta(days=1)))
    session.commit()
    return sorted(m.id for e, m in rows.items() if m.id != overdue), overdue


def _section(page: str, name: str) -> str:
    start = page.index(f'id="{name}"')
    return page[start:page.index("</section>", start)]


@pytest.mark.parametrize("role", ["viewer", "manager", "admin"])
def test_failed_and_overdue_mails_are_listed_with_their_errors(manager_client, mails, role):
    failed, overdue = mails
    page = manager_client(role).get(PAGE)
    assert page.status_code == 200
    failed_part, overdue_part = _section(page.text, "failed"), _section(page.text, "overdue")
    for mail_id in failed:
        assert f'data-mail="{mail_id}"' in failed_part
    assert "PermanentMailError: refused by the server (550)" in failed_part
    assert f'data-mail="{overdue}"' in overdue_part and f'data-mail="{overdue}"' not in failed_part
    assert all(code not in page.text for code in CODES)  # never a code in clear
    assert ("Re-send all failed" in page.text) == (role != "viewer")
    assert 'id="broker" data-status="not_configured"' in page.text


def test_the_dashboard_links_the_delivery_page(manager_client, mails):
    assert f'href="{PAGE}"' in manager_client("viewer").get(f"/manage/programs/{SLUG}").text


def test_one_click_resends_every_failed_mail_audited(manager_client, mails, session,
                                                     smtp_server):
    failed, overdue = mails
    browser = manager_client("manager")
    smtp_server.refuse_with = "451 4.3.0 try again later"  # sent again: queued for a retry
    response = browser.post(f"{PAGE}/resend-failed",
                            data={"csrf_token": csrf_token(browser.get(PAGE).text)})
    smtp_server.refuse_with = None
    assert response.status_code == 302 and response.headers["Location"] == PAGE
    page = browser.get(PAGE)
    assert "2 failed mail(s) queued to be sent again." in page.text
    session.rollback()
    statuses = dict(session.exec(select(OutboundEmail.id, OutboundEmail.status)).all())
    assert [statuses[i] for i in failed] == ["queued", "queued"]
    events = session.exec(select(AuditEvent).where(AuditEvent.action == "mail.resent")).all()
    assert sorted(e.object_id for e in events) == failed
    assert {e.actor for e in events} == {f"manager:{browser.manager_id}"}
    assert 'data-mail="' not in _section(page.text, "failed")
    again = browser.post(f"{PAGE}/resend-failed",
                         data={"csrf_token": csrf_token(browser.get(PAGE).text)})
    assert "No failed mail to send again." in browser.get(again.headers["Location"]).text


def test_a_viewer_cannot_resend_and_a_post_without_csrf_is_refused(manager_client, mails,
                                                                   session):
    viewer = manager_client("viewer")
    token = csrf_token(viewer.get(f"/manage/programs/{SLUG}").text)
    assert viewer.post(f"{PAGE}/resend-failed", data={"csrf_token": token}).status_code == 403
    assert manager_client("manager").post(f"{PAGE}/resend-failed").status_code == 400
    session.rollback()
    assert session.exec(select(AuditEvent).where(AuditEvent.action == "mail.resent")).all() == []


def test_the_lists_go_page_by_page(app, manager_client, mails):
    failed, _overdue = mails
    from wellness_perks.services import verify

    with app.app_context():
        first = verify.undelivered_mails(get_session(), program_id=_program_id(app),
                                         show=verify.Undelivered.failed, limit=1)
        second = verify.undelivered_mails(get_session(), program_id=_program_id(app),
                                          show=verify.Undelivered.failed, limit=1,
                                          after_id=first.next_after)
    assert [m.id for m in first.mails] == failed[:1] and first.next_after == failed[0]
    assert [m.id for m in second.mails] == failed[1:] and second.next_after is None
    page = manager_client("viewer").get(f"{PAGE}?failed_after={failed[0]}")
    assert f'data-mail="{failed[0]}"' not in page.text
    assert f'data-mail="{failed[1]}"' in page.text


@pytest.mark.parametrize("after", ["x", "-1", "1" * 30])
def test_a_bad_page_key_is_a_400_saying_so(manager_client, mails, after):
    page = manager_client("viewer").get(f"{PAGE}?overdue_after={after}")
    assert page.status_code == 400
    assert 'data-field="overdue_after"' in page.text
    assert "That page does not exist" in page.text


def test_an_unknown_program_is_a_404(manager_client):
    assert manager_client("viewer").get("/manage/programs/nope/delivery").status_code == 404


def _program_id(app) -> int:
    from wellness_perks.services import programs

    with app.app_context():
        return programs.get_program(get_session(), SLUG).id


def test_a_broker_that_is_down_is_shown_down_not_a_500(app, app_config, mails):
    app_config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    down = create_app(app_config)
    with down.app_context(), new_session() as session:
        auth.create_manager(session, email="viewer@managers.example",
                            password=MANAGER_PASSWORD, role="viewer", actor="test")
    browser = down.test_client()
    assert sign_in_manager(browser, "viewer@managers.example").status_code == 302
    page = browser.get(PAGE)
    assert page.status_code == 200
    assert 'id="broker" data-status="error"' in page.text and "down" in page.text
    assert 'id="queues" data-status="degraded"' in page.text
    assert "refused by the server (550)" in page.text  # the mails are still listed
    down.extensions["db_engine"].dispose()


def test_overdue_means_past_the_grace_as_owed_work_counts_it(app, manager_client, mails,
                                                           session):
    """A queued mail due a moment ago is not overdue; one whose attempt outlived its lease by
    the grace is; a failed mail stays on the failed list only."""
    failed, overdue = mails
    now = datetime.now(UTC)
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == overdue).values(
        next_attempt_at=now - timedelta(seconds=5)))
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == failed[0]).values(
        status="sending", sending_started_at=now - timedelta(hours=1)))
    session.commit()
    part = _section(manager_client("viewer").get(PAGE).text, "overdue")
    assert f'data-mail="{overdue}"' not in part
    assert f'data-mail="{failed[0]}"' in part and f'data-mail="{failed[1]}"' not in part
    with app.app_context():
        from wellness_perks.services import verify

        owed = {o.kind: set(o.ids) for o in verify.owed_work(get_session(),
                                                              program_id=_program_id(app))}
    assert owed[verify.OwedKind.overdue_mails] == {failed[0]}
