"""Two-factor sign-in of the console: a TOTP code (RFC 6238, an authenticator app) after the
password, or one of ten recovery codes, each usable once.

Every manager may enrol; an admin must (``required``): an admin without it is sent to enrol
right after the password, and gets a session only once a first code has confirmed it.

- The secret is stored encrypted under CODE_ENCRYPTION_KEY, by the codes' own cipher
  (``code_cipher``), and re-encrypted by ``rotate-code-key`` with them (``rotate_secrets``).
  A secret set but not enabled is an enrollment waiting for its first code.
- A TOTP code is accepted for its own 30-second step or one either side (clocks drift), and
  once only: the newest accepted step is kept (``totp_last_step``) and a code of that step or
  an older one is refused, even inside its window. The step is taken with a conditional
  UPDATE, so two requests with one code cannot both pass.
- Recovery codes are random (10 characters of base32, 50 bits), shown once, kept as SHA-256;
  using one marks it used in one conditional UPDATE (once, even under a race).

A sign-in that has passed its password and waits for a code is the web's to keep (a few
minutes, a few tries: ``PENDING_SECONDS``, ``PENDING_ATTEMPTS``); wrong codes count with wrong
passwords toward the address's lockout.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp
import sqlalchemy as sa
from sqlmodel import Session

from ..db import write_transaction
from ..logs import log_event
from ..models import Manager, ManagerRecoveryCode, ManagerRole
from . import audit, code_cipher
from .errors import Conflict, DomainError, NotFound

ISSUER = "Wellness Perks"
STEP_SECONDS = 30
DRIFT_STEPS = 1  # a code of the step before or after now is accepted too
RECOVERY_CODES = 10
RECOVERY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a printout
# A sign-in waiting for its second step lasts this long, for this many wrong codes; then the
# password is asked for again.
PENDING_SECONDS = 5 * 60
PENDING_ATTEMPTS = 5

ENROLLED = "manager.two_factor_enrolled"
DISABLED = "manager.two_factor_disabled"
RECOVERY_CODE_USED = "manager.recovery_code_used"

clock = time.time  # the TOTP clock (seconds); tests move it


class CodeRejected(DomainError):
    """The code is not the current TOTP code (or was used already), nor an unused recovery
    code."""

    status_code = 400
    code = "two_factor_code_rejected"


class TwoFactorRequired(Conflict):
    """An admin's two-factor sign-in cannot be turned off by themself (an admin must have it)."""

    code = "two_factor_required_for_admins"


class NotEnrolling(Conflict):
    """A code confirms an enrollment only while one waits (it was started and not finished)."""

    code = "two_factor_not_enrolling"


@dataclass(frozen=True)
class Enrollment:
    """What a manager types or scans into their authenticator app."""

    secret: str
    uri: str  # otpauth://totp/...

    @property
    def grouped_secret(self) -> str:
        """The secret in groups of four, easier to type."""
        return " ".join(self.secret[i:i + 4] for i in range(0, len(self.secret), 4))


@dataclass(frozen=True)
class Status:
    enabled: bool
    recovery_codes_left: int


def required(role: str) -> bool:
    """Whether a manager of this role must sign in with a second factor."""
    return role == ManagerRole.admin.value


def _manager(session: Session, manager_id: int) -> Manager:
    manager = session.get(Manager, manager_id, with_for_update=True)
    if manager is None:
        raise NotFound(f"no manager #{manager_id}")
    return manager


def _enrollment(email: str, secret: str) -> Enrollment:
    return Enrollment(secret, pyotp.TOTP(secret, interval=STEP_SECONDS).provisioning_uri(
        name=email, issuer_name=ISSUER))


def status(session: Session, *, manager_id: int) -> Status:
    manager = session.get(Manager, manager_id)
    if manager is None:
        raise NotFound(f"no manager #{manager_id}")
    left = session.execute(sa.select(sa.func.count()).select_from(ManagerRecoveryCode).where(
        ManagerRecoveryCode.manager_id == manager_id,
        ManagerRecoveryCode.used_at.is_(None))).scalar_one()
    return Status(manager.totp_enabled_at is not None, left)


def start_enrollment(session: Session, *, manager_id: int) -> Enrollment:
    """The secret of this manager's enrollment: the one waiting, or a new one. Conflict when
    two-factor sign-in is already on (it is reset first: ``disable``)."""
    with write_transaction(session):
        manager = _manager(session, manager_id)
        if manager.totp_enabled_at is not None:
            raise Conflict("two-factor sign-in is already on", code="two_factor_already_on")
        cipher = code_cipher.cipher()
        if manager.totp_secret_encrypted is not None:
            secret = cipher.decrypt(manager.totp_secret_encrypted)
        else:
            secret = pyotp.random_base32()
            manager.totp_secret_encrypted = cipher.encrypt(secret)
            manager.totp_last_step = None
        email = manager.email
    return _enrollment(email, secret)


def _matching_step(secret: str, code: str) -> int | None:
    """The time step (now, or one either side) whose TOTP code ``code`` is, else None."""
    totp = pyotp.TOTP(secret, interval=STEP_SECONDS)
    now_step = int(clock() // STEP_SECONDS)
    for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _take_step(session: Session, manager_id: int, step: int) -> bool:
    """Record ``step`` as used, only if it is newer than the last one used (atomically)."""
    taken = session.execute(
        sa.update(Manager).where(Manager.id == manager_id, sa.or_(
            Manager.totp_last_step.is_(None), Manager.totp_last_step < step))
        .values(totp_last_step=step).execution_options(synchronize_session=False))
    return taken.rowcount == 1


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def normalise_recovery_code(code: str) -> str:
    """A recovery code as typed: spaces and dashes dropped, letters upper-cased."""
    return re.sub(r"[\s-]+", "", code).upper()


def _new_recovery_codes(session: Session, manager_id: int) -> list[str]:
    session.execute(sa.delete(ManagerRecoveryCode).where(
        ManagerRecoveryCode.manager_id == manager_id))
    codes = ["".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
             for _ in range(RECOVERY_CODES)]
    now = datetime.now(UTC)
    session.execute(sa.insert(ManagerRecoveryCode), [
        {"manager_id": manager_id, "code_hash": _hash(code), "created_at": now}
        for code in codes])
    return [f"{code[:5]}-{code[5:]}" for code in codes]


def _is_totp(code: str) -> bool:
    return len(code) == 6 and code.isascii() and code.isdigit()


def confirm_enrollment(session: Session, *, manager_id: int, code: str, actor: str) -> list[str]:
    """Turn two-factor sign-in on with the first code of the waiting enrollment; the ten
    recovery codes, in clear, to show once. CodeRejected for a wrong code (nothing changes),
    NotEnrolling when no enrollment waits."""
    code = code.strip().replace(" ", "")
    with write_transaction(session):
        manager = _manager(session, manager_id)
        if manager.totp_enabled_at is not None or manager.totp_secret_encrypted is None:
            raise NotEnrolling("no two-factor enrollment is waiting")
        secret = code_cipher.cipher().decrypt(manager.totp_secret_encrypted)
        step = _matching_step(secret, code) if _is_totp(code) else None
        if step is None or not _take_step(session, manager_id, step):
            raise CodeRejected("that is not the current code of the authenticator app")
        session.execute(sa.update(Manager).where(Manager.id == manager_id)
                        .values(totp_enabled_at=datetime.now(UTC))
                        .execution_options(synchronize_session=False))
        codes = _new_recovery_codes(session, manager_id)
        audit.record(session, audit.event(actor=actor, action=ENROLLED, object_type="manager",
                                          object_id=manager_id))
    session.expire_all()
    log_event(ENROLLED, manager_id=manager_id)
    return codes


def check_code(session: Session, *, manager_id: int, code: str) -> str:
    """Accept this sign-in's second step: a TOTP code (once) or an unused recovery code (which
    is used up, and audited). Returns ``"totp"`` or ``"recovery_code"``; CodeRejected
    otherwise."""
    typed = code.strip().replace(" ", "")
    with write_transaction(session):
        manager = session.get(Manager, manager_id)
        if manager is None or manager.totp_enabled_at is None:
            raise CodeRejected("two-factor sign-in is not on for this manager")
        if _is_totp(typed):
            secret = code_cipher.cipher().decrypt(manager.totp_secret_encrypted)
            step = _matching_step(secret, typed)
            if step is not None and _take_step(session, manager_id, step):
                return "totp"
            raise CodeRejected("not the current code, or used already")
        used = session.execute(
            sa.update(ManagerRecoveryCode).where(
                ManagerRecoveryCode.manager_id == manager_id,
                ManagerRecoveryCode.code_hash == _hash(normalise_recovery_code(typed)),
                ManagerRecoveryCode.used_at.is_(None))
            .values(used_at=datetime.now(UTC)).execution_options(synchronize_session=False))
        if used.rowcount != 1:
            raise CodeRejected("not a recovery code of this manager, or used already")
        left = session.execute(sa.select(sa.func.count()).select_from(ManagerRecoveryCode).where(
            ManagerRecoveryCode.manager_id == manager_id,
            ManagerRecoveryCode.used_at.is_(None))).scalar_one()
        audit.record(session, audit.event(actor=f"manager:{manager_id}",
                                          action=RECOVERY_CODE_USED, object_type="manager",
                                          object_id=manager_id, detail={"left": left}))
    log_event(RECOVERY_CODE_USED, manager_id=manager_id, left=left)
    return "recovery_code"


def disable(session: Session, *, manager_id: int, actor: str, by_self: bool) -> None:
    """Turn two-factor sign-in off (or drop a waiting enrollment): the secret and the recovery
    codes go. A manager may turn off their own unless they are an admin (TwoFactorRequired);
    an admin resets anyone's (``by_self=False``), e.g. for a lost phone."""
    with write_transaction(session):
        manager = _manager(session, manager_id)
        if by_self and required(manager.role):
            raise TwoFactorRequired("an admin must sign in with two factors")
        was_on = manager.totp_enabled_at is not None
        manager.totp_secret_encrypted = None
        manager.totp_enabled_at = None
        manager.totp_last_step = None
        session.execute(sa.delete(ManagerRecoveryCode).where(
            ManagerRecoveryCode.manager_id == manager_id))
        if was_on:
            audit.record(session, audit.event(actor=actor, action=DISABLED,
                                              object_type="manager", object_id=manager_id,
                                              detail={"by": "self" if by_self else "admin"}))
    if was_on:
        log_event(DISABLED, manager_id=manager_id)


def turn_off(session: Session, *, manager_id: int, code: str, actor: str) -> None:
    """A manager turns their own second factor off, proving they hold it with a current code
    (or a recovery code): TwoFactorRequired for an admin (before the code is tried, so no
    recovery code is spent on a refusal), CodeRejected for a wrong code."""
    manager = session.get(Manager, manager_id)
    if manager is None:
        raise NotFound(f"no manager #{manager_id}")
    role = manager.role
    session.rollback()
    if required(role):
        raise TwoFactorRequired("an admin must sign in with two factors")
    check_code(session, manager_id=manager_id, code=code)
    disable(session, manager_id=manager_id, actor=actor, by_self=True)


def rotate_secrets(session: Session) -> int:
    """Re-encrypt every TOTP secret under the newest key of CODE_ENCRYPTION_KEY (with the
    codes, by ``rotate-code-key``: a dropped key must not lose anyone's second factor); how
    many. There are as many as managers: one transaction does them all."""
    cipher = code_cipher.cipher()
    with write_transaction(session):
        rows = session.execute(sa.select(Manager.id, Manager.totp_secret_encrypted).where(
            Manager.totp_secret_encrypted.is_not(None)).with_for_update()).all()
        for manager_id, token in rows:
            session.execute(sa.update(Manager).where(Manager.id == manager_id).values(
                totp_secret_encrypted=cipher.encrypt(cipher.decrypt(token))))
    return len(rows)
