"""The API token commands: ``create-api-token`` prints the token once (alone on standard
output), only by an active admin; ``list-api-tokens`` never prints it; ``revoke-api-token``
stops it at once. Each a thin call into services/api_tokens.py."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD
from wellness_perks.db import get_session
from wellness_perks.models import ApiToken, AuditEvent
from wellness_perks.services import api_tokens, auth

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

BOSS = "boss@platform.example"


def _run(runner, *args):
    return runner.invoke(args=[str(a) for a in args])


def _manager(app, email: str, role: str) -> int:
    with app.app_context():
        return auth.create_manager(get_session(), email=email, password=MANAGER_PASSWORD,
                                   role=role, actor="test").id


def _rows(session) -> list[ApiToken]:
    session.rollback()
    return list(session.exec(select(ApiToken).order_by(ApiToken.id)))


def test_create_prints_the_token_once_and_list_and_revoke_never_do(app, runner, session):
    boss = _manager(app, BOSS, "admin")
    made = _run(runner, "create-api-token", "--name", "nightly report", "--role", "manager",
                "--by", "Boss@Platform.example", "--expires-days", 7)
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("wpt_")
    assert "copy it now, it will not be shown again" in made.stderr
    [row] = _rows(session)
    assert (row.name, row.role, row.created_by) == ("nightly report", "manager", boss)
    assert row.prefix in made.stderr and "expires" in made.stderr
    with app.app_context():
        assert api_tokens.authenticate(get_session(), token).role == "manager"

    listed = _run(runner, "list-api-tokens")
    assert listed.exit_code == 0 and token not in listed.output and token[17:] not in listed.output
    header, line = listed.stdout.splitlines()
    assert header.split()[:4] == ["prefix", "name", "role", "state"]
    assert line.startswith(row.prefix) and "nightly report" in line and "active" in line
    assert BOSS in line
    [entry] = json.loads(_run(runner, "list-api-tokens", "--json").stdout)
    assert (entry["prefix"], entry["state"], entry["created_by"]) == (row.prefix, "active", BOSS)
    assert token not in json.dumps(entry)

    revoked = _run(runner, "revoke-api-token", row.prefix)
    assert revoked.exit_code == 0 and revoked.stdout == f"token {row.prefix} revoked\n"
    with app.app_context():
        assert api_tokens.authenticate(get_session(), token) is None
    again = _run(runner, "revoke-api-token", row.prefix)
    assert again.exit_code == 0 and "already revoked" in again.stdout
    assert json.loads(_run(runner, "list-api-tokens", "--json").stdout)[0]["state"] == "revoked"
    session.rollback()
    assert session.exec(select(AuditEvent.actor, AuditEvent.action).where(
        AuditEvent.object_type == "api_token").order_by(AuditEvent.id)).all() == [
        ("cli", "api_token.created"), ("cli", "api_token.revoked")]
    assert _rows(session)[0].revoked_by is None


def test_create_refuses_anyone_but_an_active_admin_and_bad_input(app, runner, session):
    _manager(app, "lead@platform.example", "manager")
    for by, fragment in (("lead@platform.example", "is not an active admin"),
                         ("nobody@platform.example", "no manager with email")):
        result = _run(runner, "create-api-token", "--name", "x", "--role", "viewer", "--by", by)
        assert result.exit_code == 1 and fragment in result.stderr, result.output
        assert "wpt_" not in result.output
    _manager(app, BOSS, "admin")
    for options, fragment in ((("--role", "owner"), "'owner' is not one of"),
                              (("--role", "viewer", "--expires-days", 0), "--expires-days"),
                              (("--role", "viewer", "--name", " "), "give the token a name")):
        result = _run(runner, "create-api-token", "--name", "x", "--by", BOSS, *options)
        assert result.exit_code in (1, 2) and fragment in result.stderr, result.output
    assert _rows(session) == []


def test_list_and_revoke_with_no_such_token(runner):
    assert _run(runner, "list-api-tokens").stdout == (
        "no API token yet: create-api-token makes one\n")
    result = _run(runner, "revoke-api-token", "000000000000")
    assert result.exit_code == 1 and "no API token 000000000000" in result.stderr
