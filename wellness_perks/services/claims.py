"""Claims: a creator asks for a program's perk, once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from .. import dispatch
from ..db import found_by_key, is_postgresql, once_more_if_disconnected, write_transaction
from ..logs import log_event
from ..models import (
    AuditEvent,
    Claim,
    ClaimReason,
    ClaimState,
    Code,
    CodeBatch,
    Creator,
    Eligibility,
    Program,
    WindowState,
    window_state,
)
from . import audit, code_cipher
from .errors import ClaimsPaused, ClaimWindowNotOpen, NotFound, NotOnList, ProgramNotFound


def is_eligible(session: Session, *, program_id: int, creator_id: int) -> bool:
    return session.exec(
        select(Eligibility.id).where(
            found_by_key(Eligibility.program_id == program_id),
            Eligibility.creator_id == creator_id,
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
        .where(found_by_key(Claim.program_id == program_id), Claim.creator_id == creator_id)
        .execution_options(populate_existing=True)
    ).first()


@dataclass(frozen=True)
class ClaimRequested:
    """What a claim request left behind: the creator's claim, as it stands."""

    id: int
    state: str
    reason: str | None


def request_claim(
    session: Session, *, program: Program | str, creator_id: int, now: datetime | None = None
) -> ClaimRequested:
    """Record the creator's claim (once) and hand it to allocation. ``program`` is a Program or
    a slug (ProgramNotFound if there is none).

    A second request changes nothing. A claim refused earlier is looked at again, so a reopened
    window is not locked out. A creator not on the program's list gets NotOnList (a NotFound)
    and nothing is recorded; before the window opens nothing is recorded (ClaimWindowNotOpen).

    This is the launch-day hot path. One query reads everything the decision needs. On
    PostgreSQL a new claim is then written, with its audit event, by one more statement, each
    committing on its own (no BEGIN/COMMIT round trips); a concurrent duplicate loses on the
    unique constraint and changes nothing. Anything else (SQLite, a refused claim reconsidered,
    a lost race) takes the general path: read and write in one transaction.
    """
    now = now or datetime.now(UTC)
    # A connection that died under the claim costs a second try, not an error: the claim is
    # one per creator, so a first attempt that did commit is found, not repeated.
    return once_more_if_disconnected(
        session, lambda: _request_claim(session, program, creator_id, now))


def _request_claim(session: Session, program: Program | str, creator_id: int,
                   now: datetime) -> ClaimRequested:
    result = None
    try:
        if is_postgresql(session):
            result = _record_new_claim_autocommit(session, program, creator_id, now)
        if result is None:
            with write_transaction(session):
                result = _record_claim(session.connection(), program, creator_id, now)
    except IntegrityError:
        # A concurrent request stored this creator's claim first: that one stands.
        program_id = (program.id if isinstance(program, Program)
                      else _program_id(session.connection(), program))
        existing = get_claim(session, program_id=program_id, creator_id=creator_id)
        return ClaimRequested(existing.id, existing.state, existing.reason)
    claim, program_id, changed = result
    if changed:
        log_event("claim.requested", claim_id=claim.id, program_id=program_id,
                  creator_id=creator_id, state=claim.state, reason=claim.reason)
        if claim.state == ClaimState.pending:
            dispatch.schedule_allocation(program_id)
    return claim


def _program_id(conn: sa.Connection, slug: str) -> int:
    """The id of the program with this slug; ProgramNotFound if there is none."""
    program_id = conn.execute(_PROGRAM_ID, {"b_slug": slug}).scalar()
    if program_id is None:
        raise ProgramNotFound(slug)
    return program_id


@dataclass(frozen=True)
class _Decision:
    program_id: int
    country: str
    existing: ClaimRequested | None  # the creator's claim as it stands, if any
    state: ClaimState | None = None  # what to record; None: nothing changes
    reason: str | None = None


def _decide(conn: sa.Connection, program: Program | str, creator_id: int,
            now: datetime) -> _Decision:
    """Read the claim's context (one query) and decide what to record."""
    by_slug = not isinstance(program, Program)
    row = conn.execute(
        _CLAIM_CONTEXT_BY_SLUG if by_slug else _CLAIM_CONTEXT_BY_ID,
        {"program": program if by_slug else program.id, "creator_id": creator_id},
    ).first()
    if row is None:
        if by_slug:
            _program_id(conn, program)  # ProgramNotFound, unless the creator is what is missing
        raise NotFound(f"no creator with id {creator_id}")
    (program_id, name, opens_at, closes_at, paused_at, country, eligibility_id,
     claim_id, claim_state, claim_reason) = row
    existing = (ClaimRequested(claim_id, claim_state, claim_reason)
                if claim_id is not None else None)
    if existing is not None and claim_state != ClaimState.refused:
        return _Decision(program_id, country, existing)
    if existing is None and eligibility_id is None:
        # A program whose list the creator is not on is none of their business: not even
        # its window is told, and nothing is recorded.
        raise NotOnList(program_id=program_id, creator_id=creator_id)

    window = window_state(opens_at, closes_at, now, paused_at)
    if window == WindowState.not_open:
        raise ClaimWindowNotOpen(name=name, opens_at=opens_at)
    if window == WindowState.paused:
        # Nothing is recorded, as before the window opens: once claiming resumes, the
        # creator's claim takes its place in line like any other.
        raise ClaimsPaused(f"claims for {name} are paused", name=name)
    if eligibility_id is None:
        state, reason = ClaimState.refused, ClaimReason.not_eligible
    elif window == WindowState.closed:
        state, reason = ClaimState.refused, ClaimReason.window_closed
    else:
        state, reason = ClaimState.pending, None
    if existing is not None and state == ClaimState.refused:
        # Only a refused claim gets here; it moves on only if the refusal no longer holds.
        return _Decision(program_id, country, existing)
    return _Decision(program_id, country, existing, state, reason)


def _record_new_claim_autocommit(
    session: Session, program: Program | str, creator_id: int, now: datetime
) -> tuple[ClaimRequested, int, bool] | None:
    """PostgreSQL: the common cases in two statements outside a transaction. None when the
    general path must decide (a refused claim to reconsider, or a concurrent duplicate)."""
    with session.get_bind().connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        decision = _decide(conn, program, creator_id, now)
        if decision.state is None:
            return decision.existing, decision.program_id, False
        if decision.existing is not None:
            return None
        event = _audit_event(decision, creator_id, None, now)
        claim_id = conn.execute(_INSERT_CLAIM_WITH_AUDIT, {
            **_claim_row(decision, creator_id, now),
            "b_actor": event["actor"], "b_action": event["action"], "b_detail": event["detail"],
        }).scalar()
    if claim_id is None:  # a concurrent request stored this creator's claim first
        return None
    return (ClaimRequested(claim_id, decision.state.value, decision.reason),
            decision.program_id, True)


def _record_claim(
    conn: sa.Connection, program: Program | str, creator_id: int, now: datetime
) -> tuple[ClaimRequested, int, bool]:
    decision = _decide(conn, program, creator_id, now)
    if decision.state is None:
        return decision.existing, decision.program_id, False
    state = decision.state
    if decision.existing is not None:
        claim_id = decision.existing.id
        conn.execute(
            sa.update(Claim.__table__).where(Claim.__table__.c.id == claim_id)
            .values(state=state.value, reason=None, requested_at=now, decided_at=None)
        )
    else:
        claim_id = conn.execute(_INSERT_CLAIM, _claim_row(decision, creator_id, now)).scalar_one()
    audit.record(conn, _audit_event(decision, creator_id, claim_id, now))
    return ClaimRequested(claim_id, state.value, decision.reason), decision.program_id, True


def _claim_row(decision: _Decision, creator_id: int, now: datetime) -> dict:
    return {"b_program_id": decision.program_id, "b_creator_id": creator_id,
            "b_country": decision.country, "b_state": decision.state.value,
            "b_reason": decision.reason, "b_now": now,
            "b_decided_at": now if decision.state == ClaimState.refused else None}


def _audit_event(decision: _Decision, creator_id: int, claim_id: int | None,
                 now: datetime) -> dict:
    """The audit event of a claim recorded (``claim.requested``) or refused, with the reason."""
    return audit.event(
        actor=f"creator:{creator_id}", object_type="claim", object_id=claim_id,
        program_id=decision.program_id, at=now,
        action="claim.requested" if decision.state == ClaimState.pending else "claim.refused",
        detail={"reason": decision.reason} if decision.reason else None)


def _claim_context(program_matches) -> sa.Select:
    """One query: the program (its window, and whether claiming is paused), the creator's
    country, whether they are on its list, and their earlier claim. Built once; executed with
    ``program`` and ``creator_id`` parameters."""
    claim = Claim.__table__.c
    return (
        sa.select(Program.id, Program.name, Program.opens_at, Program.closes_at,
                  Program.claims_paused_at, Creator.country, Eligibility.id, claim.id,
                  claim.state, claim.reason)
        .select_from(Program)
        .join(Creator, Creator.id == sa.bindparam("creator_id"))
        # Found by the creator (a creator has a row per program at most), whatever the plan:
        # see ``found_by_key``.
        .outerjoin(Eligibility, sa.and_(Eligibility.creator_id == Creator.id,
                                        found_by_key(Eligibility.program_id == Program.id)))
        .outerjoin(Claim, sa.and_(claim.creator_id == Creator.id,
                                  found_by_key(claim.program_id == Program.id)))
        .where(program_matches)
    )


_PROGRAM_ID = sa.select(Program.id).where(Program.slug == sa.bindparam("b_slug"))
_CLAIM_CONTEXT_BY_ID = _claim_context(Program.id == sa.bindparam("program"))
_CLAIM_CONTEXT_BY_SLUG = _claim_context(Program.slug == sa.bindparam("program"))
_claim = Claim.__table__.c
_CLAIM_VALUES = {
    "program_id": sa.bindparam("b_program_id"), "creator_id": sa.bindparam("b_creator_id"),
    "country": sa.bindparam("b_country"), "state": sa.bindparam("b_state"),
    "reason": sa.bindparam("b_reason"), "requested_at": sa.bindparam("b_now"),
    "decided_at": sa.bindparam("b_decided_at"),
}
_INSERT_CLAIM = sa.insert(Claim.__table__).values(_CLAIM_VALUES).returning(_claim.id)


def _insert_claim_with_audit() -> sa.Insert:
    """PostgreSQL: the claim (unless the creator has one: then nothing) and its audit event in
    one statement; returns the new claim's id, or no row."""
    new_claim = (
        pg_insert(Claim.__table__).values(_CLAIM_VALUES)
        .on_conflict_do_nothing(index_elements=["program_id", "creator_id"])
        .returning(_claim.id, _claim.program_id)
        .cte("new_claim")
    )
    event = AuditEvent.__table__.c

    def param(name: str, column: sa.Column) -> sa.Cast:
        return sa.cast(sa.bindparam(name), column.type)

    return (
        sa.insert(AuditEvent.__table__)
        .from_select(
            ["at", "actor", "action", "object_type", "object_id", "program_id", "detail"],
            sa.select(param("b_now", event.at), param("b_actor", event.actor),
                      param("b_action", event.action), sa.literal("claim", sa.String),
                      new_claim.c.id, new_claim.c.program_id,
                      param("b_detail", event.detail)),
        )
        .returning(event.object_id)
    )


_INSERT_CLAIM_WITH_AUDIT = _insert_claim_with_audit()


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


def code_for_owner(session: Session, claim: Claim) -> tuple[str, CodeBatch] | None:
    """The code of an allocated claim, decrypted, and its batch: for its owner's eyes (their
    program page) only; the caller has checked the claim is theirs."""
    if claim.code_id is None:
        return None
    code = session.get(Code, claim.code_id)
    return (code_cipher.cipher().decrypt(code.value_encrypted),
            session.get(CodeBatch, code.batch_id))
