"""Allocation: one code per claim, never two claims per code, never past the quota,
idempotent; run from parallel threads on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter

import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import redemption_code
from wellness_perks.db import get_session
from wellness_perks.models import Claim, Code, Creator, OutboundEmail, Program
from wellness_perks.services import allocation, claims


def _stocked_program(app, factory, session, *, quota, creators, codes):
    """A program with ``codes`` in stock and ``creators`` each holding a pending claim."""
    program = factory.program(quota=quota)
    factory.creators(program, [f"creator{i:03d}@example.com" for i in range(creators)])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(codes)])
    return program, _pending_claims(app, session, program, creators)


def _allocate_all(app, claim_ids):
    _run_in_threads(app, [lambda s, cid=cid: allocation.allocate(s, claim_id=cid)
                          for cid in claim_ids])


def _pending_claims(app, session, program, count):
    """Creators on the list, each with a pending claim (allocation not yet run)."""
    emails = [f"creator{i:03d}@example.com" for i in range(count)]
    creators = session.exec(select(Creator).where(Creator.email.in_(emails))).all()
    assert len(creators) == count
    rows = [Claim(program_id=program.id, creator_id=c.id) for c in
            sorted(creators, key=lambda c: c.email)]
    session.add_all(rows)
    session.commit()
    return [c.id for c in rows]


def _run_in_threads(app, jobs, threads=8):
    errors, lock, queue = [], threading.Lock(), list(jobs)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            try:
                with app.app_context():
                    job(get_session())
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a worker thread hung"
    assert errors == []


def assert_invariants(session, program_id):
    """I1-I3 as the database sees them."""
    session.rollback()
    program = session.get(Program, program_id, populate_existing=True)
    all_claims = session.exec(select(Claim).where(Claim.program_id == program_id)).all()
    allocated = [c for c in all_claims if c.state == "allocated"]
    code_ids = [c.code_id for c in allocated]
    assert None not in code_ids
    assert len(set(code_ids)) == len(code_ids), "a code was given to two claims"
    assert len(allocated) <= program.quota, "quota exceeded"
    assert program.allocated_count == len(allocated)
    assigned = session.exec(select(Code.id).where(Code.program_id == program_id,
                                                  Code.status == "assigned")).all()
    assert sorted(assigned) == sorted(code_ids)
    per_creator = Counter(c.creator_id for c in all_claims)
    assert max(per_creator.values(), default=1) == 1
    assert all(c.state in {"allocated", "waitlisted", "refused"} for c in all_claims)
    return allocated


def test_parallel_allocation_respects_quota_and_stock(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=25, creators=40, codes=30)
    _allocate_all(app, claim_ids)

    allocated = assert_invariants(session, program.id)
    assert len(allocated) == 25
    waitlisted = session.exec(select(Claim).where(Claim.state == "waitlisted")).all()
    assert len(waitlisted) == 15 and {c.reason for c in waitlisted} == {"quota reached"}
    mails = smtp_server.messages
    assert len(mails) == 25
    assert len({redemption_code(m) for m in mails}) == 25


def test_stock_runs_out_before_quota(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=100, creators=12, codes=5)
    _allocate_all(app, claim_ids)
    assert len(assert_invariants(session, program.id)) == 5
    reasons = session.exec(select(Claim.reason).where(Claim.state == "waitlisted")).all()
    assert reasons == ["out of stock"] * 7


def test_same_claim_allocated_from_many_threads_once(app, factory, session, smtp_server):
    program, [claim_id] = _stocked_program(app, factory, session, quota=10, creators=1,
                                           codes=10)
    _run_in_threads(app, [lambda s: allocation.allocate(s, claim_id=claim_id)] * 12, threads=6)
    assert len(assert_invariants(session, program.id)) == 1
    assert session.exec(select(sa.func.count()).select_from(OutboundEmail)).one() == 1
    assert len(smtp_server.messages) == 1


def test_rerunning_allocation_changes_nothing(app, factory, session, smtp_server):
    program, [claim_id] = _stocked_program(app, factory, session, quota=10, creators=1, codes=2)
    with app.app_context():
        first = allocation.allocate(get_session(), claim_id=claim_id)
        again = allocation.allocate(get_session(), claim_id=claim_id)
    assert (first.state, first.changed) == ("allocated", True)
    assert (again.state, again.changed) == ("allocated", False)
    assert len(assert_invariants(session, program.id)) == 1
    assert len(smtp_server.messages) == 1


def test_unknown_claim_is_ignored(app):
    with app.app_context():
        assert allocation.allocate(get_session(), claim_id=424242) is None


def test_concurrent_claims_by_one_creator_make_one_claim(app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["creator000@example.com"])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(10)])
    creator_id = session.exec(select(Creator.id)).one()
    barrier = threading.Barrier(6)

    def claim(s):
        barrier.wait(timeout=10)
        claims.request_claim(s, program=s.get(Program, program.id), creator_id=creator_id)

    _run_in_threads(app, [claim] * 6, threads=6)
    allocated = assert_invariants(session, program.id)
    assert len(allocated) == 1
    assert session.exec(select(sa.func.count()).select_from(Claim)).one() == 1
    assert len(smtp_server.messages) == 1
