"""Managing console accounts: there is always an active admin, every change is audited with
who made it, and a change that takes rights away ends the sessions it concerns."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD, enroll_two_factor
from wellness_perks.db import new_session
from wellness_perks.models import AuditEvent, Manager
from wellness_perks.services import auth, managers, two_factor
from wellness_perks.services.errors import InvalidInput, NotFound

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


@pytest.fixture
def db(app):
    with app.app_context(), new_session() as session:
        yield session


def _new(db, email, role="manager") -> int:
    return auth.create_manager(db, email=email, password=MANAGER_PASSWORD, role=role,
                               actor="test").id


def _get(db, manager_id) -> Manager:
    db.rollback()
    return db.get(Manager, manager_id)


def _audit(db):
    db.rollback()
    return [(e.actor, e.action, e.object_id, e.detail) for e in db.exec(
        select(AuditEvent).where(AuditEvent.actor != "test").order_by(AuditEvent.id))]


def test_the_last_active_admin_can_neither_demote_nor_disable_themself(db):
    admin = _new(db, "admin@platform.example", "admin")
    _new(db, "lead@platform.example")
    with pytest.raises(managers.LastActiveAdmin):
        managers.change_role(db, manager_id=admin, role="manager", actor=f"manager:{admin}")
    with pytest.raises(managers.LastActiveAdmin):
        managers.disable(db, manager_id=admin, actor=f"manager:{admin}", now=NOW)
    assert (_get(db, admin).role, _get(db, admin).disabled_at) == ("admin", None)
    assert _audit(db) == []


def test_a_disabled_admin_does_not_count_as_the_other_active_admin(db):
    admin = _new(db, "admin@platform.example", "admin")
    other = _new(db, "other@platform.example", "admin")
    managers.disable(db, manager_id=other, actor=f"manager:{admin}", now=NOW)
    with pytest.raises(managers.LastActiveAdmin):
        managers.change_role(db, manager_id=admin, role="viewer", actor=f"manager:{admin}")
    managers.enable(db, manager_id=other, actor=f"manager:{admin}")
    managers.change_role(db, manager_id=admin, role="viewer", actor=f"manager:{admin}")
    assert _get(db, admin).role == "viewer"
    # Now ``other`` is the last active admin.
    with pytest.raises(managers.LastActiveAdmin):
        managers.disable(db, manager_id=other, actor=f"manager:{other}", now=NOW)


def test_changes_are_audited_with_the_actor_and_end_the_managers_sessions(db):
    admin = _new(db, "admin@platform.example", "admin")
    lead = _new(db, "lead@platform.example")
    actor = f"manager:{admin}"
    managers.change_role(db, manager_id=lead, role="admin", actor=actor)
    assert _get(db, lead).session_version == 1
    managers.change_role(db, manager_id=lead, role="admin", actor=actor)  # no change: nothing
    managers.disable(db, manager_id=lead, actor=actor, now=NOW)
    lead_row = _get(db, lead)
    assert (lead_row.disabled_at, lead_row.session_version) == (NOW, 2)
    managers.disable(db, manager_id=lead, actor=actor, now=NOW)  # already: nothing
    managers.enable(db, manager_id=lead, actor=actor)
    assert _get(db, lead).disabled_at is None
    assert _audit(db) == [
        (actor, "manager.role_changed", lead, '{"from": "manager", "to": "admin"}'),
        (actor, "manager.disabled", lead, None),
        (actor, "manager.enabled", lead, None)]


def test_resetting_two_factor_drops_it_and_ends_the_sessions(app, db):
    admin = _new(db, "admin@platform.example", "admin")
    lead = _new(db, "lead@platform.example")
    enroll_two_factor(app, lead)
    managers.reset_two_factor(db, manager_id=lead, actor=f"manager:{admin}")
    lead_row = _get(db, lead)
    assert (lead_row.totp_enabled_at, lead_row.totp_secret_encrypted) == (None, None)
    assert lead_row.session_version == 1
    assert two_factor.status(db, manager_id=lead) == two_factor.Status(False, 0)
    assert _audit(db)[-1] == (f"manager:{admin}", "manager.two_factor_disabled", lead,
                              '{"by": "admin"}')


def test_a_new_manager_gets_a_generated_password_when_none_is_given(db):
    manager, generated = managers.create(db, email="New@Platform.example", role="viewer",
                                         password=None, actor="manager:1")
    assert len(generated) >= 12
    assert auth.check_manager_password(db, email="new@platform.example",
                                       password=generated).role == "viewer"
    manager, generated = managers.create(db, email="set@platform.example", role="manager",
                                         password=MANAGER_PASSWORD, actor="manager:1")
    assert generated is None
    assert [row.email for row in managers.list_managers(db)] == ["new@platform.example",
                                                                 "set@platform.example"]


def test_unknown_roles_and_managers_are_refused(db):
    lead = _new(db, "lead@platform.example")
    with pytest.raises(InvalidInput):
        managers.change_role(db, manager_id=lead, role="owner", actor="manager:1")
    for change in (lambda: managers.disable(db, manager_id=999, actor="m", now=NOW),
                   lambda: managers.enable(db, manager_id=999, actor="m"),
                   lambda: managers.change_role(db, manager_id=999, role="viewer", actor="m"),
                   lambda: managers.get_manager(db, 999)):
        with pytest.raises(NotFound):
            change()


NEW_PASSWORD = "a new and longer passphrase"


def test_a_new_password_replaces_the_old_is_audited_and_ends_the_sessions(db):
    lead = _new(db, "lead@platform.example")
    managers.set_password(db, email=" Lead@Platform.example ", password=NEW_PASSWORD,
                          actor="cli")
    assert auth.check_manager_password(db, email="lead@platform.example",
                                       password=NEW_PASSWORD).manager_id == lead
    with pytest.raises(auth.PasswordRejected):
        auth.check_manager_password(db, email="lead@platform.example",
                                    password=MANAGER_PASSWORD)
    assert _get(db, lead).session_version == 1  # a session begun before the change ends
    assert _audit(db) == [("cli", "manager.password_set", lead, None)]


@pytest.mark.parametrize(("email", "password", "error", "code"), [
    ("lead@platform.example", "elevenchars", InvalidInput, "password_too_short"),
    ("not-an-email", NEW_PASSWORD, InvalidInput, "email_invalid"),
    ("nobody@platform.example", NEW_PASSWORD, NotFound, "manager_not_found"),
])
def test_a_password_is_set_only_for_a_manager_and_by_the_rules_of_a_new_one(
        db, email, password, error, code):
    lead = _new(db, "lead@platform.example")
    with pytest.raises(error) as refused:
        managers.set_password(db, email=email, password=password, actor="cli")
    assert refused.value.code == code
    assert auth.check_manager_password(db, email="lead@platform.example",
                                       password=MANAGER_PASSWORD).manager_id == lead
    assert _get(db, lead).session_version == 0
    assert _audit(db) == []
