"""Sign-in links tried as an attacker (or a mail scanner) would: fetching a link (GET, HEAD)
never uses it up, only the button's POST signs in; a link works once, only the newest of an
address works, a signed-in creator who opens one lands on their own perks, and the page asked
for before sign-in is where the creator lands after, never another site."""

from __future__ import annotations

import re
import string
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from tests.helpers import csrf_token, sign_in_link, use_sign_in_link
from wellness_perks.models import Creator

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

AYESHA = "ayesha@example.com"
BILAL = "bilal@example.com"


@pytest.fixture
def program(factory):
    program = factory.program()
    factory.creators(program, [AYESHA, BILAL])
    return program


def _request_link(client, smtp_server, address: str, **form) -> str:
    """Ask for a link through the form; the path of the link the mail carries."""
    before = len(smtp_server.to(address, "sign-in"))
    page = client.get("/login" + (f"?next={form.pop('next_query')}" if "next_query" in form
                                  else ""))
    response = client.post("/login", data={"email": address,
                                           "csrf_token": csrf_token(page.text), **form})
    assert response.status_code == 302, response.text
    mail = smtp_server.wait_for_mail(address, "sign-in", count=before + 1)[-1]
    return sign_in_link(mail).removeprefix("http://localhost")


def _nonce(session, address: str) -> int:
    session.rollback()
    return session.exec(select(Creator.login_nonce).where(Creator.email == address)
                        .execution_options(populate_existing=True)).one()


def _signed_in(client) -> bool:
    return client.get("/").status_code == 200


def test_fetching_a_link_shows_one_button_and_uses_nothing_up(app, program, smtp_server,
                                                              session):
    scanner = app.test_client()
    path = _request_link(scanner, smtp_server, AYESHA)
    nonce = _nonce(session, AYESHA)
    for _ in range(3):  # a mail scanner, a link preview, a prefetch
        assert scanner.head(path).status_code == 200
        page = scanner.get(path)
        assert page.status_code == 200
    assert _nonce(session, AYESHA) == nonce and not _signed_in(scanner)
    assert "Sign in as a***@example.com" in page.text
    assert AYESHA not in page.text
    assert page.text.count("<button") == 1
    assert page.headers["Cache-Control"] == "no-store"
    assert "noindex" in page.headers["X-Robots-Tag"]
    assert '<meta name="robots" content="noindex' in page.text

    creator = app.test_client()  # the creator, after the robots: the link still works
    answer = use_sign_in_link(creator, path)
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    assert answer.headers["Cache-Control"] == "no-store"
    assert _signed_in(creator)


def test_the_button_needs_the_pages_csrf_token(app, program, smtp_server, session):
    path = _request_link(app.test_client(), smtp_server, AYESHA)
    nonce = _nonce(session, AYESHA)
    forger = app.test_client()
    assert forger.post(path).status_code == 400  # no token: a cross-site POST
    other = app.test_client()
    stolen = csrf_token(other.get(path).text)  # a token of another browser's session
    assert forger.post(path, data={"csrf_token": stolen}).status_code == 400
    assert _nonce(session, AYESHA) == nonce and not _signed_in(forger)


def test_a_replayed_link_is_refused(app, program, smtp_server):
    path = _request_link(app.test_client(), smtp_server, AYESHA)
    first = app.test_client()
    assert use_sign_in_link(first, path).status_code == 302
    again = first.post(path, data={"csrf_token": csrf_token(first.get("/").text)})
    assert again.status_code == 400 and "already been used" in again.text
    thief = app.test_client()
    page = thief.get(path)
    assert page.status_code == 400 and "already been used" in page.text
    answer = thief.post(path, data={"csrf_token": csrf_token(page.text)})
    assert answer.status_code == 400 and "already been used" in answer.text
    assert not _signed_in(thief)


def test_only_the_newest_link_of_an_address_works(app, program, smtp_server, session):
    browser = app.test_client()
    older = _request_link(browser, smtp_server, AYESHA)
    newer = _request_link(browser, smtp_server, AYESHA)
    assert older != newer
    page = browser.get(older)
    assert page.status_code == 400
    assert "A newer sign-in link was sent" in page.text
    token = csrf_token(page.text)
    answer = browser.post(older, data={"csrf_token": token})
    assert answer.status_code == 400 and "A newer sign-in link was sent" in answer.text
    assert not _signed_in(browser)
    assert use_sign_in_link(browser, newer).status_code == 302
    assert _signed_in(browser)


def test_a_signed_in_creator_who_opens_a_link_lands_on_their_perks(app, program, smtp_server,
                                                                   session):
    ayesha = app.test_client()
    own = _request_link(ayesha, smtp_server, AYESHA)
    assert use_sign_in_link(ayesha, own).status_code == 302
    again = _request_link(app.test_client(), smtp_server, AYESHA)
    bilals = _request_link(app.test_client(), smtp_server, BILAL)
    bilal_nonce = _nonce(session, BILAL)
    for path in (own, again, bilals):  # used, fresh, and another creator's
        response = ayesha.get(path)
        assert response.status_code == 302 and response.headers["Location"] == "/"
    assert _nonce(session, BILAL) == bilal_nonce  # Bilal's link is still his to use
    bilal = app.test_client()
    assert use_sign_in_link(bilal, bilals).status_code == 302
    with ayesha.session_transaction() as kept, bilal.session_transaction() as his:
        assert kept["_user_id"].split(":")[1] != his["_user_id"].split(":")[1]


def test_a_link_signs_in_only_the_creator_it_names(app, program, smtp_server, session):
    """A creator who gets hold of another's link (forwarded, say) sees the masked address of
    its owner, and pressing the button signs in as its owner in a fresh session: nothing of
    the session before it, nor of the other creator, carries over."""
    bilal = app.test_client()
    assert use_sign_in_link(bilal, _request_link(bilal, smtp_server, BILAL)).status_code == 302
    ayesha_link = _request_link(app.test_client(), smtp_server, AYESHA)
    stranger = app.test_client()
    page = stranger.get(ayesha_link)
    assert "Sign in as a***@example.com" in page.text and "b***" not in page.text
    ayesha_id = session.exec(select(Creator.id).where(Creator.email == AYESHA)).one()
    answer = bilal.post(ayesha_link, data={"csrf_token": csrf_token(bilal.get("/").text)})
    assert answer.status_code == 302
    with bilal.session_transaction() as now:
        assert now["_user_id"].startswith(f"c:{ayesha_id}")


@pytest.mark.parametrize("asked", ["/programs/headspace-6m", "/me?tab=mails"])
def test_the_page_asked_for_before_sign_in_is_where_the_creator_lands(app, program,
                                                                     smtp_server, asked):
    browser = app.test_client()
    sent_to = browser.get(asked).headers["Location"]
    assert sent_to.startswith("/login?next=")
    page = browser.get(sent_to)
    response = browser.post("/login", data={
        "email": AYESHA, "csrf_token": csrf_token(page.text),
        "next": _hidden_next(page.text)})
    assert response.status_code == 302
    path = sign_in_link(smtp_server.wait_for_mail(AYESHA, "sign-in")[-1])
    answer = use_sign_in_link(browser, path.removeprefix("http://localhost"))
    assert answer.status_code == 302 and answer.headers["Location"] == asked
    assert browser.get(asked).status_code == 200


def _hidden_next(html: str) -> str:
    match = re.search(r'<input[^>]*name="next"[^>]*value="([^"]*)"', html) or re.search(
        r'<input[^>]*value="([^"]*)"[^>]*name="next"', html)
    assert match, "no next field on the page"
    return match.group(1).replace("&amp;", "&")


@pytest.mark.parametrize("elsewhere", [
    "//evil.example/programs", "https://evil.example/", "/\\evil.example", "\\\\evil.example",
    "javascript:alert(1)", "programs/headspace-6m", "///evil.example",
])
def test_a_sign_in_never_sends_the_creator_to_another_site(app, program, smtp_server,
                                                           elsewhere):
    browser = app.test_client()
    path = _request_link(browser, smtp_server, AYESHA, next=elsewhere)
    answer = use_sign_in_link(browser, path + "?next=" + quote(elsewhere),
                              next=elsewhere)
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    signed_in = browser.get("/login?next=" + quote(elsewhere))
    assert signed_in.headers["Location"] == "/"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(alphabet=string.ascii_letters + string.digits + "-_.~%", min_size=1,
                     max_size=120))
def test_any_link_opens_a_page_or_a_refusal_never_an_error(app, program, token):
    client = app.test_client()
    for method in ("GET", "HEAD"):
        assert client.open(f"/login/{token}", method=method).status_code in (200, 400, 404)
    token_field = csrf_token(client.get("/login").text)
    assert client.post(f"/login/{token}", data={"csrf_token": token_field}).status_code in (
        400, 404)
