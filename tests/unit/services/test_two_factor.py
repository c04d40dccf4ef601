"""Two-factor sign-in's rules, each tried by breaking it: the secret never in clear at rest, a
TOTP code accepted once and only near its time, recovery codes used once and kept hashed, an
admin who cannot turn theirs off, and a key rotation that keeps every second factor."""

from __future__ import annotations

import hashlib

import pyotp
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD
from tests.helpers import CODE_ENCRYPTION_KEY
from wellness_perks.db import new_session
from wellness_perks.models import AuditEvent, Manager, ManagerRecoveryCode
from wellness_perks.services import auth, code_cipher, two_factor

T0 = 1_800_000_015.0  # a fixed moment, 15 s into its step


@pytest.fixture
def at(monkeypatch):
    """Moves the TOTP clock: ``at(seconds)`` sets it to T0 + seconds."""
    def _set(seconds: float = 0.0) -> float:
        monkeypatch.setattr(two_factor, "clock", lambda: T0 + seconds)
        return T0 + seconds
    _set()
    return _set


@pytest.fixture
def db(app):
    with app.app_context(), new_session() as session:
        yield session


def _manager(db, role="manager", email="lead@platform.example") -> int:
    return auth.create_manager(db, email=email, password=MANAGER_PASSWORD, role=role,
                               actor="test").id


def _code(secret: str, seconds: float = 0.0) -> str:
    return pyotp.TOTP(secret).at(T0 + seconds)


def _enrolled(db, manager_id: int) -> tuple[str, list[str]]:
    secret = two_factor.start_enrollment(db, manager_id=manager_id).secret
    codes = two_factor.confirm_enrollment(db, manager_id=manager_id, code=_code(secret),
                                          actor="test")
    return secret, codes


def _actions(db, manager_id):
    db.rollback()
    return db.exec(select(AuditEvent.action).where(
        AuditEvent.object_type == "manager", AuditEvent.object_id == manager_id)
        .order_by(AuditEvent.id)).all()


def test_the_secret_is_stored_encrypted_with_the_codes_cipher(db, at):
    manager_id = _manager(db)
    enrollment = two_factor.start_enrollment(db, manager_id=manager_id)
    db.rollback()
    stored = db.get(Manager, manager_id).totp_secret_encrypted
    assert enrollment.secret.encode() not in stored
    assert code_cipher.cipher().decrypt(stored) == enrollment.secret
    assert enrollment.uri.startswith("otpauth://totp/Wellness%20Perks:lead%40platform.example?")
    assert f"secret={enrollment.secret}" in enrollment.uri
    # Asked again before it is confirmed, the same secret (the app may have it already).
    assert two_factor.start_enrollment(db, manager_id=manager_id).secret == enrollment.secret
    assert not two_factor.status(db, manager_id=manager_id).enabled


def test_an_enrollment_is_on_only_after_a_right_first_code(db, at):
    manager_id = _manager(db)
    secret = two_factor.start_enrollment(db, manager_id=manager_id).secret
    with pytest.raises(two_factor.CodeRejected):
        two_factor.confirm_enrollment(db, manager_id=manager_id, code=_code(secret, 120),
                                      actor="test")
    assert not two_factor.status(db, manager_id=manager_id).enabled
    codes = two_factor.confirm_enrollment(db, manager_id=manager_id, code=_code(secret),
                                          actor="manager:1")
    assert len(codes) == 10 and len(set(codes)) == 10
    assert two_factor.status(db, manager_id=manager_id) == two_factor.Status(True, 10)
    assert _actions(db, manager_id)[-1] == "manager.two_factor_enrolled"
    with pytest.raises(two_factor.NotEnrolling):
        two_factor.confirm_enrollment(db, manager_id=manager_id, code=_code(secret, 30),
                                      actor="test")
    with pytest.raises(auth.Conflict):
        two_factor.start_enrollment(db, manager_id=manager_id)


@pytest.mark.parametrize("seconds, accepted", [
    (-46, False), (-45, True), (0, True), (14, True), (15, True), (44, True), (45, False)])
def test_a_code_is_accepted_in_its_own_step_or_one_either_side(db, at, seconds, accepted):
    manager_id = _manager(db)
    secret = two_factor.start_enrollment(db, manager_id=manager_id).secret
    at(-3600)  # enrolled an hour before: that step is long used
    two_factor.confirm_enrollment(db, manager_id=manager_id,
                                  code=pyotp.TOTP(secret).at(T0 - 3600), actor="test")
    at(0)
    code = _code(secret, seconds)
    if accepted:
        assert two_factor.check_code(db, manager_id=manager_id, code=code) == "totp"
    else:
        with pytest.raises(two_factor.CodeRejected):
            two_factor.check_code(db, manager_id=manager_id, code=code)


def test_a_code_is_accepted_once_and_never_an_older_one_after_it(db, at):
    manager_id = _manager(db)
    secret, _ = _enrolled(db, manager_id)  # the code of T0's step is used by the enrollment
    with pytest.raises(two_factor.CodeRejected):
        two_factor.check_code(db, manager_id=manager_id, code=_code(secret))
    assert two_factor.check_code(db, manager_id=manager_id, code=_code(secret, 30)) == "totp"
    with pytest.raises(two_factor.CodeRejected):  # replayed inside its window
        two_factor.check_code(db, manager_id=manager_id, code=_code(secret, 30))
    at(30)
    with pytest.raises(two_factor.CodeRejected):  # the step before, still in the window
        two_factor.check_code(db, manager_id=manager_id, code=_code(secret))
    assert two_factor.check_code(db, manager_id=manager_id, code=_code(secret, 60)) == "totp"
    db.rollback()
    assert db.get(Manager, manager_id).totp_last_step == int((T0 + 60) // 30)


@pytest.mark.parametrize("typed", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "ABCDE-FGHJK"])
def test_what_is_no_code_is_rejected(db, at, typed):
    manager_id = _manager(db)
    _enrolled(db, manager_id)
    with pytest.raises(two_factor.CodeRejected):
        two_factor.check_code(db, manager_id=manager_id, code=typed)


def test_a_recovery_code_works_once_as_typed_and_is_audited(db, at):
    manager_id = _manager(db)
    _, codes = _enrolled(db, manager_id)
    typed = " " + codes[3].lower().replace("-", " ") + " "
    assert two_factor.check_code(db, manager_id=manager_id, code=typed) == "recovery_code"
    with pytest.raises(two_factor.CodeRejected):
        two_factor.check_code(db, manager_id=manager_id, code=codes[3])
    assert two_factor.check_code(db, manager_id=manager_id, code=codes[4]) == "recovery_code"
    assert two_factor.status(db, manager_id=manager_id).recovery_codes_left == 8
    assert _actions(db, manager_id)[-2:] == ["manager.recovery_code_used"] * 2
    db.rollback()
    detail = db.exec(select(AuditEvent.detail).where(
        AuditEvent.action == "manager.recovery_code_used").order_by(AuditEvent.id)).all()
    assert detail == ['{"left": 9}', '{"left": 8}']
    assert not any(code.replace("-", "") in (d or "") for code in codes for d in detail)


def test_recovery_codes_are_kept_as_hashes_only(db, at):
    manager_id = _manager(db)
    _, codes = _enrolled(db, manager_id)
    db.rollback()
    stored = set(db.exec(select(ManagerRecoveryCode.code_hash).where(
        ManagerRecoveryCode.manager_id == manager_id)).all())
    assert stored == {hashlib.sha256(c.replace("-", "").encode()).hexdigest() for c in codes}


def test_one_managers_recovery_code_does_not_sign_in_another(db, at):
    first, second = _manager(db), _manager(db, email="other@platform.example")
    _, codes = _enrolled(db, first)
    _enrolled(db, second)
    with pytest.raises(two_factor.CodeRejected):
        two_factor.check_code(db, manager_id=second, code=codes[0])
    assert two_factor.check_code(db, manager_id=first, code=codes[0]) == "recovery_code"


def test_a_manager_without_two_factor_has_no_code_to_pass(db, at):
    manager_id = _manager(db)
    two_factor.start_enrollment(db, manager_id=manager_id)  # waiting, not on
    with pytest.raises(two_factor.CodeRejected):
        two_factor.check_code(db, manager_id=manager_id, code="123456")


def test_an_admin_needs_it_and_cannot_turn_theirs_off(db, at):
    admin = _manager(db, role="admin")
    secret, codes = _enrolled(db, admin)
    assert two_factor.required("admin") and not two_factor.required("manager")
    with pytest.raises(two_factor.TwoFactorRequired):
        two_factor.turn_off(db, manager_id=admin, code=codes[0], actor=f"manager:{admin}")
    assert two_factor.status(db, manager_id=admin) == two_factor.Status(True, 10)  # none spent


def test_a_manager_turns_theirs_off_with_a_code_and_it_is_audited(db, at):
    manager_id = _manager(db)
    secret, _ = _enrolled(db, manager_id)
    with pytest.raises(two_factor.CodeRejected):
        two_factor.turn_off(db, manager_id=manager_id, code="000000", actor="manager:1")
    assert two_factor.status(db, manager_id=manager_id).enabled
    two_factor.turn_off(db, manager_id=manager_id, code=_code(secret, 30), actor="manager:1")
    db.rollback()
    manager = db.get(Manager, manager_id)
    assert (manager.totp_secret_encrypted, manager.totp_enabled_at, manager.totp_last_step) == (
        None, None, None)
    assert two_factor.status(db, manager_id=manager_id) == two_factor.Status(False, 0)
    assert _actions(db, manager_id)[-1] == "manager.two_factor_disabled"
    # Set up again: a new secret.
    assert two_factor.start_enrollment(db, manager_id=manager_id).secret != secret


def test_rotating_the_key_keeps_every_second_factor(app, app_config, at):
    from wellness_perks import create_app

    with app.app_context(), new_session() as db:
        manager_id = _manager(db)
        secret, _ = _enrolled(db, manager_id)
    newer = Fernet.generate_key().decode()
    app_config = {**app_config, "CODE_ENCRYPTION_KEY": f"{newer},{CODE_ENCRYPTION_KEY}"}
    rotated = create_app(app_config)
    with rotated.app_context(), new_session() as db:
        assert two_factor.rotate_secrets(db) == 1
    only_newer = create_app({**app_config, "CODE_ENCRYPTION_KEY": newer})
    with only_newer.app_context(), new_session() as db:
        assert two_factor.check_code(db, manager_id=manager_id, code=_code(secret, 30)) == "totp"
        token = db.execute(sa.select(Manager.totp_secret_encrypted)).scalar_one()
        assert code_cipher.CodeCipher(newer).decrypt(token) == secret
    for each in (rotated, only_newer):
        each.extensions["db_engine"].dispose()
