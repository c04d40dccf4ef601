"""Codes after import: voiding, reissuing, restoring, and a manager's audited reveal.

A code that was ever assigned is never handed out again (``codeassignment.code_id`` is unique).
Voiding an available code takes it out of stock; voiding an assigned one reissues: its claim gets
the next available code and a mail about it, and keeps its place in the quota. Restoring puts a
voided code that was never assigned back in stock, which serves the waitlist. Each moves the
program's stock counter in its transaction, under the program's row lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from .. import dispatch
from ..db import write_transaction
from ..logs import log_event
from ..models import (
    Claim,
    ClaimState,
    Code,
    CodeAssignment,
    CodeBatch,
    CodeStatus,
    Creator,
    MailKind,
)
from . import audit, code_cipher, stock
from .errors import Conflict, InvalidInput, NotFound
from .mail import owe, owed
from .programs import lock_program

SEPARATORS = "-_ ./"
MASK = "****"


def mask_code(value: str) -> str:
    """A code as managers see it: the prefix up to its first separator and the last 4
    characters, the rest hidden (``HS-ABCD-7K2Q`` -> ``HS-****-7K2Q``). At least 4 characters
    stay hidden: a short code keeps less (its prefix first, then its end)."""
    value = (value or "").strip()
    tail = value[-4:] if len(value) >= 8 else ""
    if tail and len(value) >= 9 and value[-5] in SEPARATORS:
        tail = value[-5:]  # the separator before the end shows, as the code prints it
    first = next((i for i, c in enumerate(value) if c in SEPARATORS), None)
    prefix = value[:first + 1] if first is not None else ""
    if len(value) - len(prefix) - len(tail) < 4:
        prefix = ""
    return f"{prefix}{MASK}{tail}"


@dataclass(frozen=True)
class VoidResult:
    code_id: int
    reissued_claim_id: int | None = None
    new_code_id: int | None = None
    outbound_id: int | None = None


def _code_by_value(session: Session, program_id: int, value: str) -> Code:
    """The program's code with this value, found by its fingerprint (never decrypted)."""
    fingerprint = code_cipher.cipher().fingerprint(value.strip())
    code = session.exec(
        select(Code).where(Code.fingerprint == fingerprint, Code.program_id == program_id)
        .with_for_update().execution_options(populate_existing=True)
    ).first()
    if code is None:
        raise NotFound("this program has no such code")
    return code


def void_code(session: Session, *, program_id: int, value: str, reason: str,
              actor: str) -> VoidResult:
    """Take a code out of use; if a claim holds it, give that claim a new code."""
    with write_transaction(session):
        lock_program(session, program_id)
        code = _code_by_value(session, program_id, value)
        if code.status == CodeStatus.void:
            raise Conflict(f"code #{code.id} is already void")
        if code.status == CodeStatus.available:
            code.status = CodeStatus.void
            stock.move_counter(session.connection(), program_id, -1, batch_id=code.batch_id)
            audit.record(session, audit.event(actor=actor, action="code.voided",
                                              object_type="code", object_id=code.id,
                                              program_id=program_id, detail={"reason": reason}))
            result = VoidResult(code.id)
        else:
            claim = session.exec(select(Claim).where(Claim.code_id == code.id)
                                 .with_for_update()).one()
            result = _reissue(session, program_id, claim, code, reason, actor)
    _after(result)
    return result


def reissue_claim(session: Session, *, program_id: int, creator_email: str, reason: str,
                  actor: str) -> VoidResult:
    """Void the code a creator holds in a program and give them the next one. The reason is
    required (it is audited); the replacement takes the old code's place in the quota."""
    reason = audit.reason_given(reason, doing="the code is reissued", limit=MAX_REASON_LENGTH)
    with write_transaction(session):
        lock_program(session, program_id)
        claim = session.exec(
            select(Claim).join(Creator, Creator.id == Claim.creator_id)
            .where(Claim.program_id == program_id, Creator.email == creator_email.strip().lower())
            .with_for_update().execution_options(populate_existing=True)
        ).first()
        if claim is None or claim.state != ClaimState.allocated:
            raise Conflict(f"{creator_email} holds no code in this program")
        code = session.exec(select(Code).where(Code.id == claim.code_id).with_for_update()).one()
        result = _reissue(session, program_id, claim, code, reason, actor)
    _after(result)
    return result


def _reissue(session: Session, program_id: int, claim: Claim, old: Code, reason: str,
             actor: str) -> VoidResult:
    now = datetime.now(UTC)
    conn = session.connection()
    new_code_ids = stock.next_available(conn, program_id, 1)
    if not new_code_ids:
        raise Conflict("no code in stock to replace it with: import a batch first")
    [new_code_id] = new_code_ids
    old.status = CodeStatus.void
    session.execute(
        sa.update(CodeAssignment).where(CodeAssignment.code_id == old.id)
        .values(voided_at=now, void_reason=reason[:200])
        .execution_options(synchronize_session=False)
    )
    stock.take(conn, program_id, new_code_ids, now)
    # The new code leaves the stock (its batch's counter moved with ``take``); the old code
    # was held, not in stock.
    stock.move_counter(conn, program_id, -1, batch_id=None)
    claim.code_id = new_code_id
    session.add(CodeAssignment(code_id=new_code_id, claim_id=claim.id, program_id=program_id,
                               assigned_at=now))
    session.flush()
    to_email, locale = session.execute(
        sa.select(Creator.email, Creator.locale).where(Creator.id == claim.creator_id)).one()
    [outbound_id] = owe(conn, [owed(kind=MailKind.reissue, to_email=to_email,
                                    creator_id=claim.creator_id, claim_id=claim.id,
                                    code_id=new_code_id, locale=locale, now=now,
                                    program_id=program_id)])
    audit.record(session, audit.event(
        actor=actor, action="claim.reissued", object_type="claim", object_id=claim.id,
        program_id=program_id,
        detail={"old_code_id": old.id, "new_code_id": new_code_id, "reason": reason}))
    return VoidResult(old.id, claim.id, new_code_id, outbound_id)


def restore_code(session: Session, *, program_id: int, value: str, actor: str) -> int:
    """Put a voided code that was never assigned back in stock."""
    with write_transaction(session):
        lock_program(session, program_id)
        code = _code_by_value(session, program_id, value)
        if code.status != CodeStatus.void:
            raise Conflict(f"code #{code.id} is not void")
        if session.exec(select(CodeAssignment.id).where(CodeAssignment.code_id == code.id)).first():
            raise Conflict(f"code #{code.id} was given to a creator once: it can't be reused")
        code.status = CodeStatus.available
        stock.move_counter(session.connection(), program_id, 1, batch_id=code.batch_id)
        audit.record(session, audit.event(actor=actor, action="code.restored",
                                          object_type="code", object_id=code.id,
                                          program_id=program_id))
        code_id = code.id
    dispatch.allocate_program(program_id)
    return code_id


def _after(result: VoidResult) -> None:
    log_event("code.voided", code_id=result.code_id, claim_id=result.reissued_claim_id,
              new_code_id=result.new_code_id)
    if result.outbound_id is not None:
        dispatch.send_email(result.outbound_id)


REVEALED = "code.revealed"
MAX_REVEAL_REASON_LENGTH = 500


def reveal_code(session: Session, code_id: int, actor: str, reason: str) -> str:
    """The code in clear, for a manager who gives a reason; the reveal is an audit event.

    The one way a manager sees a code (everywhere else a code is its id: ``code #12``). The
    event records who, which code and why, never the code; nothing is logged.
    """
    reason = audit.reason_given(reason, doing="the code is revealed",
                                limit=MAX_REVEAL_REASON_LENGTH)
    with write_transaction(session):
        row = session.execute(sa.select(Code.value_encrypted, Code.program_id)
                              .where(Code.id == code_id)).first()
        if row is None:
            raise NotFound("no such code")
        token, program_id = row
        value = code_cipher.cipher().decrypt(token)
        audit.record(session, audit.event(actor=actor, action=REVEALED, object_type="code",
                                          object_id=code_id, program_id=program_id,
                                          detail={"reason": reason}))
    log_event(REVEALED, code_id=code_id, program_id=program_id)
    return value


@dataclass(frozen=True)
class ClaimCode:
    """A claim as the reveal page shows it: whose, and its code masked (None: no code)."""

    claim_id: int
    handle: str
    email: str
    state: str
    code_id: int | None
    masked: str | None


def claim_code(session: Session, *, program_id: int, claim_id: int) -> ClaimCode:
    """The program's claim ``claim_id`` and its code, masked. NotFound if the program has no
    such claim."""
    row = session.execute(
        sa.select(Claim.id, Creator.handle, Creator.email, Claim.state, Code.id,
                  Code.value_encrypted)
        .join(Creator, Creator.id == Claim.creator_id)
        .outerjoin(Code, Code.id == Claim.code_id)
        .where(Claim.program_id == program_id, Claim.id == claim_id)).first()
    session.rollback()  # a read: nothing held
    if row is None:
        raise NotFound("this program has no such claim")
    claim_id, handle, email, state, code_id, token = row
    masked = mask_code(code_cipher.cipher().decrypt(token)) if token is not None else None
    return ClaimCode(claim_id, handle, email, state, code_id, masked)


def reveal_claim_code(session: Session, *, program_id: int, claim_id: int, actor: str,
                      reason: str) -> str:
    """The code of a program's claim in clear, through ``reveal_code`` (audited). Conflict if
    the claim holds no code."""
    found = claim_code(session, program_id=program_id, claim_id=claim_id)
    if found.code_id is None:
        raise Conflict("this claim holds no code", code="claim_has_no_code")
    return reveal_code(session, found.code_id, actor=actor, reason=reason)


KEY_ROTATED = "codes.key_rotated"
ROTATION_BATCH = 2000
_code = Code.__table__
_REENCRYPT = (sa.update(_code).where(_code.c.id == sa.bindparam("b_id"))
              .values(value_encrypted=sa.bindparam("b_token"), key_id=sa.bindparam("b_key")))


def codes_under_older_keys(session: Session) -> int:
    """How many codes a rotation has left: those whose token the newest key did not make."""
    newest = code_cipher.cipher().newest_key_id
    count = session.execute(sa.select(sa.func.count()).select_from(_code)
                            .where(_code.c.key_id != newest)).scalar_one()
    session.rollback()
    return count


def rotate_code_key(session: Session, *, actor: str, batch_size: int = ROTATION_BATCH,
                    progress: Callable[[int], None] | None = None) -> int:
    """Re-encrypt under the newest key of CODE_ENCRYPTION_KEY every code another key made;
    returns how many. ``progress`` is called with each batch's count.

    Batches go in id order and each commits: stopped half-way, a rotation is resumed by running
    it again, which finds only the codes still to do; with none left it changes nothing. Every
    process keeps reading codes meanwhile (older keys stay in CODE_ENCRYPTION_KEY until this has
    finished). Each code's fingerprint is checked as it is re-encrypted: a fingerprint key that
    changed stops the rotation before the batch it found is written.
    """
    cipher = code_cipher.cipher()
    newest = cipher.newest_key_id
    pick = (sa.select(_code.c.id, _code.c.value_encrypted, _code.c.fingerprint)
            .where(_code.c.id > sa.bindparam("b_after"), _code.c.key_id != newest)
            .order_by(_code.c.id).limit(batch_size))
    rotated, after = 0, 0
    while True:
        with write_transaction(session):
            rows = session.execute(pick, {"b_after": after}).all()
            if not rows:
                break
            writes = []
            for code_id, token, fingerprint in rows:
                value = cipher.decrypt(token)
                if cipher.fingerprint(value) != bytes(fingerprint):
                    raise code_cipher.CodeKeyError(
                        f"code #{code_id} was fingerprinted with another key than the one "
                        "configured: set CODE_FINGERPRINT_KEY to the key the codes were "
                        "fingerprinted with (when empty, it is derived from the oldest key of "
                        "CODE_ENCRYPTION_KEY), then rotate again")
                writes.append({"b_id": code_id, "b_token": cipher.encrypt(value),
                               "b_key": newest})
            session.execute(_REENCRYPT, writes)
        rotated += len(rows)
        after = rows[-1][0]
        if progress:
            progress(len(rows))
    if rotated:
        with write_transaction(session):
            audit.record(session, audit.event(actor=actor, action=KEY_ROTATED,
                                              object_type="code", object_id=None,
                                              detail={"rotated": rotated, "key_id": newest}))
    log_event(KEY_ROTATED, rotated=rotated)
    return rotated


# --------------------------------------------------------------------------- batches

MAX_REASON_LENGTH = 200


def find_batch(session: Session, *, program_id: int, batch: str | int,
               for_update: bool = False) -> CodeBatch:
    """The program's batch named by its id (a number) or its name. NotFound if none; Conflict
    if the name is shared by several (the id tells them apart)."""
    ref = str(batch).strip()
    query = select(CodeBatch).where(CodeBatch.program_id == program_id)
    if for_update:
        query = query.with_for_update()
    query = query.execution_options(populate_existing=True)
    if ref.isdigit():
        found = session.exec(query.where(CodeBatch.id == int(ref))).first()
        if found is not None:
            return found
    named = session.exec(query.where(CodeBatch.name == ref).order_by(CodeBatch.id)).all()
    if not named:
        raise NotFound(f"this program has no batch {ref!r} (give its id or its name)",
                       batch=ref)
    if len(named) > 1:
        ids = ", ".join(f"#{b.id}" for b in named)
        raise Conflict(f"{len(named)} batches are named {ref!r} ({ids}): give the batch id",
                       batch=ref)
    return named[0]


@dataclass(frozen=True)
class ExpiryChange:
    batch_id: int
    name: str
    before: date | None
    after: date | None


EXPIRY_CHANGED = "code_batch.expiry_changed"


def set_batch_expiry(session: Session, *, program_id: int, batch: str | int,
                     expires_on: date | None, actor: str,
                     today: date | None = None) -> ExpiryChange:
    """Change the last day a batch's codes can be redeemed (None: they do not expire). Mails
    sent from now on say the new date; the date can't be in the past."""
    today = today or datetime.now(UTC).date()
    if expires_on is not None and expires_on < today:
        raise InvalidInput(f"expiry date {expires_on.isoformat()} is in the past",
                           field="expires")
    with write_transaction(session):
        found = find_batch(session, program_id=program_id, batch=batch, for_update=True)
        change = ExpiryChange(found.id, found.name, found.expires_on, expires_on)
        found.expires_on = expires_on
        session.flush()
        audit.record(session, audit.event(
            actor=actor, action=EXPIRY_CHANGED, object_type="code_batch", object_id=found.id,
            program_id=program_id,
            detail={"before": change.before, "after": change.after}))
    log_event(EXPIRY_CHANGED, batch_id=change.batch_id, program_id=program_id)
    return change


@dataclass(frozen=True)
class BatchVoided:
    batch_id: int
    name: str
    voided: int  # codes that were in stock, void now
    held: int    # codes of the batch creators hold: untouched


BATCH_VOIDED = "code_batch.voided"
_VOID_BATCH_STOCK = (
    sa.update(Code.__table__)
    .where(Code.__table__.c.program_id == sa.bindparam("b_program"),
           Code.__table__.c.batch_id == sa.bindparam("b_batch"),
           Code.__table__.c.status == CodeStatus.available.value)
    .values(status=CodeStatus.void.value)
)


def void_batch(session: Session, *, program_id: int, batch: str | int, reason: str,
               actor: str) -> BatchVoided:
    """Void every code of a batch still in stock (``restore-code`` can bring one back); the
    codes creators hold are left as they are. The stock counter goes down by as many, in the
    same transaction, under the program's row lock (allocation takes codes under it too)."""
    reason = audit.reason_given(reason, doing="the batch is voided", limit=MAX_REASON_LENGTH)
    with write_transaction(session):
        lock_program(session, program_id)
        found = find_batch(session, program_id=program_id, batch=batch)
        conn = session.connection()
        voided = conn.execute(_VOID_BATCH_STOCK,
                              {"b_program": program_id, "b_batch": found.id}).rowcount
        held = session.execute(sa.select(sa.func.count()).select_from(Code).where(
            Code.batch_id == found.id, Code.status == CodeStatus.assigned)).scalar_one()
        if voided:
            stock.move_counter(conn, program_id, -voided, batch_id=found.id)
            audit.record(session, audit.event(
                actor=actor, action=BATCH_VOIDED, object_type="code_batch",
                object_id=found.id, program_id=program_id,
                detail={"voided": voided, "held": held, "reason": reason}))
        result = BatchVoided(found.id, found.name, voided, held)
    log_event(BATCH_VOIDED, batch_id=result.batch_id, program_id=program_id, voided=voided)
    return result
