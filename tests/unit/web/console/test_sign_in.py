"""The console's sign-in, tried as an attacker would: a password for managers (never a creator's
mailed link), the same answer for a wrong address and a wrong password, a lockout after too many
failures, sign-out that ends a copied cookie, and roles checked on every route."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD, sign_in_manager
from tests.helpers import csrf_token
from wellness_perks.db import new_session
from wellness_perks.models import AuditEvent, Manager
from wellness_perks.services import auth
from wellness_perks.web.security import ManagerUser, role_required

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

LEAD = "lead@platform.example"


@pytest.fixture
def lead(app):
    with app.app_context(), new_session() as session:
        return auth.create_manager(session, email=LEAD, password=MANAGER_PASSWORD,
                                   role="manager", actor="test").id


def test_anonymous_visitors_are_sent_to_the_console_sign_in_and_back(client):
    response = client.get("/manage/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/manage/login?next=%2Fmanage%2F"
    page = client.get(response.headers["Location"]).text
    # The console's own words: a manager is not asked to sign in "to see your perks".
    assert "Sign in to the console to see this page." in page
    assert "perks." not in page


def test_a_manager_signs_in_with_a_password_and_sees_the_programs(app, client, factory, lead):
    factory.program(slug="headspace-6m", quota=7)
    response = sign_in_manager(client, LEAD)
    assert response.status_code == 302 and response.headers["Location"] == "/manage/"
    page = client.get("/manage/")
    assert page.status_code == 200
    assert "headspace-6m" in page.text and LEAD in page.text
    assert page.headers["Cache-Control"] == "no-store"
    with app.app_context(), new_session() as session:
        assert session.exec(select(AuditEvent.action).where(
            AuditEvent.object_type == "manager", AuditEvent.object_id == lead)).all() == [
            "manager.created", "manager.signed_in"]
        assert session.get(Manager, lead).last_login_at is not None


def test_the_page_asked_for_is_where_a_manager_lands_but_never_outside_the_console(
        client, lead):
    page = client.get("/manage/login?next=/manage/?x=1")
    response = client.post("/manage/login", data={
        "email": LEAD, "password": MANAGER_PASSWORD, "next": "/manage/?x=1",
        "csrf_token": csrf_token(page.text)})
    assert response.headers["Location"] == "/manage/?x=1"
    for elsewhere in ("//evil.example/", "https://evil.example/", "/programs/x"):
        other = client.application.test_client()
        page = other.get("/manage/login")
        response = other.post("/manage/login", data={
            "email": LEAD, "password": MANAGER_PASSWORD, "next": elsewhere,
            "csrf_token": csrf_token(page.text)})
        assert response.headers["Location"] == "/manage/", elsewhere


@pytest.mark.parametrize("address, password", [
    (LEAD, "wrong password, long enough"),
    ("nobody@platform.example", MANAGER_PASSWORD),
    ("not an address", MANAGER_PASSWORD),
])
def test_a_wrong_address_and_a_wrong_password_get_the_same_answer(client, lead, address,
                                                                  password):
    response = sign_in_manager(client, address, password)
    assert response.status_code == 400
    assert "do not match an active console account" in response.text
    assert client.get("/manage/").status_code == 302  # not signed in


def test_a_sign_in_without_its_csrf_token_is_refused(client, lead):
    response = client.post("/manage/login", data={"email": LEAD, "password": MANAGER_PASSWORD})
    assert response.status_code == 400
    assert client.get("/manage/").status_code == 302


def test_a_disabled_manager_cannot_sign_in_and_their_sessions_end(app, client, lead):
    assert sign_in_manager(client, LEAD).status_code == 302
    with app.app_context(), new_session() as session:
        session.execute(sa.update(Manager).where(Manager.id == lead)
                        .values(disabled_at=datetime.now(UTC)))
        session.commit()
    assert client.get("/manage/").status_code == 302  # the open session names no one now
    assert sign_in_manager(client, LEAD).status_code == 400


@pytest.fixture
def low_limits(app_config):
    app_config.update(RATELIMIT_MANAGER_PASSWORD_FAILURES="3 per 15 minutes")


def test_too_many_wrong_passwords_lock_the_address_out_even_for_the_right_one(
        low_limits, client, lead):
    for _ in range(3):
        assert sign_in_manager(client, LEAD, "wrong password, long enough").status_code == 400
    response = sign_in_manager(client, LEAD)  # the right password, too late
    assert response.status_code == 429 and "Too many wrong passwords" in response.text
    assert int(response.headers["Retry-After"]) > 0
    assert client.get("/manage/").status_code == 302
    other = client.application.test_client()  # another address is not held up
    assert sign_in_manager(other, "other@platform.example").status_code == 400


def test_a_new_password_set_by_an_admin_ends_the_lockout_audited(low_limits, app, client,
                                                                  lead):
    """``set-password`` for a manager locked out by wrong passwords: the lockout ends with the
    old password, and the new one signs them in at once (audited, with how many failures)."""
    for _ in range(3):
        assert sign_in_manager(client, LEAD, "wrong password, long enough").status_code == 400
    assert sign_in_manager(client, LEAD).status_code == 429
    result = app.test_cli_runner().invoke(
        args=["set-password", LEAD, "--password-stdin"], input="a new and longer passphrase\n")
    assert result.exit_code == 0, result.output
    assert sign_in_manager(client, LEAD, MANAGER_PASSWORD).status_code == 400  # the old one
    assert sign_in_manager(client, LEAD, "a new and longer passphrase").status_code == 302
    assert "3 wrong password(s) forgotten" in result.output
    with app.app_context(), new_session() as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.object_type == "manager",
                                                       AuditEvent.object_id == lead)
                              .order_by(AuditEvent.id)).all()
    assert [(e.actor, e.action, e.detail) for e in events
            if e.action.startswith(("manager.password", "manager.lockout"))] == [
        ("cli", "manager.password_set", None),
        ("cli", "manager.lockout_cleared", '{"failures": 3}')]


def test_a_new_password_for_an_address_not_locked_out_clears_nothing(low_limits, app, lead):
    result = app.test_cli_runner().invoke(
        args=["set-password", LEAD, "--password-stdin"], input="a new and longer passphrase\n")
    assert result.exit_code == 0 and "forgotten" not in result.output, result.output
    with app.app_context(), new_session() as session:
        actions = session.exec(select(AuditEvent.action).where(
            AuditEvent.action.like("manager.%"))).all()
    assert "manager.lockout_cleared" not in actions


def test_a_right_password_forgets_the_failures_before_it(low_limits, app, client, lead):
    for _ in range(2):
        sign_in_manager(client, LEAD, "wrong password, long enough")
    assert sign_in_manager(client, LEAD).status_code == 302
    other = app.test_client()
    for _ in range(2):
        assert sign_in_manager(other, LEAD, "wrong password, long enough").status_code == 400
    assert sign_in_manager(other, LEAD).status_code == 302


def test_a_copied_console_cookie_stops_working_at_sign_out(app, client, lead):
    assert sign_in_manager(client, LEAD).status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", client.get_cookie("session").value)
    assert thief.get("/manage/").status_code == 200
    page = client.get("/manage/")
    assert client.post("/manage/logout",
                       data={"csrf_token": csrf_token(page.text)}).status_code == 302
    for browser in (client, thief):
        assert browser.get("/manage/").status_code == 302


def test_a_creator_session_gets_no_console_and_a_manager_session_no_portal(
        app, client, factory, signed_in, manager_client):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    signed_in("ayesha@example.com")
    assert client.get("/manage/").status_code == 403
    console = manager_client("viewer")
    assert console.get("/manage/").status_code == 200
    assert console.get("/").status_code == 403


def test_roles_include_the_ones_below_them():
    viewer, manager, admin = (ManagerUser(1, "m@x.example", role, 0)
                              for role in ("viewer", "manager", "admin"))
    assert [viewer.can(r) for r in ("viewer", "manager", "admin")] == [True, False, False]
    assert [manager.can(r) for r in ("viewer", "manager", "admin")] == [True, True, False]
    assert [admin.can(r) for r in ("viewer", "manager", "admin")] == [True, True, True]
    with pytest.raises(ValueError):
        role_required("owner")


def test_a_manager_needs_a_known_role_and_a_long_password(app):
    with app.app_context(), new_session() as session:
        with pytest.raises(auth.InvalidInput) as unknown:
            auth.create_manager(session, email=LEAD, password=MANAGER_PASSWORD, role="owner",
                                actor="test")
        assert unknown.value.code == "manager_role_unknown"
        with pytest.raises(auth.InvalidInput):
            auth.create_manager(session, email=LEAD, password="short", actor="test")
        assert session.exec(select(Manager)).all() == []


def test_the_database_refuses_a_role_it_does_not_know(app):
    with app.app_context(), new_session() as session:
        manager_id = auth.create_manager(session, email=LEAD, password=MANAGER_PASSWORD,
                                         actor="test").id
        with pytest.raises(sa.exc.IntegrityError):
            session.execute(sa.update(Manager).where(Manager.id == manager_id)
                            .values(role="owner"))
            session.commit()


def test_console_pages_are_english_unindexed_and_without_the_portals_footer(client):
    page = client.get("/manage/login", headers={"Accept-Language": "ur"})
    assert '<html lang="en" dir="ltr">' in page.text
    assert '<meta name="robots" content="noindex, nofollow">' in page.text
    assert "<title>Sign in · Wellness Perks console</title>" in page.text
    assert '<body class="console">' in page.text and "<footer" not in page.text
    portal = client.get("/login")
    assert "noindex" not in portal.text and "<footer" in portal.text
