"""Allocation: one code per claim, never two claims per code, never past a quota (global or
per country), first come first served, idempotent; run from parallel threads on SQLite and
PostgreSQL, with ``verify`` checking I1-I5 after each scenario."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import redemption_code, stock
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Claim, Code, Creator, OutboundEmail, Program
from wellness_perks.services import allocation, claims, programs
from wellness_perks.services.verify import verify_program


def _stocked_program(app, factory, session, *, quota, creators, codes, countries=("PK",),
                     **program_options):
    """A program with ``codes`` in stock and ``creators`` each holding a pending claim, the
    creators' countries cycling through ``countries``; claim ids in creator order."""
    program = factory.program(quota=quota, **program_options)
    for country in countries:
        emails = [f"creator{i:03d}@example.com" for i in range(creators)
                  if countries[i % len(countries)] == country]
        if emails:
            factory.creators(program, emails, country=country)
    if codes:
        factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(codes)])
    return program, _pending_claims(session, program, creators)


def _pending_claims(session, program, count):
    """Each listed creator's claim, pending, as the endpoint stores it (allocation not run)."""
    creators = session.exec(select(Creator).order_by(Creator.email)).all()[:count]
    rows = [Claim(program_id=program.id, creator_id=c.id, country=c.country) for c in creators]
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


def _allocate_each(app, claim_ids, threads=8):
    """An allocation task for each claim's program, as many as there are claims (more than a
    launch would queue), run in parallel."""
    with app.app_context():
        programs_of = dict(get_session().exec(select(Claim.id, Claim.program_id)
                                              .where(Claim.id.in_(claim_ids))).all())
    _run_in_threads(app, [lambda s, pid=programs_of[cid]: allocation.allocate_program(
                              s, program_id=pid) for cid in claim_ids], threads=threads)


def _verified(app, program):
    with app.app_context():
        violations = verify_program(get_session(), program_id=program.id)
    assert violations == [], [str(v) for v in violations]


def _states(session, program):
    session.rollback()
    return session.exec(select(Claim.id, Claim.state, Claim.reason, Claim.country)
                        .where(Claim.program_id == program.id).order_by(Claim.id)).all()


def test_parallel_allocation_respects_quota_and_serves_claims_in_order(
        app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=25, creators=40, codes=30)
    _allocate_each(app, claim_ids)
    _verified(app, program)
    states = _states(session, program)
    assert [s for _id, s, _r, _c in states] == ["allocated"] * 25 + ["waitlisted"] * 15
    assert {r for _id, s, r, _c in states if s == "waitlisted"} == {"quota_reached"}
    mails = smtp_server.messages
    assert len(mails) == 25
    assert len({redemption_code(m) for m in mails}) == 25


def test_small_batches_reach_the_same_result(app_config, factory, session, smtp_server):
    from tests.conftest import Factory
    from wellness_perks import create_app

    app_config["ALLOCATION_BATCH_SIZE"] = 3
    app = create_app(app_config)
    program, claim_ids = _stocked_program(app, Factory(app), session, quota=20, creators=30,
                                          codes=25)
    _allocate_each(app, claim_ids[:1], threads=1)  # one task drains every batch
    _verified(app, program)
    states = [s for _id, s, _r, _c in _states(session, program)]
    assert states == ["allocated"] * 20 + ["waitlisted"] * 10
    app.extensions["db_engine"].dispose()


def test_stock_runs_out_before_quota(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=100, creators=12, codes=5)
    _allocate_each(app, claim_ids)
    _verified(app, program)
    assert [(s, r) for _id, s, r, _c in _states(session, program)] == (
        [("allocated", None)] * 5 + [("waitlisted", "out_of_stock")] * 7)


def test_country_quota_caps_one_country_while_others_are_served(
        app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(
        app, factory, session, quota=30, creators=30, codes=30, countries=("PK", "IN", "BR"),
        country_quotas={"PK": 4})
    _allocate_each(app, claim_ids)
    _verified(app, program)
    states = _states(session, program)
    pk = [(s, r) for _id, s, r, c in states if c == "PK"]
    assert pk == [("allocated", None)] * 4 + [("waitlisted", "country_quota_reached")] * 6
    assert all(s == "allocated" for _id, s, _r, c in states if c != "PK")
    with app.app_context():
        summary = programs.quota_summary(get_session(), session.get(Program, program.id))
    assert summary["allocated"] == 24
    assert summary["countries"] == {"PK": {"quota": 4, "allocated": 4, "remaining": 0}}


def test_new_batch_serves_the_waitlist_in_claim_order(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=20, creators=10, codes=3)
    _allocate_each(app, claim_ids)
    assert [s for _id, s, _r, _c in _states(session, program)] == (
        ["allocated"] * 3 + ["waitlisted"] * 7)
    factory.codes(program, ["HS-MORE-0001", "HS-MORE-0002", "HS-MORE-0003", "HS-MORE-0004"])
    _verified(app, program)
    assert [s for _id, s, _r, _c in _states(session, program)] == (
        ["allocated"] * 7 + ["waitlisted"] * 3)
    later = {m["To"]: redemption_code(m) for m in smtp_server.messages}
    assert later["creator003@example.com"] == "HS-MORE-0001"
    assert later["creator006@example.com"] == "HS-MORE-0004"


def test_raising_the_quota_serves_the_waitlist(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=2, creators=6, codes=10,
                                          countries=("PK", "IN"), country_quotas={"PK": 1})
    _allocate_each(app, claim_ids)
    assert [s for _id, s, _r, _c in _states(session, program)] == (
        ["allocated"] * 2 + ["waitlisted"] * 4)
    with app.app_context():
        programs.set_quota(get_session(), program_id=program.id, quota=4, actor="test")
    states = _states(session, program)
    # creator000 PK, 001 IN, 002 PK (country full), 003 IN, 004 PK (full), 005 IN
    assert [(s, r) for _id, s, r, _c in states] == [
        ("allocated", None), ("allocated", None), ("waitlisted", "country_quota_reached"),
        ("allocated", None), ("waitlisted", "country_quota_reached"), ("allocated", None)]
    with app.app_context():
        programs.set_quota(get_session(), program_id=program.id, quota=6,
                           country_quotas={"PK": None}, actor="test")
    assert [s for _id, s, _r, _c in _states(session, program)] == ["allocated"] * 6
    _verified(app, program)


def test_quota_cannot_drop_below_allocations(app, factory, session, smtp_server):
    from wellness_perks.services.errors import InvalidInput

    program, claim_ids = _stocked_program(app, factory, session, quota=5, creators=3, codes=5,
                                          countries=("PK",))
    _allocate_each(app, claim_ids)
    with app.app_context(), pytest.raises(InvalidInput, match="below the 3 codes"):
        programs.set_quota(get_session(), program_id=program.id, quota=2, actor="test")
    with app.app_context(), pytest.raises(InvalidInput, match="PK quota 1 is below"):
        programs.set_quota(get_session(), program_id=program.id, country_quotas={"PK": 1},
                           actor="test")
    session.rollback()
    assert session.get(Program, program.id, populate_existing=True).quota == 5


def test_the_database_refuses_an_overrun_counter(app, factory, session):
    program = factory.program(quota=1)
    with pytest.raises(sa.exc.IntegrityError):
        session.execute(sa.update(Program).where(Program.id == program.id)
                        .values(allocated_count=2))
        session.commit()
    session.rollback()


def test_the_database_refuses_a_negative_stock_counter(app, factory, session):
    program = factory.program(quota=1)
    with pytest.raises(sa.exc.IntegrityError):
        session.execute(sa.update(Program).where(Program.id == program.id)
                        .values(in_stock_count=-1))
        session.commit()
    session.rollback()


def test_the_stock_counter_follows_allocation(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=8, creators=10, codes=6)
    assert stock(session, program.id) == (6, 6)
    _allocate_each(app, claim_ids)  # 6 served (in parallel batches), 4 wait for stock
    assert stock(session, program.id) == (0, 0)
    factory.codes(program, [f"HS-MORE-{i:04d}" for i in range(5)])  # serves 2: the quota is 8
    assert stock(session, program.id) == (3, 3)
    _verified(app, program)


def test_same_claim_allocated_from_many_threads_once(app, factory, session, smtp_server):
    program, [claim_id] = _stocked_program(app, factory, session, quota=10, creators=1,
                                           codes=10)
    _allocate_each(app, [claim_id] * 12, threads=6)
    _verified(app, program)
    assert session.exec(select(sa.func.count()).select_from(OutboundEmail)).one() == 1
    assert len(smtp_server.messages) == 1


def test_rerunning_allocation_changes_nothing(app, factory, session, smtp_server):
    program, [claim_id] = _stocked_program(app, factory, session, quota=10, creators=1, codes=2)
    with app.app_context():
        first = allocation.allocate_program(get_session(), program_id=program.id)
        again = allocation.allocate_program(get_session(), program_id=program.id)
    assert first.allocated == [claim_id] and first.changed
    assert not again.changed
    _verified(app, program)
    assert len(smtp_server.messages) == 1


def test_unknown_program_is_ignored(app):
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=424242)
    assert not result.changed and result.outbound_ids == []


def test_concurrent_claims_by_one_creator_make_one_claim(app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["creator000@example.com"])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(10)])
    creator_id = session.exec(select(Creator.id)).one()
    session.rollback()  # end this read: SQLite would keep showing the database as it is now
    barrier = threading.Barrier(6)
    answers = []

    def claim(s):
        barrier.wait(timeout=10)
        answers.append(claims.request_claim(s, program=s.get(Program, program.id),
                                            creator_id=creator_id).id)

    _run_in_threads(app, [claim] * 6, threads=6)
    _verified(app, program)
    [only] = session.exec(select(Claim.id)).all()
    assert answers == [only] * 6  # every request answers with the one claim
    assert session.exec(select(AuditEvent.action).where(AuditEvent.object_type == "claim")
                        ).all() == ["claim.requested", "claim.allocated"]
    assert len(smtp_server.messages) == 1


# --------------------------------------------------------------------------- verify


def test_verify_reports_each_broken_invariant(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=5, creators=3, codes=5)
    _allocate_each(app, claim_ids)
    _verified(app, program)
    factory.creators(program, ["late@example.com"])
    session.rollback()
    late = session.exec(select(Creator).where(Creator.email == "late@example.com")).one()
    stuck = Claim(program_id=program.id, creator_id=late.id, country=late.country,
                  requested_at=datetime.now(UTC) - timedelta(hours=1))
    session.add(stuck)
    session.commit()
    _first, second, third = (session.get(Claim, i) for i in claim_ids)
    # Break things the way a bug would.
    session.execute(sa.update(Code).where(Code.id == third.code_id).values(status="available"))
    session.execute(sa.update(Program).where(Program.id == program.id)
                    .values(allocated_count=2))
    session.execute(sa.delete(OutboundEmail).where(OutboundEmail.claim_id == second.id))
    session.commit()
    with app.app_context():
        found = verify_program(get_session(), program_id=program.id)
    text = "\n".join(str(v) for v in found)
    assert {v.invariant for v in found} == {"I1", "I2", "I4", "I5"}, text
    assert f"code={third.code_id}" in text and "back in stock" in text
    assert "3 allocated, counter says 2" in text
    assert "I4: pending since" in text and f"claim={stuck.id}" in text
    assert f"I5: allocated, but no mail for its code (claim={second.id}" in text


def test_verify_reports_a_wrong_stock_counter(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=5, creators=3, codes=5)
    _allocate_each(app, claim_ids)
    _verified(app, program)
    session.execute(sa.update(Program).where(Program.id == program.id)
                    .values(in_stock_count=Program.in_stock_count + 1))
    session.commit()
    with app.app_context():
        found = verify_program(get_session(), program_id=program.id)
    assert [str(v) for v in found] == ["I2: 2 codes in stock, counter says 3"]


def test_waitlist_reason_follows_what_holds_it(app, factory, session, smtp_server):
    program, claim_ids = _stocked_program(app, factory, session, quota=3, creators=5, codes=1)
    _allocate_each(app, claim_ids)
    assert [(s, r) for _id, s, r, _c in _states(session, program)] == (
        [("allocated", None)] + [("waitlisted", "out_of_stock")] * 4)
    factory.codes(program, ["HS-MORE-0001", "HS-MORE-0002", "HS-MORE-0003"])
    assert [(s, r) for _id, s, r, _c in _states(session, program)] == (
        [("allocated", None)] * 3 + [("waitlisted", "quota_reached")] * 2)
    _verified(app, program)
