"""The creator portal through the test client: signing in, claiming and getting the code;
claiming once per creator, waitlisted when out of stock or quota, refused (with the reason)
outside the window or the list. The claim rules themselves are ``services/test_claims.py``'s."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import csrf_token, redemption_code, text_body
from wellness_perks.models import AuditEvent, Claim, Code, OutboundEmail


def _claim(client, slug="headspace-6m"):
    page = client.get(f"/programs/{slug}")
    assert page.status_code == 200, page.text
    return client.post(f"/programs/{slug}/claim", data={"csrf_token": csrf_token(page.text)})


def _claims(session):
    session.rollback()  # a fresh snapshot: SQLite's WAL keeps a reader at its first view
    return session.exec(select(Claim).order_by(Claim.id)).all()


def test_creator_signs_in_claims_and_gets_code(app, client, factory, signed_in, smtp_server):
    program = factory.program(quota=5)
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001", "HS-AAAA-0002"])
    signed_in("ayesha@example.com")
    page = client.get("/programs/headspace-6m")
    assert page.status_code == 200 and "Claim" in page.text
    response = client.post("/programs/headspace-6m/claim",
                           data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 302
    mail = smtp_server.wait_for_mail("ayesha@example.com", "code")[0]
    assert redemption_code(mail) == "HS-AAAA-0001"
    assert "HS-AAAA-0001" in client.get("/programs/headspace-6m").text


def test_claim_allocates_a_code_shown_on_the_page_and_mailed(
        client, factory, signed_in, smtp_server, session):
    program = factory.program(redeem_url="https://app.example/redeem?code={code}")
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"], expires_on=datetime(2027, 6, 30).date())
    signed_in("ayesha@example.com")
    response = _claim(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/programs/headspace-6m"

    [claim] = _claims(session)
    assert claim.state == "allocated" and claim.code_id is not None and claim.decided_at
    page = client.get("/programs/headspace-6m").text
    assert "HS-AAAA-0001" in page
    assert "https://app.example/redeem?code=HS-AAAA-0001" in page
    assert "30 June 2027" in page

    [mail] = smtp_server.wait_for_mail("ayesha@example.com", "code")
    assert redemption_code(mail) == "HS-AAAA-0001"
    body = text_body(mail)
    assert "https://app.example/redeem?code=HS-AAAA-0001" in body
    assert "30 June 2027" in body and "Questions" in body
    assert mail.get_body(preferencelist=("html",)) is not None
    outbound = session.exec(select(OutboundEmail).where(OutboundEmail.kind == "redemption")).one()
    assert (outbound.status, outbound.attempts, outbound.claim_id) == ("sent", 1, claim.id)
    assert outbound.sent_at is not None and outbound.message_id == mail["Message-ID"]


def test_claiming_twice_changes_nothing(client, factory, signed_in, smtp_server, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001", "HS-AAAA-0002"])
    signed_in("ayesha@example.com")
    _claim(client)
    first = _claims(session)
    assert _claim(client).status_code == 302
    # A resubmitted form with the same token too.
    page = client.get("/programs/headspace-6m")
    assert "Claim</button>" not in page.text
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    second = _claims(session)
    assert [(c.id, c.state, c.code_id) for c in first] == [(c.id, c.state, c.code_id)
                                                         for c in second]
    assert len(second) == 1
    assert session.exec(select(sa.func.count()).select_from(Code)
                        .where(Code.status == "assigned")).one() == 1
    assert len(smtp_server.to("ayesha@example.com", "code")) == 1


def test_out_of_stock_claims_are_waitlisted_in_order(
        client, factory, signed_in, another_creator, smtp_server, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com"])
    signed_in("a@example.com")
    _claim(client)
    other = another_creator("b@example.com")
    _claim(other)
    claims = _claims(session)
    assert [(c.state, c.reason) for c in claims] == [("waitlisted", "out_of_stock")] * 2
    assert "number <strong>1</strong> on the waitlist" in client.get("/programs/headspace-6m").text
    assert "number <strong>2</strong> on the waitlist" in other.get("/programs/headspace-6m").text
    assert smtp_server.to("a@example.com", "code") == []


def test_quota_reached_claims_are_waitlisted(
        client, factory, signed_in, another_creator, session):
    program = factory.program(quota=1)
    factory.creators(program, ["a@example.com", "b@example.com"])
    factory.codes(program, ["HS-AAAA-0001", "HS-AAAA-0002"])
    signed_in("a@example.com")
    _claim(client)
    other = another_creator("b@example.com")
    _claim(other)
    assert [(c.state, c.reason) for c in _claims(session)] == [
        ("allocated", None), ("waitlisted", "quota_reached")]
    assert session.exec(select(sa.func.count()).select_from(Code)
                        .where(Code.status == "available")).one() == 1


def test_claim_after_the_window_closed_is_refused_with_reason(
        client, factory, signed_in, session, smtp_server):
    now = datetime.now(UTC)
    program = factory.program(opens_at=now - timedelta(days=10), closes_at=now - timedelta(days=1))
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    signed_in("ayesha@example.com")
    page = client.get("/programs/headspace-6m")
    assert "has closed" in page.text and "Claim</button>" not in page.text
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    [claim] = _claims(session)
    assert (claim.state, claim.reason, claim.code_id) == ("refused", "window_closed", None)
    assert "claim window closed" in client.get("/programs/headspace-6m").text
    assert smtp_server.to("ayesha@example.com", "code") == []


def test_a_waiting_creator_taken_off_the_list_sees_their_claim_refused_with_reason(
        app, client, factory, signed_in, session):
    from wellness_perks.db import get_session
    from wellness_perks.services import creators

    program = factory.program(quota=0)
    factory.creators(program, ["ayesha@example.com"])
    signed_in("ayesha@example.com")
    page = client.get("/programs/headspace-6m")
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    assert [c.state for c in _claims(session)] == ["waitlisted"]
    with app.app_context():
        creators.remove_from_list(get_session(), program_id=program.id,
                                  email="ayesha@example.com", reason="left", actor="test")
    [claim] = _claims(session)
    assert (claim.state, claim.reason) == ("refused", "removed_from_list")
    page = client.get("/programs/headspace-6m")
    assert "We couldn't give you this perk: you are no longer on this program's list." in \
        page.text.replace("&#39;", "'")


def test_claim_before_the_window_opens_records_nothing(client, factory, signed_in, session):
    now = datetime.now(UTC)
    program = factory.program(opens_at=now + timedelta(days=1), closes_at=now + timedelta(days=9))
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    signed_in("ayesha@example.com")
    page = client.get("/programs/headspace-6m")
    assert "Claims open on" in page.text
    response = client.post("/programs/headspace-6m/claim",
                           data={"csrf_token": csrf_token(page.text)}, follow_redirects=True)
    assert "open on" in response.text
    assert _claims(session) == []


def test_refused_claim_is_reconsidered_once_the_window_reopens(
        client, app, factory, signed_in, session):
    now = datetime.now(UTC)
    program = factory.program(opens_at=now - timedelta(days=10), closes_at=now - timedelta(days=1))
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    signed_in("ayesha@example.com")
    _claim(client)
    assert _claims(session)[0].state == "refused"
    with app.app_context():
        from wellness_perks.db import get_session
        from wellness_perks.models import Program
        s = get_session()
        s.get(Program, program.id).closes_at = now + timedelta(days=1)
        s.commit()
    _claim(client)
    [claim] = _claims(session)
    assert claim.state == "allocated"


def _without_csrf(page: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]*"', "", page)


def test_program_of_another_list_is_hidden_and_cannot_be_claimed(
        client, factory, signed_in, session, smtp_server):
    """A signed-in creator POSTs to the claim URL of a program they are not on: the same 404
    as the program's page and as a program that does not exist, and nothing recorded."""
    mine = factory.program(slug="mine-6m")
    other = factory.program(slug="other-6m", name="Other")
    not_yet = factory.program(slug="soon-6m", name="Soon",
                              opens_at=datetime.now(UTC) + timedelta(days=1))
    closed = factory.program(slug="closed-6m", name="Closed",
                             opens_at=datetime.now(UTC) - timedelta(days=2),
                             closes_at=datetime.now(UTC) - timedelta(days=1))
    factory.creators(mine, ["ayesha@example.com"])
    for program in (other, not_yet, closed):
        factory.creators(program, ["bilal@example.com"])
    factory.codes(other, ["HS-AAAA-0001"])
    signed_in("ayesha@example.com")
    assert "Other" not in client.get("/").text
    token = csrf_token(client.get("/programs/mine-6m").text)
    unknown = client.post("/programs/no-such-6m/claim", data={"csrf_token": token})
    assert unknown.status_code == 404
    for slug in ("other-6m", "soon-6m", "closed-6m"):
        assert client.get(f"/programs/{slug}").status_code == 404
        for _ in range(2):
            response = client.post(f"/programs/{slug}/claim", data={"csrf_token": token})
            assert response.status_code == 404, slug
            # Nothing tells the program exists (the page's CSRF token is signed with the time).
            assert _without_csrf(response.text) == _without_csrf(unknown.text)
        assert client.get(f"/programs/{slug}").status_code == 404
    assert _claims(session) == []
    session.rollback()
    assert session.exec(select(AuditEvent).where(AuditEvent.object_type == "claim")).all() == []
    assert session.exec(select(Code)).one().status == "available"
    assert smtp_server.to("ayesha@example.com", "code") == []


def test_claim_without_csrf_token_is_rejected(client, factory, signed_in, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    signed_in("ayesha@example.com")
    response = client.post("/programs/headspace-6m/claim")
    assert response.status_code == 400
    assert _claims(session) == []


def test_unknown_program_is_404(client, factory, signed_in):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    signed_in("ayesha@example.com")
    assert client.get("/programs/nope").status_code == 404
    token = csrf_token(client.get("/programs/headspace-6m").text)
    assert client.post("/programs/nope/claim", data={"csrf_token": token}).status_code == 404


def test_a_creator_sees_what_is_kept_about_them_and_can_ask_for_deletion(
        client, factory, signed_in, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    assert client.get("/me").status_code == 302  # nobody signed in
    signed_in("ayesha@example.com")
    page = client.get("/me")
    assert page.status_code == 200
    assert "ayesha@example.com" in page.text and "Headspace" in page.text
    assert "bilal" not in page.text
    assert client.post("/me/delete").status_code == 400  # a form post needs its token
    response = client.post("/me/delete", data={"csrf_token": csrf_token(page.text)},
                           follow_redirects=True)
    assert "Your request is recorded" in response.text
    assert "You asked us to delete your data on" in response.text
    session.rollback()
    assert [(e.actor, e.object_id) for e in session.exec(
        select(AuditEvent).where(AuditEvent.action == "creator.deletion_requested"))] == [
        ("creator:1", 1)]


def test_a_claim_while_the_database_is_down_is_answered_503_and_recorded_nowhere(
        app, client, factory, session, signed_in):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-CODE-0001"])
    signed_in("ayesha@example.com")
    page = client.get("/programs/headspace-6m")
    token = csrf_token(page.text)
    working = app.extensions["db_sessionmaker"].kw["bind"]
    down = sa.create_engine("postgresql+psycopg://127.0.0.1:9/none", pool_pre_ping=False)
    app.extensions["db_sessionmaker"].configure(bind=down)
    try:
        response = client.post("/programs/headspace-6m/claim", data={"csrf_token": token})
    finally:
        app.extensions["db_sessionmaker"].configure(bind=working)
        down.dispose()
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert "try again" in response.text.lower()
    assert _claims(session) == []
