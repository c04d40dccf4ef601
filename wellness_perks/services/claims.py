"""Claims: a creator asks for a program's perk, once."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from .. import dispatch
from ..db import write_transaction
from ..logs import log_event
from ..models import Claim, ClaimState, Code, CodeBatch, Creator, Eligibility, Program
from . import audit
from .errors import ClaimWindowNotOpen

REASON_NOT_ELIGIBLE = "not eligible"
REASON_WINDOW_CLOSED = "claim window closed"


def is_eligible(session: Session, *, program_id: int, creator_id: int) -> bool:
    return session.exec(
        select(Eligibility.id).where(
            Eligibility.program_id == program_id, Eligibility.creator_id == creator_id
        )
    ).first() is not None


def programs_for_creator(
    session: Session, *, creator_id: int
) -> list[tuple[Program, Claim | None]]:
    """The programs a creator is on the list of (or has a claim in), with their claim."""
    eligible = sa.select(Eligibility.program_id).where(Eligibility.creator_id == creator_id)
    claimed = sa.select(Claim.program_id).where(Claim.creator_id == creator_id)
    programs = session.exec(
        select(Program).where(Program.id.in_(eligible.union(claimed))).order_by(Program.id)
    ).all()
    claims = {
        c.program_id: c
        for c in session.exec(select(Claim).where(Claim.creator_id == creator_id)).all()
    }
    return [(p, claims.get(p.id)) for p in programs]


def get_claim(session: Session, *, program_id: int, creator_id: int) -> Claim | None:
    return session.exec(
        select(Claim)
        .where(Claim.program_id == program_id, Claim.creator_id == creator_id)
        .execution_options(populate_existing=True)
    ).first()


def request_claim(
    session: Session, *, program: Program, creator_id: int, now: datetime | None = None
) -> Claim:
    """Record the creator's claim (once) and hand it to allocation.

    A second request changes nothing. A claim refused earlier is looked at again, so a creator
    added to the list or a reopened window is not locked out. Before the window opens nothing is
    recorded (ClaimWindowNotOpen).
    """
    now = now or datetime.now(UTC)
    try:
        with write_transaction(session):
            claim, changed = _record_claim(session, program, creator_id, now)
    except IntegrityError:
        # A concurrent request stored this creator's claim first: that one stands.
        return get_claim(session, program_id=program.id, creator_id=creator_id)
    if changed:
        log_event("claim.requested", claim_id=claim.id, program_id=program.id,
                  creator_id=creator_id, state=claim.state, reason=claim.reason)
        if claim.state == ClaimState.pending:
            dispatch.schedule_allocation(program.id)
    return claim


def _record_claim(
    session: Session, program: Program, creator_id: int, now: datetime
) -> tuple[Claim, bool]:
    # One query: the creator's country, whether they are on the list, and any earlier claim.
    country, eligibility_id, existing = session.execute(
        sa.select(Creator.country, Eligibility.id, Claim)
        .select_from(Creator)
        .outerjoin(Eligibility, sa.and_(Eligibility.creator_id == Creator.id,
                                        Eligibility.program_id == program.id))
        .outerjoin(Claim, sa.and_(Claim.creator_id == Creator.id,
                                  Claim.program_id == program.id))
        .where(Creator.id == creator_id)
        .execution_options(populate_existing=True)
    ).one()
    if existing is not None and existing.state != ClaimState.refused:
        return existing, False

    window = program.window_state(now)
    if window == "not_open":
        raise ClaimWindowNotOpen(
            f"claims for {program.name} open on {program.opens_at:%Y-%m-%d %H:%M} UTC"
        )
    if eligibility_id is None:
        state, reason = ClaimState.refused, REASON_NOT_ELIGIBLE
    elif window == "closed":
        state, reason = ClaimState.refused, REASON_WINDOW_CLOSED
    else:
        state, reason = ClaimState.pending, None

    if existing is not None:
        # Only a refused claim gets here; it moves on only if the refusal no longer holds.
        if state == ClaimState.refused:
            return existing, False
        claim = existing
        claim.state, claim.reason, claim.requested_at, claim.decided_at = state, None, now, None
    else:
        claim = Claim(program_id=program.id, creator_id=creator_id, country=country,
                      state=state, reason=reason, requested_at=now,
                      decided_at=now if state == ClaimState.refused else None)
        session.add(claim)
    session.flush()
    audit.record(session, actor=f"creator:{creator_id}",
                 action="claim.requested" if state == ClaimState.pending else "claim.refused",
                 object_type="claim", object_id=claim.id, program_id=program.id,
                 detail={"reason": reason} if reason else None)
    return claim, True


def waitlist_position(session: Session, claim: Claim) -> int | None:
    """1 for the first waitlisted claim of its program, in claim order."""
    if claim.state != ClaimState.waitlisted:
        return None
    ahead = session.execute(
        sa.select(sa.func.count())
        .select_from(Claim)
        .where(Claim.program_id == claim.program_id, Claim.state == ClaimState.waitlisted,
               Claim.id < claim.id)
    ).scalar_one()
    return ahead + 1


def code_for_owner(session: Session, claim: Claim) -> tuple[Code, CodeBatch] | None:
    """The code of an allocated claim and its batch: for its owner's eyes (page and mail) only."""
    if claim.code_id is None:
        return None
    code = session.get(Code, claim.code_id)
    return code, session.get(CodeBatch, code.batch_id)
