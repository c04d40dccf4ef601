"""Allocation: giving a pending claim one code, inside the quota, exactly once.

One transaction per claim: *lock what you make less available, then check, then take*.

1. Lock the claim row; anything but ``pending`` means the work is done (idempotent re-runs).
2. Take the next available code with ``FOR UPDATE SKIP LOCKED``: parallel workers lock
   different codes instead of waiting on each other. None left: waitlisted (out of stock).
3. Raise the program's ``allocated_count`` with a conditional UPDATE
   (``WHERE allocated_count < quota``): the row lock makes concurrent increments queue, and each
   re-checks the condition, so the quota can't be overrun. No room: waitlisted (quota reached).
4. Assign the code, mark the claim allocated and queue its redemption mail (an OutboundEmail row)
   in the same transaction, so an allocation never exists without the mail owed for it.

On SQLite the transaction starts with BEGIN IMMEDIATE, which serialises allocations; the
``FOR UPDATE`` clauses compile to nothing there. The same code runs on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from .. import dispatch
from ..db import write_transaction
from ..logs import log_event
from ..models import (
    Claim,
    ClaimState,
    Code,
    CodeStatus,
    Creator,
    MailKind,
    OutboundEmail,
    Program,
)
from . import audit
from .claims import REASON_OUT_OF_STOCK, REASON_QUOTA


@dataclass(frozen=True)
class AllocationResult:
    claim_id: int
    state: str
    changed: bool
    outbound_id: int | None = None


def allocate(session: Session, *, claim_id: int) -> AllocationResult | None:
    """Decide a pending claim: allocated or waitlisted. Re-running it changes nothing."""
    now = datetime.now(UTC)
    outbound_id = None
    with write_transaction(session):
        claim = session.exec(
            select(Claim)
            .where(Claim.id == claim_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()
        if claim is None:
            log_event("allocation.unknown_claim", claim_id=claim_id)
            return None
        if claim.state != ClaimState.pending:
            return AllocationResult(claim_id, claim.state, changed=False)

        code_id = session.execute(
            sa.select(Code.id)
            .where(Code.program_id == claim.program_id, Code.status == CodeStatus.available)
            .order_by(Code.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        reason = None
        if code_id is None:
            reason = REASON_OUT_OF_STOCK
        else:
            took_quota = session.execute(
                sa.update(Program)
                .where(Program.id == claim.program_id, Program.allocated_count < Program.quota)
                .values(allocated_count=Program.allocated_count + 1)
                .execution_options(synchronize_session=False)
            ).rowcount
            if not took_quota:
                reason = REASON_QUOTA

        if reason is not None:
            claim.state = ClaimState.waitlisted
            claim.reason = reason
            claim.decided_at = now
            audit.record(session, actor="system", action="claim.waitlisted", object_type="claim",
                         object_id=claim.id, program_id=claim.program_id,
                         detail={"reason": reason})
        else:
            taken = session.execute(
                sa.update(Code)
                .where(Code.id == code_id, Code.status == CodeStatus.available)
                .values(status=CodeStatus.assigned, assigned_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken != 1:  # the row lock makes this impossible; never hand out a taken code
                raise RuntimeError(f"code {code_id} was taken under our lock")
            claim.state = ClaimState.allocated
            claim.reason = None
            claim.code_id = code_id
            claim.decided_at = now
            to_email = session.execute(
                sa.select(Creator.email).where(Creator.id == claim.creator_id)
            ).scalar_one()
            outbound = OutboundEmail(kind=MailKind.redemption, to_email=to_email,
                                     creator_id=claim.creator_id, claim_id=claim.id)
            session.add(outbound)
            session.flush()
            outbound_id = outbound.id
            audit.record(session, actor="system", action="claim.allocated", object_type="claim",
                         object_id=claim.id, program_id=claim.program_id,
                         detail={"code_id": code_id})
        state, program_id = claim.state, claim.program_id

    log_event("claim.decided", claim_id=claim_id, program_id=program_id, state=state,
              reason=reason)
    if outbound_id is not None:
        dispatch.send_email(outbound_id)
    return AllocationResult(claim_id, state, changed=True, outbound_id=outbound_id)
