"""API tokens: only an admin makes one, the token is shown once and only its hash is kept, a
token is found by its prefix and checked in constant time, revoked, expired, unknown and wrong
tokens name no one, and every creation and revocation is audited."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD
from wellness_perks.db import new_session
from wellness_perks.models import ApiToken, AuditEvent
from wellness_perks.services import api_tokens, auth, managers
from wellness_perks.services.errors import InvalidInput

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


@pytest.fixture
def db(app):
    with app.app_context(), new_session() as session:
        yield session


@pytest.fixture
def admin(db) -> int:
    return auth.create_manager(db, email="admin@platform.example", password=MANAGER_PASSWORD,
                               role="admin", actor="test").id


def _create(db, admin, **options):
    options = {"name": "nightly report", "role": "viewer", "created_by": admin,
               "actor": f"manager:{admin}", "now": NOW, **options}
    return api_tokens.create(db, **options)


def _stored(db) -> list[ApiToken]:
    db.rollback()
    return list(db.exec(select(ApiToken).order_by(ApiToken.id)))


def _audit(db):
    db.rollback()
    return [(e.actor, e.action, e.object_id, e.detail) for e in db.exec(
        select(AuditEvent).where(AuditEvent.object_type == "api_token").order_by(AuditEvent.id))]


def test_a_token_is_shown_once_and_only_its_hash_is_stored(db, admin):
    created = _create(db, admin, role="manager", expires_in_days=30)
    token = created.token
    assert token.startswith(f"wpt_{created.row.prefix}_") and len(token) == 60
    [row] = _stored(db)
    assert row.secret_hash == hashlib.sha256(token.encode()).hexdigest()
    secret = token[len("wpt_") + 12 + 1:]
    stored = " ".join(str(value) for value in row.model_dump().values())
    assert token not in stored and secret not in stored
    assert (row.name, row.role, row.created_by, row.expires_at) == (
        "nightly report", "manager", admin, NOW + timedelta(days=30))
    assert created.row.created_by == "admin@platform.example"
    assert token not in str(_audit(db))
    assert _audit(db) == [(f"manager:{admin}", "api_token.created", row.id,
                           '{"expires_at": "2027-01-05 12:00:00+00:00", "name": "nightly '
                           f'report", "prefix": "{row.prefix}", "role": "manager"}}')]


def test_two_tokens_differ_in_prefix_and_secret(db, admin):
    one, two = _create(db, admin), _create(db, admin)
    assert one.row.prefix != two.row.prefix and one.token[17:] != two.token[17:]


def test_only_an_active_admin_makes_a_token(db, admin):
    for role in ("manager", "viewer", "admin"):
        other = auth.create_manager(db, email=f"other-{role}@platform.example",
                                    password=MANAGER_PASSWORD, role=role, actor="test").id
        if role == "admin":
            managers.disable(db, manager_id=other, actor="test", now=NOW)
        with pytest.raises(api_tokens.NotAnAdmin) as refused:
            _create(db, other)
        assert refused.value.status_code == 403, role
    with pytest.raises(api_tokens.NotAnAdmin):
        _create(db, 999999)
    assert _stored(db) == [] and _audit(db) == []


def test_bad_input_makes_no_token(db, admin):
    for options, code in (
        ({"name": "  "}, "api_token_name_required"),
        ({"name": "x" * 101}, "api_token_name_too_long"),
        ({"role": "owner"}, "manager_role_unknown"),
        ({"expires_in_days": 0}, "api_token_expiry_invalid"),
        ({"expires_in_days": 3651}, "api_token_expiry_invalid"),
    ):
        with pytest.raises(InvalidInput) as refused:
            _create(db, admin, **options)
        assert refused.value.code == code
    assert _stored(db) == []


def test_authenticate_names_the_holder_and_notes_the_use(db, admin):
    created = _create(db, admin, role="manager")
    holder = api_tokens.authenticate(db, created.token, now=NOW + timedelta(seconds=5))
    assert holder == api_tokens.TokenHolder(created.row.token_id, "nightly report", "manager",
                                            created.row.prefix)
    assert holder.actor == f"api_token:{created.row.token_id}"
    assert _stored(db)[0].last_used_at == NOW + timedelta(seconds=5)


def test_last_used_moves_at_most_once_a_minute(app, db, admin):
    token = _create(db, admin).token
    api_tokens.authenticate(db, token, now=NOW)
    statements: list[str] = []
    engine = app.extensions["db_engine"]

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        api_tokens.authenticate(db, token, now=NOW + timedelta(seconds=59))
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    # Within the minute a use is one read: no write, no write lock.
    assert [s.split()[0].upper() for s in statements if s.split()[0].upper() != "BEGIN"] == [
        "SELECT"], statements
    assert _stored(db)[0].last_used_at == NOW
    api_tokens.authenticate(db, token, now=NOW + timedelta(seconds=60))
    assert _stored(db)[0].last_used_at == NOW + timedelta(seconds=60)


def test_wrong_unknown_and_malformed_tokens_name_no_one(db, admin):
    token = _create(db, admin).token
    prefix = token[4:16]
    wrong_secret = token[:-1] + ("A" if token[-1] != "A" else "B")
    unknown_prefix = "wpt_" + ("0" * 12 if prefix != "0" * 12 else "1" * 12) + token[16:]
    for presented in (wrong_secret, unknown_prefix, None, "", "wpt_", token + "x",
                      token.upper(), "Bearer " + token, f"wpt_{prefix}_" + "a" * 100):
        assert api_tokens.authenticate(db, presented, now=NOW) is None, presented
    assert _stored(db)[0].last_used_at is None


def test_a_revoked_token_names_no_one_and_revoking_is_audited_once(db, admin):
    created = _create(db, admin)
    assert api_tokens.authenticate(db, created.token, now=NOW) is not None
    assert api_tokens.revoke(db, token_id=created.row.token_id, revoked_by=admin,
                             actor=f"manager:{admin}", now=NOW) is True
    assert api_tokens.authenticate(db, created.token, now=NOW) is None
    assert api_tokens.revoke(db, prefix=created.row.prefix, revoked_by=None, actor="cli",
                             now=NOW) is False
    [row] = _stored(db)
    assert (row.revoked_at, row.revoked_by) == (NOW, admin)
    assert _audit(db)[1:] == [(f"manager:{admin}", "api_token.revoked", row.id,
                               f'{{"prefix": "{row.prefix}"}}')]
    listed = api_tokens.get_token(db, prefix=row.prefix)
    assert listed.revoked_by == "admin@platform.example"
    assert listed.state(NOW) == api_tokens.ApiTokenState.revoked


def test_revoking_an_unknown_token_is_not_found(db, admin):
    with pytest.raises(api_tokens.ApiTokenNotFound):
        api_tokens.revoke(db, prefix="000000000000", revoked_by=None, actor="cli")
    with pytest.raises(api_tokens.ApiTokenNotFound):
        api_tokens.revoke(db, token_id=999999, revoked_by=admin, actor="cli")
    assert _audit(db) == []


def test_an_expired_token_names_no_one(db, admin):
    created = _create(db, admin, expires_in_days=1)
    assert api_tokens.authenticate(db, created.token,
                                   now=NOW + timedelta(days=1, seconds=-1)) is not None
    assert api_tokens.authenticate(db, created.token, now=NOW + timedelta(days=1)) is None
    row = api_tokens.get_token(db, token_id=created.row.token_id)
    assert row.state(NOW) == api_tokens.ApiTokenState.active
    assert row.state(NOW + timedelta(days=1)) == api_tokens.ApiTokenState.expired


def test_the_list_is_newest_first_and_never_holds_the_secret(db, admin):
    first = _create(db, admin, name="first")
    second = _create(db, admin, name="second", now=NOW + timedelta(minutes=1))
    listed = api_tokens.list_tokens(db)
    assert [t.name for t in listed] == ["second", "first"]
    assert first.token not in repr(listed) and second.token not in repr(listed)
    assert not hasattr(listed[0], "secret_hash")
