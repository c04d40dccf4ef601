"""Sessions the server can end, tried as an attacker would: a copied session cookie stops
working the moment its creator signs out (or is forgotten), and every session ends after
SESSION_IDLE_MINUTES without use and SESSION_MAX_HOURS after its sign-in, however busy; pages
that show a code are never stored by a cache."""

from __future__ import annotations

import pytest

from tests.helpers import csrf_token
from wellness_perks.db import get_session
from wellness_perks.services import privacy
from wellness_perks.web import security

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

AYESHA = "ayesha@example.com"
CODE = "HS-SECRET-0001"
PROGRAM_PAGE = "/programs/headspace-6m"


@pytest.fixture
def program(factory):
    program = factory.program()
    factory.creators(program, [AYESHA, "bilal@example.com"])
    factory.codes(program, [CODE])
    return program


@pytest.fixture
def clock(monkeypatch):
    """The sessions' clock, moved by the test (no sleeping)."""

    class Clock:
        now = security.clock()

        def advance(self, *, minutes: float = 0, hours: float = 0) -> None:
            self.now += minutes * 60 + hours * 3600

    moved = Clock()
    monkeypatch.setattr(security, "clock", lambda: moved.now)
    return moved


def _copy_of(app, client):
    """Another browser holding a copy of ``client``'s session cookie (stolen, say)."""
    thief = app.test_client()
    thief.set_cookie("session", client.get_cookie("session").value)
    return thief


def _shows_the_code(client) -> bool:
    page = client.get(PROGRAM_PAGE)
    return page.status_code == 200 and CODE in page.text


def _claim(client) -> None:
    page = client.get(PROGRAM_PAGE)
    client.post(f"{PROGRAM_PAGE}/claim", data={"csrf_token": csrf_token(page.text)})


def _sign_out(client) -> None:
    page = client.get("/")
    assert client.post("/logout", data={"csrf_token": csrf_token(page.text)}).status_code == 302


def test_a_copied_cookie_stops_working_when_its_creator_signs_out(app, client, program,
                                                                  signed_in):
    signed_in(AYESHA)
    _claim(client)
    assert _shows_the_code(client)
    thief = _copy_of(app, client)
    assert _shows_the_code(thief)  # the copy works while the session lasts ...
    _sign_out(client)
    for browser in (thief, client):  # ... and not a moment after, on any device
        response = browser.get(PROGRAM_PAGE)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    signed_in(AYESHA)  # signing in again starts a new session; the old copy stays dead
    assert _shows_the_code(client)
    assert not _shows_the_code(thief)
    assert thief.get("/").status_code == 302


def test_signing_out_ends_the_other_sessions_of_the_same_creator(app, program, another_creator):
    phone = another_creator(AYESHA)
    laptop = another_creator(AYESHA)
    assert phone.get("/").status_code == laptop.get("/").status_code == 200
    _sign_out(laptop)
    assert phone.get("/").status_code == 302


def test_another_creators_sign_out_ends_nothing_of_mine(app, program, signed_in, client,
                                                        another_creator):
    signed_in(AYESHA)
    _sign_out(another_creator("bilal@example.com"))
    assert client.get("/").status_code == 200


def test_forgetting_a_creator_ends_their_sessions(app, client, program, signed_in):
    signed_in(AYESHA)
    thief = _copy_of(app, client)
    with app.app_context():
        privacy.forget_creator(get_session(), email=AYESHA, actor="test")
    assert client.get("/").status_code == 302
    assert thief.get("/").status_code == 302


def test_a_session_ends_after_the_idle_time(app, client, program, signed_in, clock):
    assert app.config["SESSION_IDLE_MINUTES"] == 30
    signed_in(AYESHA)
    thief = _copy_of(app, client)
    clock.advance(minutes=29)
    assert client.get("/").status_code == 200  # used in time: the session goes on
    clock.advance(minutes=29)
    assert client.get("/").status_code == 200
    clock.advance(minutes=31)
    response = client.get(PROGRAM_PAGE)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert client.get("/").status_code == 302  # over for good, not only for that request
    assert thief.get("/").status_code == 302  # a copy made before idles out with it


def test_a_session_ends_after_its_lifetime_however_busy(app, client, program, signed_in, clock):
    assert app.config["SESSION_MAX_HOURS"] == 12
    signed_in(AYESHA)
    for _ in range(11 * 3):  # a request every 20 minutes for 11 hours
        clock.advance(minutes=20)
        assert client.get("/").status_code == 200
    clock.advance(minutes=61)  # 12 h 1 min after the sign-in
    assert client.get("/").status_code == 302


@pytest.fixture
def short_sessions(app_config):
    app_config.update(SESSION_IDLE_MINUTES=5, SESSION_MAX_HOURS=1)
    return app_config


def test_the_idle_time_and_lifetime_are_settings(short_sessions, app, client, program,
                                                 signed_in, clock):
    signed_in(AYESHA)
    clock.advance(minutes=6)
    assert client.get("/").status_code == 302
    signed_in(AYESHA)
    for _ in range(15):  # busy, every 4 minutes: 60 minutes
        clock.advance(minutes=4)
        assert client.get("/").status_code == 200
    clock.advance(minutes=4)
    assert client.get("/").status_code == 302


def test_a_session_cookie_without_its_sign_in_time_is_no_session(app, client, program,
                                                                 signed_in):
    signed_in(AYESHA)
    with client.session_transaction() as stored:
        del stored[security.SIGNED_IN_AT]
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("path", ["/", PROGRAM_PAGE, "/me"])
def test_portal_pages_are_never_stored_by_a_cache(client, program, signed_in, path):
    signed_in(AYESHA)
    _claim(client)
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
