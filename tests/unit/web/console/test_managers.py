"""Admins manage the other console accounts at /manage/managers; every console route checks
the role, and every change is audited and takes effect at once."""

from __future__ import annotations

import re

import pytest
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD, enroll_two_factor, sign_in_manager
from tests.helpers import csrf_token
from wellness_perks.db import new_session
from wellness_perks.models import AuditEvent, Manager
from wellness_perks.services import auth

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

LEAD = "lead@platform.example"

# Every console page and action a signed-in manager reaches, and the least role it needs.
CONSOLE_ROUTES = [
    ("get", "/manage/", "viewer"),
    ("get", "/manage/security", "viewer"),
    ("get", "/manage/security/two-factor", "viewer"),
    ("post", "/manage/security/two-factor", "viewer"),
    ("post", "/manage/security/two-factor/disable", "viewer"),
    ("get", "/manage/managers", "admin"),
    ("get", "/manage/managers/new", "admin"),
    ("post", "/manage/managers/new", "admin"),
    ("post", "/manage/managers/{id}/role", "admin"),
    ("post", "/manage/managers/{id}/disable", "admin"),
    ("post", "/manage/managers/{id}/enable", "admin"),
    ("post", "/manage/managers/{id}/reset-two-factor", "admin"),
    ("get", "/manage/api-tokens", "admin"),
    ("get", "/manage/api-tokens/new", "admin"),
    ("post", "/manage/api-tokens/new", "admin"),
    # An API token that does not exist is found by nobody let in (404).
    ("post", "/manage/api-tokens/{api_token}/revoke", "admin"),
    ("get", "/manage/programs/{slug}", "viewer"),
    ("get", "/manage/programs/new", "admin"),
    ("post", "/manage/programs/new", "admin"),
    ("get", "/manage/programs/{slug}/edit", "manager"),
    ("post", "/manage/programs/{slug}/edit", "manager"),
    ("post", "/manage/programs/{slug}/open", "manager"),
    ("post", "/manage/programs/{slug}/pause", "manager"),
    ("post", "/manage/programs/{slug}/resume", "manager"),
    ("post", "/manage/programs/{slug}/close", "manager"),
    ("get", "/manage/programs/{slug}/batches", "manager"),
    ("post", "/manage/programs/{slug}/batches", "manager"),
    ("get", "/manage/programs/{slug}/creators/upload", "manager"),
    ("post", "/manage/programs/{slug}/creators/upload", "manager"),
    # An upload and an import are their manager's own: anyone else let in finds none (404).
    ("get", "/manage/programs/{slug}/uploads/{token}", "manager"),
    ("post", "/manage/programs/{slug}/uploads/{token}/commit", "manager"),
    ("post", "/manage/programs/{slug}/uploads/{token}/cancel", "manager"),
    ("get", "/manage/programs/{slug}/imports/{job}", "manager"),
    ("get", "/manage/programs/{slug}/export", "viewer"),
    ("get", "/manage/programs/{slug}/export.csv", "viewer"),
    ("post", "/manage/programs/{slug}/export.csv", "admin"),
    # A claim that does not exist is found by nobody let in (404).
    ("get", "/manage/programs/{slug}/claims/{claim}/reveal", "manager"),
    ("post", "/manage/programs/{slug}/claims/{claim}/reveal", "manager"),
    ("get", "/manage/programs/{slug}/delivery", "viewer"),
    ("post", "/manage/programs/{slug}/delivery/resend-failed", "manager"),
    ("get", "/manage/programs/{slug}/invitations", "viewer"),
    ("post", "/manage/programs/{slug}/invitations", "manager"),
    ("get", "/manage/audit", "viewer"),
    ("get", "/manage/programs/{slug}/creators", "viewer"),
    ("post", "/manage/programs/{slug}/creators", "manager"),
    # A creator is found by id: the signed-in creator's own (1), or none (404).
    ("get", "/manage/programs/{slug}/creators/{creator}", "viewer"),
    ("post", "/manage/programs/{slug}/creators/{creator}/resend", "manager"),
    ("post", "/manage/programs/{slug}/creators/{creator}/reissue", "manager"),
    ("post", "/manage/programs/{slug}/creators/{creator}/remove", "manager"),
]


@pytest.fixture
def lead(app):
    with app.app_context(), new_session() as session:
        return auth.create_manager(session, email=LEAD, password=MANAGER_PASSWORD,
                                   actor="test").id


def _request(browser, method, path, data=None):
    """A request with a valid CSRF token of the browser's session (the role is what is tried)."""
    page = browser.get("/manage/login")
    if page.status_code != 200:
        page = browser.get("/manage/security")
    token = csrf_token(page.text) if 'name="csrf_token"' in page.text else ""
    # Buffered: a streamed answer (the CSV export) is read to its end and closed, as a server
    # does, so the request's context ends with it.
    if method == "get":
        return browser.get(path, buffered=True)
    return browser.post(path, data={"csrf_token": token, **(data or {})}, buffered=True)


def test_the_list_of_routes_is_every_console_route(app):
    rules = {(method.lower(), rule.rule.replace("<int:manager_id>", "{id}")
              .replace("<slug>", "{slug}").replace("<token>", "{token}")
              .replace("<int:job_id>", "{job}").replace("<int:claim_id>", "{claim}")
              .replace("<int:creator_id>", "{creator}")
              .replace("<int:token_id>", "{api_token}"))
             for rule in app.url_map.iter_rules() if rule.rule.startswith("/manage/")
             for method in rule.methods - {"HEAD", "OPTIONS"}}
    sign_in = {("get", "/manage/login"), ("post", "/manage/login"), ("post", "/manage/logout"),
               ("get", "/manage/login/code"), ("post", "/manage/login/code"),
               ("get", "/manage/login/enroll"), ("post", "/manage/login/enroll")}
    assert rules - sign_in == {(method, path) for method, path, _ in CONSOLE_ROUTES}


@pytest.mark.parametrize("method, path, role", CONSOLE_ROUTES)
def test_every_console_route_checks_the_role(app, factory, signed_in, manager_client, lead,
                                             method, path, role):
    found_by_owner = ("{token}" in path or "{job}" in path or "{claim}" in path
                      or "{api_token}" in path)
    path = path.format(id=lead, slug="headspace-6m", token="no-such-upload", job=999999,
                       claim=999999, creator=1, api_token=999999)
    anonymous = app.test_client()
    response = _request(anonymous, method, path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/manage/login")
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    creator = signed_in("ayesha@example.com")
    token = csrf_token(creator.get("/me").text)
    response = (creator.get(path) if method == "get"
                else creator.post(path, data={"csrf_token": token}))
    assert response.status_code == 403
    ranks = ("viewer", "manager", "admin")
    for who in ranks:
        response = _request(manager_client(who), method, path)
        if ranks.index(who) < ranks.index(role):
            assert response.status_code == 403, who
        else:  # let in: the view itself answers (a page, a redirect, or its form's 400)
            assert response.status_code in ((200, 302, 400, 404) if found_by_owner
                                            else (200, 302, 400)), who
            assert not response.headers.get("Location", "").startswith("/manage/login"), who


def _post(browser, action, data=None):
    page = browser.get("/manage/managers")
    return browser.post(action, data={"csrf_token": csrf_token(page.text), **(data or {})})


def _audit(session):
    session.rollback()
    return [(e.actor, e.action, e.object_id, e.detail) for e in session.exec(
        select(AuditEvent).where(AuditEvent.actor.like("manager:%"),
                                 AuditEvent.action != "manager.signed_in")
        .order_by(AuditEvent.id))]


def test_the_list_shows_each_manager(app, manager_client, lead):
    enroll_two_factor(app, lead)
    sign_in_manager(app.test_client(), LEAD)  # half a sign-in: no last sign-in yet
    admin = manager_client("admin")
    page = admin.get("/manage/managers")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    row = re.search(rf"<tr>\s*<th scope=\"row\">{re.escape(LEAD)}.*?</tr>", page.text, re.S)
    assert row, page.text
    assert '<option value="manager" selected>' in row.group(0)
    assert "<td>on</td>" in row.group(0) and "<td>never</td>" in row.group(0)
    assert "<td>active</td>" in row.group(0) and "Reset two-factor" in row.group(0)
    mine = re.search(r"<tr>\s*<th scope=\"row\">admin0@managers.example.*?</tr>", page.text,
                     re.S).group(0)
    assert "(you)" in mine and "UTC</td>" in mine
    assert 'href="/manage/managers"' in admin.get("/manage/").text  # in the admin's menu
    assert 'href="/manage/managers"' not in manager_client("manager").get("/manage/").text


def test_an_admin_adds_a_manager_with_a_password_or_a_generated_one(app, manager_client,
                                                                    session):
    admin = manager_client("admin")
    page = admin.get("/manage/managers/new")
    response = admin.post("/manage/managers/new", data={
        "email": "new@platform.example", "role": "viewer", "password": MANAGER_PASSWORD,
        "csrf_token": csrf_token(page.text)})
    assert response.headers["Location"] == "/manage/managers"
    assert "new@platform.example can sign in now." in admin.get("/manage/managers").text
    assert sign_in_manager(app.test_client(), "new@platform.example").status_code == 302
    response = admin.post("/manage/managers/new", data={
        "email": "made@platform.example", "role": "admin", "password": "",
        "csrf_token": csrf_token(page.text)})
    assert response.status_code == 200 and "shown only now" in response.text
    password = re.search(r'id="generated-password">([^<]+)<', response.text).group(1)
    browser = app.test_client()
    assert sign_in_manager(browser, "made@platform.example", password).headers[
        "Location"] == "/manage/login/enroll"  # an admin: sets up two-factor first
    assert password not in admin.get("/manage/managers").text
    session.rollback()
    created = session.exec(select(AuditEvent.actor).where(
        AuditEvent.action == "manager.created",
        AuditEvent.detail.like("%platform.example%"))).all()
    assert created == [f"manager:{admin.manager_id}"] * 2


@pytest.mark.parametrize("data, field, words", [
    ({"email": "not an address", "role": "viewer"}, "email", "not a valid email address"),
    ({"email": "", "role": "viewer"}, "email", "Enter the email address"),
    ({"email": LEAD, "role": "viewer"}, "email", "already a console account"),
    ({"email": "x@platform.example", "role": "owner"}, "role", "Choose a role"),
    ({"email": "x@platform.example", "role": "viewer", "password": "short"}, "password",
     "at least 12 characters"),
])
def test_a_wrong_new_manager_is_a_400_that_says_what_and_where(manager_client, lead, session,
                                                               data, field, words):
    admin = manager_client("admin")
    page = admin.get("/manage/managers/new")
    response = admin.post("/manage/managers/new",
                          data={**data, "csrf_token": csrf_token(page.text)})
    assert response.status_code == 400
    assert words in response.text
    if field != "role":
        assert f'id="{field}-error"' in response.text
    session.rollback()
    assert len(session.exec(select(Manager)).all()) == 2  # the lead and the admin


def test_changing_a_role_is_audited_and_ends_their_sessions(app, manager_client, lead,
                                                            session):
    admin = manager_client("admin")
    lead_browser = app.test_client()
    sign_in_manager(lead_browser, LEAD)
    assert lead_browser.get("/manage/").status_code == 200
    response = _post(admin, f"/manage/managers/{lead}/role", {"role": "viewer"})
    assert response.headers["Location"] == "/manage/managers"
    assert lead_browser.get("/manage/").status_code == 302
    session.rollback()
    assert session.get(Manager, lead).role == "viewer"
    assert _audit(session)[-1] == (f"manager:{admin.manager_id}", "manager.role_changed", lead,
                                   '{"from": "manager", "to": "viewer"}')
    bad = _post(admin, f"/manage/managers/{lead}/role", {"role": "owner"})
    assert bad.status_code == 400 and "Choose a role" in bad.text


def test_disable_ends_their_sessions_at_once_and_enable_lets_them_back(app, manager_client,
                                                                       lead, session):
    admin = manager_client("admin")
    lead_browser = app.test_client()
    sign_in_manager(lead_browser, LEAD)
    assert _post(admin, f"/manage/managers/{lead}/disable").status_code == 302
    assert lead_browser.get("/manage/").status_code == 302
    assert sign_in_manager(app.test_client(), LEAD).status_code == 400
    assert "disabled since" in admin.get("/manage/managers").text
    assert _post(admin, f"/manage/managers/{lead}/enable").status_code == 302
    assert sign_in_manager(app.test_client(), LEAD).status_code == 302
    actor = f"manager:{admin.manager_id}"
    assert _audit(session)[-2:] == [(actor, "manager.disabled", lead, None),
                                    (actor, "manager.enabled", lead, None)]


def test_resetting_an_admins_two_factor_makes_them_enrol_again(app, manager_client, session):
    admin = manager_client("admin")
    other = manager_client("admin")
    assert _post(admin, f"/manage/managers/{other.manager_id}/reset-two-factor").status_code == 302
    assert other.get("/manage/").status_code == 302  # their session ended
    browser = app.test_client()
    assert sign_in_manager(browser, "admin1@managers.example").headers["Location"] == (
        "/manage/login/enroll")
    assert _audit(session)[-1] == (f"manager:{admin.manager_id}",
                                   "manager.two_factor_disabled", other.manager_id,
                                   '{"by": "admin"}')


def test_the_last_active_admin_cannot_disable_or_demote_themself(manager_client, session):
    admin = manager_client("admin")
    for action, data in (("disable", None), ("role", {"role": "manager"})):
        response = _post(admin, f"/manage/managers/{admin.manager_id}/{action}", data)
        assert response.status_code == 409
        assert "admin0@managers.example is the last active admin" in response.text
    assert admin.get("/manage/").status_code == 200
    session.rollback()
    me = session.get(Manager, admin.manager_id)
    assert (me.role, me.disabled_at) == ("admin", None)
    # With another active admin, they can (and their own session ends with it).
    manager_client("admin")
    assert _post(admin, f"/manage/managers/{admin.manager_id}/role",
                 {"role": "manager"}).status_code == 302
    assert admin.get("/manage/").status_code == 302


def test_an_unknown_manager_is_a_404(manager_client):
    admin = manager_client("admin")
    for action in ("role", "disable", "enable", "reset-two-factor"):
        assert _post(admin, f"/manage/managers/999/{action}",
                     {"role": "viewer"}).status_code == 404
