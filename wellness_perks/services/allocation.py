"""Allocation: giving waiting claims codes, first come first served, inside every quota.

A claim waits while it is ``pending`` (just made) or ``waitlisted`` (no code or no quota left
when it was looked at). Allocation serves a program's waiting claims in claim order, in batches,
one transaction per batch:

1. Lock the program row (``FOR NO KEY UPDATE``). Allocations of one program are serialised on
   it, and so are quota changes, voids and reissues; a batch of claims shares one lock, so the
   lock is taken once per batch, not once per claim. New claims don't wait for it (see
   ``programs.lock_program``).
2. Read the room left: the global quota minus ``allocated_count``, and the same per country
   with a country quota.
3. Take the oldest waiting claims (skipping countries with no room) and as many available codes
   (``FOR UPDATE SKIP LOCKED``) as there is room for.
4. Pair them in claim order; record each pair in ``codeassignment`` (``code_id`` unique: a code
   is assigned once, ever), raise the allocation counters and lower the stock counter, and
   write each claim's redemption mail as an ``OutboundEmail`` row, all in the same transaction.
5. Claims that cannot be served are (or stay) waitlisted, with the reason. A claim whose
   creator is no longer on the program's list is refused (``removed_from_list``): the batch's
   query reads the list with the claims (one join on ``uq_eligibility``), under the program
   lock that a removal holds too, so a claim recorded after its creator's removal looked for
   it is never served; and so does the waitlisting of the pending claims when no room is left
   (a full quota or country quota), so such a claim is refused, never waitlisted first.
6. After the commit, the batch's mails are handed to send tasks of ``MAIL_BATCH_SIZE``.

The counters carry CHECK constraints (``allocated_count <= quota``, ``in_stock_count >= 0``):
even a bug here could not overrun a quota. On SQLite the transaction begins with BEGIN IMMEDIATE
and the ``FOR UPDATE`` clauses compile to nothing: the same code, serialised by SQLite's single
writer.

Every entry point is idempotent: it serves whoever is waiting now, and re-running it when nobody
is waiting changes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session

from .. import dispatch
from ..db import planned_each_execution, write_transaction
from ..logs import log_event
from ..models import (
    Claim,
    ClaimReason,
    ClaimState,
    CodeAssignment,
    CountryQuota,
    Creator,
    Eligibility,
    MailKind,
    Program,
)
from . import audit, stock
from .errors import NotFound
from .mail import owe, owed
from .programs import lock_program

WAITING = (ClaimState.pending, ClaimState.waitlisted)
QUOTA, COUNTRY_QUOTA = ClaimReason.quota_reached, ClaimReason.country_quota_reached


@dataclass
class AllocationResult:
    program_id: int
    allocated: list[int] = field(default_factory=list)    # claim ids given a code
    waitlisted: list[int] = field(default_factory=list)   # claim ids newly waitlisted
    refused: list[int] = field(default_factory=list)      # claim ids of creators off the list
    outbound_ids: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.allocated or self.waitlisted or self.refused)

    def merge(self, other: AllocationResult) -> None:
        self.allocated += other.allocated
        self.waitlisted += other.waitlisted
        self.refused += other.refused
        self.outbound_ids += other.outbound_ids


def allocate_program(session: Session, *, program_id: int,
                     batch_size: int | None = None) -> AllocationResult:
    """Serve a program's waiting claims, batch after batch, until none can be served."""
    batch_size = batch_size or current_app.config["ALLOCATION_BATCH_SIZE"]
    total = AllocationResult(program_id)
    while True:
        try:
            result, more = _allocate_batch(session, program_id, batch_size)
        except NotFound:  # no such program: nothing waits for it
            log_event("allocation.unknown_program", program_id=program_id)
            return total
        total.merge(result)
        if result.changed:
            log_event("allocation.batch", program_id=program_id,
                      allocated=len(result.allocated), waitlisted=len(result.waitlisted),
                      refused=len(result.refused))
        if result.outbound_ids:
            dispatch.send_emails(result.outbound_ids)
        if not more:
            return total


def _allocate_batch(session: Session, program_id: int,
                    batch_size: int) -> tuple[AllocationResult, bool]:
    """One transaction: returns what it did, and whether more claims may be servable."""
    result = AllocationResult(program_id)
    with write_transaction(session):
        conn = session.connection()
        with planned_each_execution(session):  # the reads that find the batch's rows
            program = lock_program(session, program_id)
            # Decisions are dated once the lock is held: a claim recorded while this batch
            # waited for it, and served by it, is never decided before it was requested.
            now = datetime.now(UTC)
            room = program.quota - program.allocated_count
            country_room = {country: left for country, left in
                            conn.execute(_COUNTRY_ROOM, {"b_program": program_id})}
            if room <= 0:
                _waitlist_pending(session, result, program_id, QUOTA, now)
                _relabel_waitlist(session, program_id, QUOTA)
                return result, False
            full = [country for country, left in country_room.items() if left <= 0]
            if full:
                _waitlist_pending(session, result, program_id, COUNTRY_QUOTA, now,
                                  countries=full)
                _relabel_waitlist(session, program_id, COUNTRY_QUOTA, countries=full)
            claims = conn.execute(_WAITING_CLAIMS, {"b_program": program_id, "b_full": full,
                                                    "b_limit": batch_size}).all()
            if not claims:
                return result, False
            read = len(claims)
            # A creator taken off the list while their claim waited (or as it was recorded)
            # is never served: their claim is refused, and takes no code.
            off_list = [claim[0] for claim in claims if not claim.on_list]
            if off_list:
                _refuse_off_list(conn, program_id, off_list, now)
                result.refused += off_list
                claims = [claim for claim in claims if claim.on_list]
            code_ids = stock.next_available(conn, program_id, min(room, len(claims)))

        pairs: list[_Pair] = []
        per_country: Counter[str] = Counter()
        country_full: list[int] = []
        codes = iter(code_ids)
        exhausted = None  # the reason nobody else can be served this round, once known
        for claim_id, country, creator_id, email, locale, state, _on_list in claims:
            if country in country_room and country_room[country] <= 0:
                if state == ClaimState.pending:
                    country_full.append(claim_id)
                continue
            if len(pairs) >= room:
                exhausted = QUOTA
                break
            code_id = next(codes, None)
            if code_id is None:
                exhausted = ClaimReason.out_of_stock
                break
            pairs.append(_Pair(claim_id, code_id, creator_id, email, locale))
            per_country[country] += 1
            if country in country_room:
                country_room[country] -= 1

        if pairs:
            result.outbound_ids = _assign(conn, program_id, pairs, per_country, now)
            result.allocated = [pair.claim_id for pair in pairs]
        if country_full:
            _waitlist(session, country_full, COUNTRY_QUOTA, now)
            result.waitlisted += country_full
        # Countries this batch filled: their creators now wait for their country's quota (no
        # new batch of codes would serve them), whatever else holds.
        filled = [country for country, left in country_room.items()
                  if left <= 0 and country not in full]
        if filled:
            _waitlist_pending(session, result, program_id, COUNTRY_QUOTA, now,
                              countries=filled)
            _relabel_waitlist(session, program_id, COUNTRY_QUOTA, countries=filled)
        if exhausted is None and len(pairs) == room:
            exhausted = QUOTA
        if exhausted is not None:
            # Whoever else is pending waits too (the next trigger serves them in order).
            _waitlist_pending(session, result, program_id, exhausted, now)
            _relabel_waitlist(session, program_id, exhausted, except_countries=full + filled)

    more = exhausted is None and read == batch_size
    return result, more


@dataclass(frozen=True, slots=True)
class _Pair:
    claim_id: int
    code_id: int
    creator_id: int
    email: str
    locale: str


def _assign(conn: sa.Connection, program_id: int, pairs: list[_Pair],
            per_country: Counter[str], now: datetime) -> list[int]:
    count = len(pairs)
    stock.take(conn, program_id, [p.code_id for p in pairs], now)
    conn.execute(_ALLOCATE_CLAIM, [{"b_id": p.claim_id, "b_code": p.code_id, "b_now": now}
                                   for p in pairs])
    conn.execute(_INSERT_ASSIGNMENT, [
        {"code_id": p.code_id, "claim_id": p.claim_id, "program_id": program_id,
         "assigned_at": now} for p in pairs])
    raised = conn.execute(_RAISE_COUNT, {"b_program": program_id, "b_count": count}).rowcount
    if raised != 1:
        raise RuntimeError(f"program {program_id}: quota counter moved under lock")
    for country, n in per_country.items():
        conn.execute(_RAISE_COUNTRY_COUNT,
                     {"b_program": program_id, "b_country": country, "b_count": n})
    outbound_ids = owe(conn, [
        owed(kind=MailKind.redemption, to_email=p.email, creator_id=p.creator_id,
             claim_id=p.claim_id, code_id=p.code_id, locale=p.locale, now=now,
             program_id=program_id) for p in pairs])
    audit.record(conn, *(
        audit.event(actor="system", action="claim.allocated", object_type="claim",
                    object_id=p.claim_id, program_id=program_id, detail={"code_id": p.code_id},
                    at=now) for p in pairs))
    return outbound_ids


# The statements of a batch, built once (building a statement costs more than running it).
_program, _country = Program.__table__.c, CountryQuota.__table__.c
_claim, _creator = Claim.__table__.c, Creator.__table__.c
_eligibility = Eligibility.__table__.c
_COUNTRY_ROOM = (sa.select(_country.country, _country.quota - _country.allocated_count)
                 .where(_country.program_id == sa.bindparam("b_program")))
_WAITING_CLAIMS = (
    sa.select(_claim.id, _claim.country, _claim.creator_id, _creator.email, _creator.locale,
              _claim.state, _eligibility.id.is_not(None).label("on_list"))
    .join_from(Claim.__table__, Creator.__table__, _creator.id == _claim.creator_id)
    # Whether the creator is still on the list: one probe of uq_eligibility per claim read.
    .outerjoin(Eligibility.__table__,
               sa.and_(_eligibility.program_id == _claim.program_id,
                       _eligibility.creator_id == _claim.creator_id))
    .where(_claim.program_id == sa.bindparam("b_program"),
           _claim.state.in_([state.value for state in WAITING]),
           _claim.country.not_in(sa.bindparam("b_full", expanding=True)))
    .order_by(_claim.id)
    .limit(sa.bindparam("b_limit"))
    .with_for_update(of=Claim.__table__)
)
_REFUSE_OFF_LIST = (
    sa.update(Claim.__table__)
    .where(_claim.id.in_(sa.bindparam("b_ids", expanding=True)),
           _claim.state.in_([state.value for state in WAITING]))
    .values(state=ClaimState.refused.value, reason=ClaimReason.removed_from_list.value,
            decided_at=sa.bindparam("b_now"))
)
_ALLOCATE_CLAIM = (
    sa.update(Claim.__table__)
    .where(_claim.id == sa.bindparam("b_id"))
    .values(state=ClaimState.allocated.value, reason=None, code_id=sa.bindparam("b_code"),
            decided_at=sa.bindparam("b_now"))
)
_INSERT_ASSIGNMENT = sa.insert(CodeAssignment.__table__)
# The codes leave the stock as they are allocated: one statement moves both counters.
_RAISE_COUNT = (
    sa.update(Program.__table__)
    .where(_program.id == sa.bindparam("b_program"),
           _program.allocated_count + sa.bindparam("b_count") <= _program.quota)
    .values(allocated_count=_program.allocated_count + sa.bindparam("b_count"),
            in_stock_count=_program.in_stock_count - sa.bindparam("b_count"))
)
_RAISE_COUNTRY_COUNT = (
    sa.update(CountryQuota.__table__)
    .where(_country.program_id == sa.bindparam("b_program"),
           _country.country == sa.bindparam("b_country"))
    .values(allocated_count=_country.allocated_count + sa.bindparam("b_count"))
)


def _refuse_off_list(conn: sa.Connection, program_id: int, claim_ids: list[int],
                     now: datetime) -> None:
    """Refuse the (locked) waiting claims of creators no longer on the program's list, as the
    removal would have (``removed_from_list``), each refusal audited."""
    conn.execute(_REFUSE_OFF_LIST, {"b_ids": claim_ids, "b_now": now})
    audit.record(conn, *(
        audit.event(actor="system", action="claim.refused", object_type="claim",
                    object_id=claim_id, program_id=program_id,
                    detail={"reason": ClaimReason.removed_from_list.value}, at=now)
        for claim_id in claim_ids))


def _waitlist(session: Session, claim_ids: list[int], reason: ClaimReason, now: datetime) -> None:
    session.execute(
        sa.update(Claim)
        .where(Claim.id.in_(claim_ids), Claim.state == ClaimState.pending)
        .values(state=ClaimState.waitlisted, reason=reason, decided_at=now)
        .execution_options(synchronize_session=False)
    )


def _relabel_waitlist(session: Session, program_id: int, reason: ClaimReason, *,
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


def _waitlist_pending(session: Session, result: AllocationResult, program_id: int,
                      reason: ClaimReason, now: datetime,
                      countries: list[str] | None = None) -> None:
    """Waitlist a program's pending claims (of these countries) at once: nothing can serve
    them. Those of creators no longer on the list are refused instead (``removed_from_list``),
    as a batch would: a full quota never puts them in line first."""
    query = (sa.select(_claim.id, _eligibility.id.is_not(None).label("on_list"))
             .outerjoin(Eligibility.__table__,
                        sa.and_(_eligibility.program_id == _claim.program_id,
                                _eligibility.creator_id == _claim.creator_id))
             .where(_claim.program_id == program_id,
                    _claim.state == ClaimState.pending.value))
    if countries is not None:
        query = query.where(_claim.country.in_(countries))
    rows = session.execute(query.order_by(_claim.id).with_for_update(of=Claim.__table__)).all()
    off_list = [claim_id for claim_id, on_list in rows if not on_list]
    waiting = [claim_id for claim_id, on_list in rows if on_list]
    if off_list:
        _refuse_off_list(session.connection(), program_id, off_list, now)
        result.refused += off_list
    if waiting:
        _waitlist(session, waiting, reason, now)
        result.waitlisted += waiting
