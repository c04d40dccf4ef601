"""Console accounts as an admin manages them: list, create, change a role, disable and
re-enable, reset a lost second factor, set a new password (the command line's
``set-password``). Each change is audited with who made it.

There is always an active admin: a change that would leave none (the last active admin
demoting or disabling themself) is refused (``LastActiveAdmin``). The admins' rows are locked
before they are counted, so two admins demoting each other at once cannot both succeed.
A change of role, a disable, a 2FA reset and a new password end the manager's sessions at
once: they sign in again under what they are now (an admin-to-be is asked to enrol a second
factor then). A new password also ends a lockout of wrong passwords.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session

from ..db import write_transaction
from ..logs import log_event
from ..models import MANAGER_ROLES, Manager, ManagerRole
from . import audit, auth, two_factor
from .emails import normalise_email
from .errors import Conflict, InvalidInput, NotFound

ADMIN = ManagerRole.admin.value


class LastActiveAdmin(Conflict):
    """The change would leave no active admin."""

    code = "last_active_admin"


@dataclass(frozen=True)
class ManagerRow:
    manager_id: int
    email: str
    role: str
    two_factor: bool
    last_login_at: datetime | None
    disabled_at: datetime | None
    created_at: datetime


_COLUMNS = (Manager.id, Manager.email, Manager.role, Manager.totp_enabled_at,
            Manager.last_login_at, Manager.disabled_at, Manager.created_at)


def _row(r) -> ManagerRow:
    return ManagerRow(r.id, r.email, r.role, r.totp_enabled_at is not None, r.last_login_at,
                      r.disabled_at, r.created_at)


class ManagerNotFound(NotFound):
    code = "manager_not_found"


def list_managers(session: Session) -> list[ManagerRow]:
    """Every console account, by address."""
    rows = session.execute(sa.select(*_COLUMNS).order_by(Manager.email)).all()
    session.rollback()
    return [_row(r) for r in rows]


def get_manager(session: Session, manager_id: int) -> ManagerRow:
    row = session.execute(sa.select(*_COLUMNS).where(Manager.id == manager_id)).first()
    session.rollback()
    if row is None:
        raise NotFound(f"no manager #{manager_id}")
    return _row(row)


def find_by_email(session: Session, email: str) -> ManagerRow:
    """The account at ``email`` (as typed: it is normalised), or ManagerNotFound."""
    normalised = normalise_email(email)
    row = session.execute(sa.select(*_COLUMNS).where(Manager.email == normalised)).first()
    session.rollback()
    if row is None:
        raise ManagerNotFound(f"no manager with email {normalised}")
    return _row(row)


def create(session: Session, *, email: str, role: str, password: str | None,
           actor: str) -> tuple[Manager, str | None]:
    """A new account; with no password given, one is generated and returned (to show once)."""
    generated = None if password else secrets.token_urlsafe(12)
    manager = auth.create_manager(session, email=email, password=password or generated,
                                  role=role, actor=actor)
    return manager, generated


def _lock(session: Session, manager_id: int) -> Manager:
    manager = session.get(Manager, manager_id, with_for_update=True)
    if manager is None:
        raise NotFound(f"no manager #{manager_id}")
    return manager


def _keep_an_active_admin(session: Session, manager: Manager) -> None:
    """LastActiveAdmin if ``manager`` is the only active admin (about to stop being one)."""
    if manager.role != ADMIN or manager.disabled_at is not None:
        return
    others = session.execute(
        sa.select(Manager.id).where(Manager.role == ADMIN, Manager.disabled_at.is_(None),
                                    Manager.id != manager.id).with_for_update()).all()
    if not others:
        raise LastActiveAdmin(f"{manager.email} is the last active admin")


def _end_sessions(manager: Manager) -> None:
    manager.session_version = manager.session_version + 1


def change_role(session: Session, *, manager_id: int, role: str, actor: str) -> None:
    if role not in MANAGER_ROLES:
        raise InvalidInput(f"role must be one of {', '.join(MANAGER_ROLES)}", field="role",
                           code="manager_role_unknown")
    with write_transaction(session):
        manager = _lock(session, manager_id)
        before = manager.role
        if before == role:
            return
        if before == ADMIN:
            _keep_an_active_admin(session, manager)
        manager.role = role
        _end_sessions(manager)
        audit.record(session, audit.event(actor=actor, action="manager.role_changed",
                                          object_type="manager", object_id=manager_id,
                                          detail={"from": before, "to": role}))
    log_event("manager.role_changed", manager_id=manager_id, role=role)


def disable(session: Session, *, manager_id: int, actor: str, now: datetime) -> None:
    """No sign-in, and every session of theirs ends now."""
    with write_transaction(session):
        manager = _lock(session, manager_id)
        if manager.disabled_at is not None:
            return
        _keep_an_active_admin(session, manager)
        manager.disabled_at = now
        _end_sessions(manager)
        audit.record(session, audit.event(actor=actor, action="manager.disabled",
                                          object_type="manager", object_id=manager_id))
    log_event("manager.disabled", manager_id=manager_id)


def enable(session: Session, *, manager_id: int, actor: str) -> None:
    with write_transaction(session):
        manager = _lock(session, manager_id)
        if manager.disabled_at is None:
            return
        manager.disabled_at = None
        audit.record(session, audit.event(actor=actor, action="manager.enabled",
                                          object_type="manager", object_id=manager_id))
    log_event("manager.enabled", manager_id=manager_id)


def reset_two_factor(session: Session, *, manager_id: int, actor: str) -> None:
    """Their second factor (and recovery codes) go, and their sessions end: they sign in with
    their password again and enrol anew (which an admin must)."""
    two_factor.disable(session, manager_id=manager_id, actor=actor, by_self=False)
    auth.end_manager_sessions(session, manager_id=manager_id)


@dataclass(frozen=True)
class PasswordSet:
    email: str  # the address as stored
    failures_forgotten: int  # the wrong passwords counted toward a lockout, now forgotten


def set_password(session: Session, *, email: str, password: str, actor: str) -> PasswordSet:
    """Give the manager at ``email`` a new password (by the rules of a new account's) and end
    their sessions: whoever held the old one, or a session begun with it, is signed out. Their
    second factor stays. Audited (without the password).

    The wrong passwords counted for the address are forgotten too, and with them a lockout
    (an admin resets the password of a manager who could not sign in): audited
    (``manager.lockout_cleared``, with how many) when there were any."""
    normalised = normalise_email(email)
    new_hash = auth.password_hash(password)
    with write_transaction(session):
        manager = session.execute(sa.select(Manager).where(Manager.email == normalised)
                                  .with_for_update()).scalar_one_or_none()
        if manager is None:
            raise ManagerNotFound(f"no manager with email {normalised}")
        manager.password_hash = new_hash
        _end_sessions(manager)
        manager_id = manager.id
        audit.record(session, audit.event(actor=actor, action="manager.password_set",
                                          object_type="manager", object_id=manager_id))
    log_event("manager.password_set", manager_id=manager_id)
    failures = _forget_password_failures(normalised)
    if failures:
        with write_transaction(session):
            audit.record(session, audit.event(actor=actor, action="manager.lockout_cleared",
                                              object_type="manager", object_id=manager_id,
                                              detail={"failures": failures}))
        log_event("manager.lockout_cleared", manager_id=manager_id, failures=failures)
    return PasswordSet(normalised, failures)


def _forget_password_failures(email: str) -> int:
    """The web's failure counter of the address forgotten (the web registers how: a service
    imports no surface); how many it held. None registered (an app without the web): 0."""
    forget = current_app.extensions.get("forget_password_failures")
    return forget(email) if forget is not None else 0
