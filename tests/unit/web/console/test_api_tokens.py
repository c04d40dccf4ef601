"""Admins make and revoke API tokens at /manage/api-tokens: the token is shown once, the list
never shows it, a revoked token stops working at once, every change is audited, and every
form carries its CSRF token. (Which roles reach these pages: test_managers' route table.)"""

from __future__ import annotations

import re

import pytest
from sqlmodel import select

from tests.helpers import csrf_token
from wellness_perks.models import ApiToken, AuditEvent

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

NEW = "/manage/api-tokens/new"
PROGRAMS = "/api/v1/programs"


def _make(admin, **data):
    page = admin.get(NEW)
    return admin.post(NEW, data={"name": "nightly report", "role": "viewer",
                                 "csrf_token": csrf_token(page.text), **data})


def _shown_token(response) -> str:
    return re.search(r'id="api-token">([^<]+)<', response.text).group(1)


def test_an_admin_makes_a_token_shown_once_and_listed_without_it(app, manager_client,
                                                                 session):
    admin = manager_client("admin")
    assert 'href="/manage/api-tokens"' in admin.get("/manage/managers").text
    response = _make(admin, role="manager", expires_days="30")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert "Copy it now: it will not be shown again." in response.text
    token = _shown_token(response)
    listed = admin.get("/manage/api-tokens")
    assert token not in listed.text and token[17:] not in listed.text
    session.rollback()
    [row] = session.exec(select(ApiToken)).all()
    assert (row.name, row.role, row.created_by) == ("nightly report", "manager",
                                                    admin.manager_id)
    assert (row.expires_at - row.created_at).days == 30
    line = re.search(r"<tr>\s*<th scope=\"row\">nightly report</th>.*?</tr>", listed.text,
                     re.S).group(0)
    assert f"<code>{row.prefix}</code>" in line and "admin0@managers.example" in line
    assert "<td>never</td>" in line and "active" in line and "Revoke" in line
    assert app.test_client().get(PROGRAMS, headers={
        "Authorization": f"Bearer {token}"}).status_code == 200
    assert session.exec(select(AuditEvent.actor).where(
        AuditEvent.action == "api_token.created")).all() == [f"manager:{admin.manager_id}"]
    # One that never expires; and the list is in the admin's menu, not in a manager's.
    assert _make(admin, name="forever", expires_days="").status_code == 200
    session.rollback()
    assert session.exec(select(ApiToken.expires_at).where(
        ApiToken.name == "forever")).all() == [None]
    assert 'href="/manage/api-tokens"' in admin.get("/manage/").text
    assert 'href="/manage/api-tokens"' not in manager_client("manager").get("/manage/").text


def test_a_wrong_new_token_is_a_400_that_says_what_and_makes_none(manager_client, session):
    admin = manager_client("admin")
    for data, words in (({"name": ""}, "Give the token a name"),
                        ({"name": "x" * 101}, "longer than 100 characters"),
                        ({"role": "owner"}, "Choose a role"),
                        ({"expires_days": "soon"}, "whole number of days"),
                        ({"expires_days": "0"}, "from 1 to 3650")):
        response = _make(admin, **data)
        assert response.status_code == 400, data
        assert words in response.text, data
        assert 'id="api-token"' not in response.text
    session.rollback()
    assert session.exec(select(ApiToken)).all() == []


def test_revoking_stops_the_token_at_once_and_is_audited(app, manager_client, session):
    admin = manager_client("admin")
    token = _shown_token(_make(admin))
    api = app.test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.get(PROGRAMS, headers=bearer).status_code == 200
    session.rollback()
    [row] = session.exec(select(ApiToken)).all()
    page = admin.get("/manage/api-tokens")
    revoke = f"/manage/api-tokens/{row.id}/revoke"
    # Without their CSRF token the forms change nothing.
    assert admin.post(revoke).status_code == 400
    refused = admin.post(NEW, data={"name": "nightly report", "role": "viewer"})
    assert refused.status_code == 400 and "This form has expired" in refused.text
    session.rollback()
    assert len(session.exec(select(ApiToken)).all()) == 1
    assert api.get(PROGRAMS, headers=bearer).status_code == 200
    response = admin.post(revoke, data={"csrf_token": csrf_token(page.text)})
    assert response.headers["Location"] == "/manage/api-tokens"
    listed = admin.get("/manage/api-tokens").text
    assert f"The token {row.prefix} is revoked" in listed and "revoked" in listed
    assert api.get(PROGRAMS, headers=bearer).status_code == 401
    again = admin.post(revoke, data={"csrf_token": csrf_token(page.text)})
    assert again.status_code == 302
    assert "was already revoked" in admin.get("/manage/api-tokens").text
    session.rollback()
    assert session.exec(select(AuditEvent.actor, AuditEvent.object_id).where(
        AuditEvent.action == "api_token.revoked")).all() == [(f"manager:{admin.manager_id}",
                                                               row.id)]
    assert session.get(ApiToken, row.id).revoked_by == admin.manager_id
