"""Allocation: giving waiting claims codes, first come first served, inside every quota.

A claim waits while it is ``pending`` (just made) or ``waitlisted`` (no code or no quota left
when it was looked at). Allocation serves a program's waiting claims in claim order, in batches,
one transaction per batch:

1. Lock the program row (``FOR UPDATE``). Allocations of one program are serialised on it, and
   so are quota changes, voids and reissues; a batch of claims shares one lock, so the lock is
   taken once per batch, not once per claim.
2. Read the room left: the global quota minus ``allocated_count``, and the same per country
   with a country quota.
3. Take the oldest waiting claims (skipping countries with no room) and as many available codes
   (``FOR UPDATE SKIP LOCKED``) as there is room for.
4. Pair them in claim order; record each pair in ``codeassignment`` (``code_id`` unique: a code
   is assigned once, ever), raise the counters, and write each claim's redemption mail as an
   ``OutboundEmail`` row, all in the same transaction.
5. Claims that cannot be served are (or stay) waitlisted, with the reason.
6. After the commit, the batch's mails are handed to send tasks of ``MAIL_BATCH_SIZE``.

The counters carry CHECK constraints (``allocated_count <= quota``): even a bug here could not
overrun a quota. On SQLite the transaction begins with BEGIN IMMEDIATE and the ``FOR UPDATE``
clauses compile to nothing: the same code, serialised by SQLite's single writer.

Every entry point is idempotent: it serves whoever is waiting now, and re-running it when nobody
is waiting changes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session, select

from .. import dispatch
from ..db import write_transaction
from ..logs import log_event
from ..models import (
    AuditEvent,
    Claim,
    ClaimState,
    Code,
    CodeAssignment,
    CodeStatus,
    CountryQuota,
    Creator,
    MailKind,
    OutboundEmail,
    Program,
)

REASON_QUOTA = "quota reached"
REASON_COUNTRY_QUOTA = "country quota reached"
REASON_OUT_OF_STOCK = "out of stock"
WAITING = (ClaimState.pending, ClaimState.waitlisted)


@dataclass
class AllocationResult:
    program_id: int
    allocated: list[int] = field(default_factory=list)    # claim ids given a code
    waitlisted: list[int] = field(default_factory=list)   # claim ids newly waitlisted
    outbound_ids: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.allocated or self.waitlisted)

    def merge(self, other: AllocationResult) -> None:
        self.allocated += other.allocated
        self.waitlisted += other.waitlisted
        self.outbound_ids += other.outbound_ids


def allocate_claim(session: Session, *, claim_id: int) -> AllocationResult | None:
    """Serve the program of ``claim_id`` (the claim is served in its turn, or waitlisted)."""
    program_id = session.execute(
        sa.select(Claim.program_id).where(Claim.id == claim_id)
    ).scalar_one_or_none()
    session.commit()
    if program_id is None:
        log_event("allocation.unknown_claim", claim_id=claim_id)
        return None
    return allocate_program(session, program_id=program_id)


def allocate_program(session: Session, *, program_id: int,
                     batch_size: int | None = None) -> AllocationResult:
    """Serve a program's waiting claims, batch after batch, until none can be served."""
    dispatch.allocation_starting(program_id)
    batch_size = batch_size or current_app.config["ALLOCATION_BATCH_SIZE"]
    total = AllocationResult(program_id)
    while True:
        result, more = _allocate_batch(session, program_id, batch_size)
        total.merge(result)
        if result.changed:
            log_event("allocation.batch", program_id=program_id,
                      allocated=len(result.allocated), waitlisted=len(result.waitlisted))
        if result.outbound_ids:
            dispatch.send_emails(result.outbound_ids)
        if not more:
            return total


def _allocate_batch(session: Session, program_id: int,
                    batch_size: int) -> tuple[AllocationResult, bool]:
    """One transaction: returns what it did, and whether more claims may be servable."""
    now = datetime.now(UTC)
    result = AllocationResult(program_id)
    with write_transaction(session):
        program = session.exec(
            select(Program).where(Program.id == program_id).with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        room = program.quota - program.allocated_count
        country_room = {
            cq.country: cq.quota - cq.allocated_count
            for cq in session.exec(
                select(CountryQuota).where(CountryQuota.program_id == program_id)
                .execution_options(populate_existing=True)
            )
        }
        if room <= 0:
            result.waitlisted += _waitlist_pending(session, program_id, REASON_QUOTA, now)
            _relabel_waitlist(session, program_id, REASON_QUOTA)
            return result, False
        full = [country for country, left in country_room.items() if left <= 0]
        if full:
            result.waitlisted += _waitlist_pending(session, program_id, REASON_COUNTRY_QUOTA,
                                                   now, countries=full)
            _relabel_waitlist(session, program_id, REASON_COUNTRY_QUOTA, countries=full)
        claims = session.execute(
            sa.select(Claim.id, Claim.country, Claim.creator_id, Claim.state)
            .where(Claim.program_id == program_id, Claim.state.in_(WAITING),
                   Claim.country.not_in(full))
            .order_by(Claim.id)
            .limit(batch_size)
            .with_for_update()
        ).all()
        if not claims:
            return result, False
        code_ids = session.execute(
            sa.select(Code.id)
            .where(Code.program_id == program_id, Code.status == CodeStatus.available)
            .order_by(Code.id)
            .limit(min(room, len(claims)))
            .with_for_update(skip_locked=True)
        ).scalars().all()

        pairs: list[tuple[int, int, int]] = []  # (claim id, code id, creator id)
        per_country: Counter[str] = Counter()
        country_full: list[int] = []
        codes = iter(code_ids)
        exhausted = None  # the reason nobody else can be served this round, once known
        for claim_id, country, creator_id, state in claims:
            if country in country_room and country_room[country] <= 0:
                if state == ClaimState.pending:
                    country_full.append(claim_id)
                continue
            if len(pairs) >= room:
                exhausted = REASON_QUOTA
                break
            code_id = next(codes, None)
            if code_id is None:
                exhausted = REASON_OUT_OF_STOCK
                break
            pairs.append((claim_id, code_id, creator_id))
            per_country[country] += 1
            if country in country_room:
                country_room[country] -= 1

        if pairs:
            result.outbound_ids = _assign(session, program, pairs, per_country, now)
            result.allocated = [claim_id for claim_id, _code, _creator in pairs]
        if country_full:
            _waitlist(session, country_full, REASON_COUNTRY_QUOTA, now)
            result.waitlisted += country_full
        if exhausted is None and len(pairs) == room:
            exhausted = REASON_QUOTA
        if exhausted is not None:
            # Whoever else is pending waits too (the next trigger serves them in order).
            result.waitlisted += _waitlist_pending(session, program_id, exhausted, now)
            _relabel_waitlist(session, program_id, exhausted, except_countries=full)

    more = exhausted is None and len(claims) == batch_size
    return result, more


def _assign(session: Session, program: Program, pairs: list[tuple[int, int, int]],
            per_country: Counter[str], now: datetime) -> list[int]:
    program_id = program.id
    count = len(pairs)
    code_ids = [code_id for _claim, code_id, _creator in pairs]
    taken = session.execute(
        sa.update(Code)
        .where(Code.id.in_(code_ids), Code.status == CodeStatus.available)
        .values(status=CodeStatus.assigned, assigned_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != count:  # our row locks make this impossible; never hand out a taken code
        raise RuntimeError(f"program {program_id}: {count - taken} codes were taken under lock")
    session.execute(
        sa.update(Claim).execution_options(synchronize_session=False),
        [{"id": claim_id, "state": ClaimState.allocated.value, "reason": None,
          "code_id": code_id, "decided_at": now} for claim_id, code_id, _creator in pairs],
    )
    session.execute(sa.insert(CodeAssignment), [
        {"code_id": code_id, "claim_id": claim_id, "program_id": program_id, "assigned_at": now}
        for claim_id, code_id, _creator in pairs
    ])
    raised = session.execute(
        sa.update(Program)
        .where(Program.id == program_id, Program.allocated_count + count <= Program.quota)
        .values(allocated_count=Program.allocated_count + count)
        .execution_options(synchronize_session=False)
    ).rowcount
    if raised != 1:
        raise RuntimeError(f"program {program_id}: quota counter moved under lock")
    for country, n in per_country.items():
        session.execute(
            sa.update(CountryQuota)
            .where(CountryQuota.program_id == program_id, CountryQuota.country == country)
            .values(allocated_count=CountryQuota.allocated_count + n)
            .execution_options(synchronize_session=False)
        )
    emails = dict(session.execute(
        sa.select(Creator.id, Creator.email)
        .where(Creator.id.in_({creator for _claim, _code, creator in pairs}))
    ).all())
    outbound_ids = session.execute(
        sa.insert(OutboundEmail).returning(OutboundEmail.id, sort_by_parameter_order=True),
        [{"kind": MailKind.redemption.value, "to_email": emails[creator_id],
          "creator_id": creator_id, "claim_id": claim_id, "code_id": code_id,
          "status": "queued", "attempts": 0, "created_at": now}
         for claim_id, code_id, creator_id in pairs],
    ).scalars().all()
    session.execute(sa.insert(AuditEvent), [
        {"at": now, "actor": "system", "action": "claim.allocated", "object_type": "claim",
         "object_id": claim_id, "program_id": program_id,
         "detail": f'{{"code_id": {code_id}}}'}
        for claim_id, code_id, _creator in pairs
    ])
    return list(outbound_ids)


def _waitlist(session: Session, claim_ids: list[int], reason: str, now: datetime) -> None:
    session.execute(
        sa.update(Claim)
        .where(Claim.id.in_(claim_ids), Claim.state == ClaimState.pending)
        .values(state=ClaimState.waitlisted, reason=reason, decided_at=now)
        .execution_options(synchronize_session=False)
    )


def _relabel_waitlist(session: Session, program_id: int, reason: str, *,
                      countries: list[str] | None = None,
                      except_countries: list[str] | None = None) -> None:
    """Those already waiting now wait for ``reason``, whatever held them when they arrived."""
    query = sa.update(Claim).where(Claim.program_id == program_id,
                                   Claim.state == ClaimState.waitlisted, Claim.reason != reason)
    if countries is not None:
        query = query.where(Claim.country.in_(countries))
    if except_countries:
        query = query.where(Claim.country.not_in(except_countries))
    session.execute(query.values(reason=reason).execution_options(synchronize_session=False))


def _waitlist_pending(session: Session, program_id: int, reason: str, now: datetime,
                      countries: list[str] | None = None) -> list[int]:
    """Waitlist a program's pending claims (of these countries) at once: nothing can serve them."""
    query = sa.select(Claim.id).where(Claim.program_id == program_id,
                                      Claim.state == ClaimState.pending)
    if countries is not None:
        query = query.where(Claim.country.in_(countries))
    claim_ids = session.execute(query.with_for_update()).scalars().all()
    if claim_ids:
        _waitlist(session, list(claim_ids), reason, now)
    return list(claim_ids)
