"""Two-factor sign-in at the console, tried as an attacker would: a right password alone signs
no one in, the half-done sign-in lasts minutes and a few codes and ends with the account's
sessions, a code works once, wrong codes lock the address out with wrong passwords, and an admin
gets no session before their second factor is set up."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.conftest import (
    MANAGER_PASSWORD,
    enroll_two_factor,
    enter_code,
    sign_in_manager,
    totp_code,
)
from tests.helpers import csrf_token
from wellness_perks.db import new_session
from wellness_perks.models import AuditEvent, Manager
from wellness_perks.services import auth, two_factor
from wellness_perks.web import security

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

LEAD = "lead@platform.example"
ADMIN = "admin@platform.example"
CODE_PAGE = "/manage/login/code"
ENROLL_PAGE = "/manage/login/enroll"


def _create(app, email=LEAD, role="manager") -> int:
    with app.app_context(), new_session() as session:
        return auth.create_manager(session, email=email, password=MANAGER_PASSWORD, role=role,
                                   actor="test").id


@pytest.fixture
def lead(app):
    """A manager with two-factor sign-in on: (id, TOTP secret)."""
    manager_id = _create(app)
    return manager_id, enroll_two_factor(app, manager_id)


@pytest.fixture
def later(monkeypatch):
    """Moves the TOTP clock on by some seconds."""
    def _move(seconds: float) -> None:
        now = two_factor.clock()
        monkeypatch.setattr(two_factor, "clock", lambda: now + seconds)
    return _move


def _signed_in(client) -> bool:
    return client.get("/manage/").status_code == 200


def _actions(session, manager_id):
    session.rollback()
    return session.exec(select(AuditEvent.action).where(
        AuditEvent.object_type == "manager", AuditEvent.object_id == manager_id)
        .order_by(AuditEvent.id)).all()


def _manager(session, manager_id) -> Manager:
    session.rollback()
    return session.get(Manager, manager_id)


def test_the_password_alone_does_not_sign_in_a_manager_with_two_factor(client, lead, session):
    manager_id, secret = lead
    response = sign_in_manager(client, LEAD)
    assert response.status_code == 302 and response.headers["Location"] == CODE_PAGE
    assert not _signed_in(client)
    assert _manager(session, manager_id).last_login_at is None  # not signed in yet
    page = client.get(CODE_PAGE)
    assert page.status_code == 200 and "6-digit code" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    response = enter_code(client, totp_code(secret, 1))
    assert response.status_code == 302 and response.headers["Location"] == "/manage/"
    assert _signed_in(client)
    assert _manager(session, manager_id).last_login_at is not None
    assert _actions(session, manager_id)[-1] == "manager.signed_in"
    session.rollback()
    assert session.exec(select(AuditEvent.detail).where(
        AuditEvent.action == "manager.signed_in")).all() == ['{"second_factor": "totp"}']


def test_the_page_asked_for_is_kept_through_the_code_step(client, lead):
    _, secret = lead
    page = client.get("/manage/login?next=/manage/security")
    client.post("/manage/login", data={"email": LEAD, "password": MANAGER_PASSWORD,
                                       "next": "/manage/security",
                                       "csrf_token": csrf_token(page.text)})
    assert enter_code(client, totp_code(secret, 1)).headers["Location"] == "/manage/security"


def test_a_manager_without_two_factor_signs_in_with_the_password(client, app):
    _create(app, role="viewer")
    response = sign_in_manager(client, LEAD)
    assert response.headers["Location"] == "/manage/"
    assert _signed_in(client)


def test_the_code_step_without_a_right_password_sends_to_the_sign_in(client, lead):
    _, secret = lead
    response = client.get(CODE_PAGE)
    assert response.status_code == 302 and response.headers["Location"] == "/manage/login"
    page = client.get("/manage/login")
    response = client.post(CODE_PAGE, data={"code": totp_code(secret, 1),
                                            "csrf_token": csrf_token(page.text)})
    assert response.headers["Location"] == "/manage/login"
    assert not _signed_in(client)
    assert "Sign in again with your password." in client.get("/manage/login").text


def test_a_code_signs_in_once_and_not_again_in_another_browser(app, client, lead):
    _, secret = lead
    code = totp_code(secret, 1)
    sign_in_manager(client, LEAD)
    assert enter_code(client, code).headers["Location"] == "/manage/"
    thief = app.test_client()  # saw the code, and knows the password
    sign_in_manager(thief, LEAD)
    response = enter_code(thief, code)
    assert response.status_code == 400 and "has been used already" in response.text
    assert not _signed_in(thief)


def test_a_recovery_code_signs_in_once_and_is_audited(app, client, session):
    manager_id = _create(app)
    with app.app_context(), new_session() as db:
        secret = two_factor.start_enrollment(db, manager_id=manager_id).secret
        codes = two_factor.confirm_enrollment(db, manager_id=manager_id,
                                              code=totp_code(secret), actor="test")
    sign_in_manager(client, LEAD)
    assert enter_code(client, codes[0]).headers["Location"] == "/manage/"
    assert _actions(session, manager_id)[-2:] == ["manager.recovery_code_used",
                                                  "manager.signed_in"]
    other = app.test_client()
    sign_in_manager(other, LEAD)
    assert enter_code(other, codes[0]).status_code == 400
    assert not _signed_in(other)


@pytest.mark.parametrize("code", ["", "x" * 33])
def test_a_missing_or_overlong_code_is_a_400_that_says_so(client, lead, code):
    sign_in_manager(client, LEAD)
    response = enter_code(client, code)
    assert response.status_code == 400
    assert ("Enter the code." if not code else "That code is too long") in response.text


@pytest.fixture
def high_limits(app_config):
    """The address's lockout out of the way (by default it, too, comes at 5 failures)."""
    app_config.update(RATELIMIT_MANAGER_PASSWORD_FAILURES="50 per 15 minutes")


def test_five_wrong_codes_end_the_half_done_sign_in(high_limits, client, lead):
    _, secret = lead
    sign_in_manager(client, LEAD)
    for _ in range(two_factor.PENDING_ATTEMPTS - 1):
        response = enter_code(client, "000000")
        assert response.status_code == 400 and "That code is not right" in response.text
    response = enter_code(client, "000000")
    assert response.status_code == 302 and response.headers["Location"] == "/manage/login"
    assert "Too many wrong codes" in client.get("/manage/login").text
    # The right code now: the password is needed again first.
    assert enter_code(client, totp_code(secret, 1)).headers["Location"] == "/manage/login"
    assert not _signed_in(client)
    sign_in_manager(client, LEAD)
    assert enter_code(client, totp_code(secret, 1)).headers["Location"] == "/manage/"


def test_the_half_done_sign_in_lasts_five_minutes(client, lead, monkeypatch):
    _, secret = lead
    start = security.clock()
    monkeypatch.setattr(security, "clock", lambda: start)
    sign_in_manager(client, LEAD)
    monkeypatch.setattr(security, "clock", lambda: start + two_factor.PENDING_SECONDS + 1)
    assert enter_code(client, totp_code(secret, 1)).headers["Location"] == "/manage/login"
    assert not _signed_in(client)


def test_the_half_done_sign_in_ends_with_the_accounts_sessions(app, client, lead, session,
                                                               later):
    manager_id, secret = lead
    sign_in_manager(client, LEAD)
    with app.app_context(), new_session() as db:
        auth.end_manager_sessions(db, manager_id=manager_id)  # signed out everywhere meanwhile
    assert enter_code(client, totp_code(secret, 1)).headers["Location"] == "/manage/login"
    assert not _signed_in(client)
    sign_in_manager(client, LEAD)
    session.execute(sa.update(Manager).where(Manager.id == manager_id)
                    .values(disabled_at=datetime.now(UTC)))
    session.commit()
    later(30)
    assert enter_code(client, totp_code(secret, 1)).headers["Location"] == "/manage/login"
    assert not _signed_in(client)


@pytest.fixture
def low_limits(app_config):
    app_config.update(RATELIMIT_MANAGER_PASSWORD_FAILURES="3 per 15 minutes")


def test_wrong_codes_count_toward_the_addresss_lockout(low_limits, app, client, lead):
    _, secret = lead
    sign_in_manager(client, LEAD)
    assert enter_code(client, "000000").status_code == 400
    # A right password again does not buy more guesses: the failures stay until a code passes.
    assert sign_in_manager(client, LEAD).headers["Location"] == CODE_PAGE
    assert enter_code(client, "111111").status_code == 400
    assert enter_code(client, "222222").status_code == 400
    response = enter_code(client, totp_code(secret, 1))  # the right code, too late
    assert response.status_code == 429 and "Too many wrong" in response.text
    assert sign_in_manager(app.test_client(), LEAD).status_code == 429
    assert not _signed_in(client)


def test_a_right_code_forgets_the_failures_before_it(low_limits, client, lead):
    _, secret = lead
    sign_in_manager(client, LEAD)
    for wrong in ("000000", "111111"):
        enter_code(client, wrong)
    assert enter_code(client, totp_code(secret, 1)).headers["Location"] == "/manage/"
    client.post("/manage/logout", data={"csrf_token": csrf_token(client.get("/manage/").text)})
    sign_in_manager(client, LEAD)
    for wrong in ("000000", "111111"):
        assert enter_code(client, wrong).status_code == 400


# --------------------------------------------------------------------------- admins must


def _secret_on(page_text: str) -> str:
    return re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page_text).group(1).replace(" ", "")


def test_an_admin_without_two_factor_enrols_before_any_session(app, client, session):
    admin_id = _create(app, ADMIN, "admin")
    response = sign_in_manager(client, ADMIN)
    assert response.status_code == 302 and response.headers["Location"] == ENROLL_PAGE
    assert not _signed_in(client)
    page = client.get(ENROLL_PAGE)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    secret = _secret_on(page.text)
    assert "otpauth://totp/Wellness%20Perks:admin%40platform.example?secret=" + secret in page.text
    assert "<svg" in page.text  # the QR code, drawn on the server
    assert _manager(session, admin_id).totp_enabled_at is None
    assert client.get(ENROLL_PAGE).text.count(secret) >= 1  # the same secret on a reload
    wrong = enter_code(client, "000000", ENROLL_PAGE)
    assert wrong.status_code == 400 and "That code is not right" in wrong.text
    assert not _signed_in(client)
    done = enter_code(client, totp_code(secret), ENROLL_PAGE)
    assert done.status_code == 200 and "shown only now" in done.text
    codes = re.findall(r'<code class="code">([A-Z2-9]{5}-[A-Z2-9]{5})</code>', done.text)
    assert len(codes) == 10
    assert _signed_in(client)
    assert _actions(session, admin_id)[-2:] == ["manager.two_factor_enrolled",
                                                "manager.signed_in"]
    # From now on this admin signs in with a code, and the codes work.
    other = app.test_client()
    assert sign_in_manager(other, ADMIN).headers["Location"] == CODE_PAGE
    assert enter_code(other, codes[0]).headers["Location"] == "/manage/"


def test_a_manager_does_not_reach_the_admins_enrollment_step(client, lead):
    sign_in_manager(client, LEAD)  # waits for a code, not an enrollment
    assert client.get(ENROLL_PAGE).headers["Location"] == "/manage/login"


def test_an_admin_session_that_lost_its_second_factor_reaches_only_its_setup(
        manager_client, session):
    admin = manager_client("admin")
    session.execute(sa.update(Manager).where(Manager.id == admin.manager_id)
                    .values(totp_enabled_at=None))
    session.commit()
    for path in ("/manage/", "/manage/managers"):
        response = admin.get(path)
        assert response.headers["Location"] == "/manage/security/two-factor"
    assert admin.get("/manage/security/two-factor").status_code == 200
    assert admin.get("/manage/security").status_code == 200


# --------------------------------------------------------------------------- Security page


def test_a_viewer_sets_up_two_factor_from_the_security_page(manager_client, session, app):
    viewer = manager_client("viewer")
    page = viewer.get("/manage/security")
    assert "Off: you sign in with your password only." in page.text
    assert 'href="/manage/security/two-factor"' in page.text
    setup = viewer.get("/manage/security/two-factor")
    secret = _secret_on(setup.text)
    assert enter_code(viewer, "000000", "/manage/security/two-factor").status_code == 400
    done = enter_code(viewer, totp_code(secret), "/manage/security/two-factor")
    assert done.status_code == 200 and "shown only now" in done.text
    assert "10 recovery codes left" in viewer.get("/manage/security").text
    assert viewer.get("/manage/security/two-factor").headers["Location"] == "/manage/security"
    assert _actions(session, viewer.manager_id)[-1] == "manager.two_factor_enrolled"
    browser = app.test_client()
    assert sign_in_manager(browser, "viewer0@managers.example").headers["Location"] == CODE_PAGE


def _turn_off(browser, code):
    page = browser.get("/manage/security")
    return browser.post("/manage/security/two-factor/disable",
                        data={"code": code, "csrf_token": csrf_token(page.text)})


def test_a_manager_turns_two_factor_off_with_a_current_code(manager_client, session, app,
                                                            later):
    manager = manager_client("manager", two_factor=True)
    later(30)  # the code of the sign-in's step is used: the next step's
    wrong = _turn_off(manager, "000000")
    assert wrong.status_code == 400 and "That code is not right" in wrong.text
    assert _manager(session, manager.manager_id).totp_enabled_at is not None
    response = _turn_off(manager, totp_code(manager.totp_secret, 1))
    assert response.headers["Location"] == "/manage/security"
    assert "Two-factor sign-in is off." in manager.get("/manage/security").text
    assert _actions(session, manager.manager_id)[-1] == "manager.two_factor_disabled"
    browser = app.test_client()
    assert sign_in_manager(browser, "manager0@managers.example").headers["Location"] == (
        "/manage/")


def test_an_admin_cannot_turn_their_own_two_factor_off(manager_client, session):
    admin = manager_client("admin")
    page = admin.get("/manage/security")
    assert "/manage/security/two-factor/disable" not in page.text
    assert "ask another admin to reset it" in page.text
    response = admin.post("/manage/security/two-factor/disable", data={
        "code": totp_code(admin.totp_secret, 2), "csrf_token": csrf_token(page.text)})
    assert response.status_code == 400 and "Admins must sign in with two factors" in response.text
    assert _manager(session, admin.manager_id).totp_enabled_at is not None
