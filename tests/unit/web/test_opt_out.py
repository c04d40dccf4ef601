"""The opt-out link of an invitation (``/opt-out/<token>``): opening it changes nothing; its
page's button (with a CSRF token) or a mail client's RFC 8058 one-click POST (without one)
opts out; a bad or forged link is a clear 400 page, never a 500."""

from __future__ import annotations

import itsdangerous
import pytest
from sqlmodel import select

from tests.helpers import TEST_SECRET_KEY, csrf_token
from wellness_perks.db import get_session
from wellness_perks.models import Invitation
from wellness_perks.services import invitations, tokens

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

SLUG = "headspace-6m"


@pytest.fixture
def opt_out_path(app, factory, smtp_server):
    """The opt-out link of Ayesha's invitation, as her mail carries it (a local path)."""
    program = factory.program(slug=SLUG)
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    with app.app_context():
        invitations.send_invitations(get_session(), program_id=program.id, actor="test")
    [message] = smtp_server.wait_for_mail("ayesha@example.com", "invited")
    return message["List-Unsubscribe"].strip("<>").replace("http://localhost", "")


def _opted_out(session) -> list[int]:
    found = [r.creator_id for r in session.exec(select(Invitation)).all()
             if r.opted_out_at is not None]
    session.rollback()
    return found


def test_the_mails_link_is_the_headers_link(app, opt_out_path, smtp_server):
    [message] = smtp_server.to("ayesha@example.com", "invited")
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert f"http://localhost{opt_out_path}" in body


def test_opening_the_link_changes_nothing(client, opt_out_path, session):
    page = client.get(opt_out_path)
    assert page.status_code == 200
    assert "Send no more invitations to a***@example.com" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert client.head(opt_out_path).status_code == 200
    assert _opted_out(session) == []


def test_the_pages_button_opts_out_and_says_so(client, opt_out_path, session):
    page = client.get(opt_out_path)
    response = client.post(opt_out_path, data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 302 and response.headers["Location"] == opt_out_path
    assert len(_opted_out(session)) == 1
    done = client.get(opt_out_path)
    assert 'id="opted-out"' in done.text and "still sign in and claim" in done.text


def test_the_pages_button_without_its_csrf_token_is_refused(client, opt_out_path, session):
    response = client.post(opt_out_path, data={})
    assert response.status_code == 400
    assert "This form has expired" in response.text
    assert _opted_out(session) == []


def test_a_mail_clients_one_click_post_opts_out_without_a_csrf_token(client, opt_out_path,
                                                                      session):
    response = client.post(opt_out_path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and 'id="opted-out"' in response.text
    assert len(_opted_out(session)) == 1
    again = client.post(opt_out_path, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200 and len(_opted_out(session)) == 1


def _forged(app) -> str:
    return itsdangerous.URLSafeSerializer("not our key", salt=tokens.OPT_OUT_SALT).dumps(
        {"c": 1, "p": 1})


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("token", ["not-a-token", "a" * 3000, "forged", "sign-in", "nobody"])
def test_a_bad_or_forged_link_is_a_clear_400_page(app, client, opt_out_path, session, method,
                                                  token):
    if token == "forged":
        token = _forged(app)
    elif token == "sign-in":  # a real token of another kind
        token = itsdangerous.URLSafeTimedSerializer(
            TEST_SECRET_KEY, salt=tokens.SIGN_IN_SALT).dumps({"c": 1, "n": 0})
    elif token == "nobody":  # signed by us, naming no invitation
        with app.app_context():
            token = tokens.mint_opt_out_token(creator_id=99999, program_id=1)
    response = getattr(client, method)(f"/opt-out/{token}",
                                       data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 400
    assert "This opt-out link is not valid" in response.text
    assert _opted_out(session) == []
