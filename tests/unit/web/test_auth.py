"""The sign-in pages (``web/auth/``) through the test client: the same answer for every address,
links usable once and for 15 minutes, each refusal in its own words, and pages that need a
signed-in creator. The rules behind them are ``services/test_auth.py``'s."""

from __future__ import annotations

import time

import itsdangerous.timed
import pytest
from sqlmodel import select

from tests.helpers import csrf_token, sign_in_link, use_sign_in_link
from wellness_perks.models import Claim, Creator, OutboundEmail
from wellness_perks.services.tokens import mint_sign_in_token

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def program(factory):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    return program


def _request_link(client, address):
    page = client.get("/login")
    return client.post("/login", data={"email": address, "csrf_token": csrf_token(page.text)},
                       follow_redirects=True)


def test_eligible_and_unknown_addresses_get_the_same_answer(client, program, smtp_server, session):
    known = _request_link(client, "Ayesha@Example.com")
    unknown = _request_link(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text
    assert "If this address is eligible, a sign-in link is on its way" in known.text
    mails = smtp_server.wait_for_mail("ayesha@example.com", "sign-in")
    assert len(mails) == 1
    assert smtp_server.to("nobody@example.com") == []
    rows = session.exec(select(OutboundEmail)).all()
    assert [(r.to_email, r.kind, r.status) for r in rows] == [
        ("ayesha@example.com", "sign_in", "sent")]


def test_sign_in_link_points_at_base_url_and_signs_in(client, program, smtp_server):
    _request_link(client, "ayesha@example.com")
    link = sign_in_link(smtp_server.wait_for_mail("ayesha@example.com", "sign-in")[0])
    assert link.startswith("http://localhost/login/")
    response = use_sign_in_link(client, link.removeprefix("http://localhost"))
    assert response.status_code == 302 and response.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200 and "Headspace" in page.text


def test_malformed_address_is_reported_and_sends_nothing(client, program, smtp_server):
    page = client.get("/login")
    response = client.post("/login", data={"email": "not-an-email",
                                           "csrf_token": csrf_token(page.text)})
    assert response.status_code == 400
    assert "not a valid email address" in response.text
    assert smtp_server.messages == []


def test_sign_in_form_needs_csrf_token(client, program, smtp_server):
    response = client.post("/login", data={"email": "ayesha@example.com"})
    assert response.status_code == 400
    assert smtp_server.messages == []


def test_link_is_usable_once(client, program, smtp_server, app):
    _request_link(client, "ayesha@example.com")
    path = sign_in_link(smtp_server.wait_for_mail("ayesha@example.com", "sign-in")[0])
    path = path.removeprefix("http://localhost")
    assert use_sign_in_link(client, path).status_code == 302
    other = app.test_client()
    reused = other.get(path)
    assert reused.status_code == 400
    assert "already been used" in reused.text
    assert other.get("/").status_code == 302  # still signed out


def _token_minted_ago(app, session, monkeypatch, seconds: int) -> str:
    creator = session.exec(select(Creator).where(Creator.email == "ayesha@example.com")).one()
    real_time = time.time
    with app.app_context(), monkeypatch.context() as patch:
        patch.setattr(itsdangerous.timed.time, "time", lambda: real_time() - seconds)
        return mint_sign_in_token(creator)


def test_expired_link_is_refused(client, program, app, session, monkeypatch):
    token = _token_minted_ago(app, session, monkeypatch, 16 * 60)
    response = client.get(f"/login/{token}")
    assert response.status_code == 400
    assert "expired" in response.text
    assert client.get("/").status_code == 302


def test_link_within_its_lifetime_works(client, program, app, session, monkeypatch):
    token = _token_minted_ago(app, session, monkeypatch, 14 * 60)
    assert use_sign_in_link(client, f"/login/{token}").status_code == 302


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
    lambda t: "x" + t,                                              # payload changed
    lambda t: "garbage",
])
def test_tampered_link_is_refused(client, program, app, session, mangle):
    creator = session.exec(select(Creator).where(Creator.email == "ayesha@example.com")).one()
    with app.app_context():
        token = mint_sign_in_token(creator)
    response = client.get(f"/login/{mangle(token)}")
    assert response.status_code == 400
    assert "not valid" in response.text
    assert client.get("/").status_code == 302


def test_link_signed_with_another_key_is_refused(client, program, session):
    creator = session.exec(select(Creator).where(Creator.email == "ayesha@example.com")).one()
    forged = itsdangerous.URLSafeTimedSerializer("another-key", salt="wellness-perks.sign-in")
    token = forged.dumps({"c": creator.id, "n": creator.login_nonce})
    assert client.get(f"/login/{token}").status_code == 400


def test_link_for_unknown_creator_is_refused(client, program, app):
    with app.app_context():
        serializer = itsdangerous.URLSafeTimedSerializer(app.config["SECRET_KEY"],
                                                         salt="wellness-perks.sign-in")
        token = serializer.dumps({"c": 999999, "n": 0})
    response = client.get(f"/login/{token}")
    assert response.status_code == 400 and "not valid" in response.text


@pytest.mark.parametrize("path", ["/", "/programs/headspace-6m"])
def test_pages_need_sign_in(client, program, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_claim_needs_sign_in(client, program, session):
    # Without the form's token the post is refused before anything else ...
    assert client.post("/programs/headspace-6m/claim").status_code == 400
    # ... and with it, a creator who is not signed in is sent to sign in, and nothing is claimed.
    token = csrf_token(client.get("/login").text)
    response = client.post("/programs/headspace-6m/claim", data={"csrf_token": token})
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
    session.rollback()
    assert session.exec(select(Claim)).all() == []


def test_sign_out(client, program, signed_in):
    signed_in("ayesha@example.com")
    page = client.get("/")
    assert client.post("/logout", data={"csrf_token": csrf_token(page.text)}).status_code == 302
    assert client.get("/").status_code == 302


def test_signing_in_starts_a_fresh_session(app, client, program, signed_in, session):
    """Nothing of the session before a sign-in survives it (a planted value, the old CSRF
    token, another creator's sign-in): session fixation gets nowhere."""
    client.get("/login")  # an anonymous session, with its CSRF token
    with client.session_transaction() as before:
        before["planted"] = "from before the sign-in"
        old_csrf = before["csrf_token"]
    signed_in("bilal@example.com")
    with client.session_transaction() as after:
        assert "planted" not in after and after.get("csrf_token") != old_csrf
        assert after["_user_id"] == "c:2:0"
        after["planted"] = "bilal's"
    ayesha = session.exec(select(Creator).where(Creator.email == "ayesha@example.com")).one()
    with app.app_context():
        token = mint_sign_in_token(ayesha)
    # Signed in, opening a link lands on one's perks; pressing another creator's button
    # (from a page of one's own session) signs in as them, in a fresh session.
    assert client.get(f"/login/{token}").headers["Location"] == "/"
    answer = client.post(f"/login/{token}", data={"csrf_token": csrf_token(client.get("/").text)})
    assert answer.status_code == 302
    with client.session_transaction() as switched:
        assert switched["_user_id"] == f"c:{ayesha.id}:0" and "planted" not in switched
