"""Allocation: one code per claim, never two claims per code, never past a quota (global or
per country), first come first served, idempotent; run from parallel threads on SQLite and
PostgreSQL, with ``verify`` checking I1-I5 after each scenario."""

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import redemption_code, stock
from tests.unit.services.scenarios import (
    allocate_each,
    claim_states,
    pending_claims,
    stocked_program,
    verified,
)
from wellness_perks import dispatch
from wellness_perks.db import get_session
from wellness_perks.models import (
    AuditEvent,
    Claim,
    ClaimReason,
    Code,
    CodeAssignment,
    Creator,
    Eligibility,
    OutboundEmail,
    Program,
)
from wellness_perks.services import allocation, programs


def _claim_as_made(session, program, email: str) -> int:
    """A pending claim of the listed creator with this address, in their country, committed
    (as the claim request stores it, without triggering allocation); its id."""
    creator = session.exec(select(Creator).where(Creator.email == email)).one()
    row = Claim(program_id=program.id, creator_id=creator.id, country=creator.country)
    session.add(row)
    session.commit()
    return row.id


def test_parallel_allocation_respects_quota_and_serves_claims_in_order(
        app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=25, creators=40, codes=30)
    allocate_each(app, claim_ids)
    verified(app, program)
    states = claim_states(session, program)
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
    program, claim_ids = stocked_program(app, Factory(app), session, quota=20, creators=30,
                                         codes=25)
    allocate_each(app, claim_ids[:1], threads=1)  # one task drains every batch
    verified(app, program)
    states = [s for _id, s, _r, _c in claim_states(session, program)]
    assert states == ["allocated"] * 20 + ["waitlisted"] * 10
    app.extensions["db_engine"].dispose()


def test_stock_runs_out_before_quota(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=100, creators=12, codes=5)
    allocate_each(app, claim_ids)
    verified(app, program)
    assert [(s, r) for _id, s, r, _c in claim_states(session, program)] == (
        [("allocated", None)] * 5 + [("waitlisted", "out_of_stock")] * 7)


def test_country_quota_caps_one_country_while_others_are_served(
        app, factory, session, smtp_server):
    program, claim_ids = stocked_program(
        app, factory, session, quota=30, creators=30, codes=30, countries=("PK", "IN", "BR"),
        country_quotas={"PK": 4})
    allocate_each(app, claim_ids)
    verified(app, program)
    states = claim_states(session, program)
    pk = [(s, r) for _id, s, r, c in states if c == "PK"]
    assert pk == [("allocated", None)] * 4 + [("waitlisted", "country_quota_reached")] * 6
    assert all(s == "allocated" for _id, s, _r, c in states if c != "PK")
    with app.app_context():
        summary = programs.quota_summary(get_session(), session.get(Program, program.id))
    assert summary["allocated"] == 24
    assert summary["countries"] == {"PK": {"quota": 4, "allocated": 4, "remaining": 0}}


def test_creators_of_a_country_the_batch_filled_wait_for_their_country(
        app, factory, session, smtp_server):
    """PK's creators wait for codes; a batch of codes fills PK's quota: the PK creators still
    waiting now wait for their country (another batch of codes would not serve them), the
    others still for codes."""
    program, claim_ids = stocked_program(
        app, factory, session, quota=30, creators=6, codes=0, countries=("PK", "IN"),
        country_quotas={"PK": 1})
    allocate_each(app, claim_ids[:1], threads=1)
    assert {r for _id, _s, r, _c in claim_states(session, program)} == {"out_of_stock"}
    factory.codes(program, ["HS-MORE-0001", "HS-MORE-0002"])  # one PK, one IN served
    verified(app, program)
    assert [(c, s, r) for _id, s, r, c in claim_states(session, program)] == [
        ("PK", "allocated", None), ("IN", "allocated", None),
        ("PK", "waitlisted", "country_quota_reached"), ("IN", "waitlisted", "out_of_stock"),
        ("PK", "waitlisted", "country_quota_reached"), ("IN", "waitlisted", "out_of_stock")]


def test_new_batch_serves_the_waitlist_in_claim_order(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=20, creators=10, codes=3)
    allocate_each(app, claim_ids)
    assert [s for _id, s, _r, _c in claim_states(session, program)] == (
        ["allocated"] * 3 + ["waitlisted"] * 7)
    factory.codes(program, ["HS-MORE-0001", "HS-MORE-0002", "HS-MORE-0003", "HS-MORE-0004"])
    verified(app, program)
    assert [s for _id, s, _r, _c in claim_states(session, program)] == (
        ["allocated"] * 7 + ["waitlisted"] * 3)
    later = {m["To"]: redemption_code(m) for m in smtp_server.messages}
    assert later["creator003@example.com"] == "HS-MORE-0001"
    assert later["creator006@example.com"] == "HS-MORE-0004"


def test_raising_the_quota_serves_the_waitlist(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=2, creators=6, codes=10,
                                         countries=("PK", "IN"), country_quotas={"PK": 1})
    allocate_each(app, claim_ids)
    assert [s for _id, s, _r, _c in claim_states(session, program)] == (
        ["allocated"] * 2 + ["waitlisted"] * 4)
    with app.app_context():
        programs.set_quota(get_session(), program_id=program.id, quota=4, actor="test")
    states = claim_states(session, program)
    # creator000 PK, 001 IN, 002 PK (country full), 003 IN, 004 PK (full), 005 IN
    assert [(s, r) for _id, s, r, _c in states] == [
        ("allocated", None), ("allocated", None), ("waitlisted", "country_quota_reached"),
        ("allocated", None), ("waitlisted", "country_quota_reached"), ("allocated", None)]
    with app.app_context():
        programs.set_quota(get_session(), program_id=program.id, quota=6,
                           country_quotas={"PK": None}, actor="test")
    assert [s for _id, s, _r, _c in claim_states(session, program)] == ["allocated"] * 6
    verified(app, program)


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
    program, claim_ids = stocked_program(app, factory, session, quota=8, creators=10, codes=6)
    assert stock(session, program.id) == (6, 6)
    allocate_each(app, claim_ids)  # 6 served (in parallel batches), 4 wait for stock
    assert stock(session, program.id) == (0, 0)
    factory.codes(program, [f"HS-MORE-{i:04d}" for i in range(5)])  # serves 2: the quota is 8
    assert stock(session, program.id) == (3, 3)
    verified(app, program)


def test_same_claim_allocated_from_many_threads_once(app, factory, session, smtp_server):
    program, [claim_id] = stocked_program(app, factory, session, quota=10, creators=1,
                                          codes=10)
    allocate_each(app, [claim_id] * 12, threads=6)
    verified(app, program)
    assert session.exec(select(sa.func.count()).select_from(OutboundEmail)).one() == 1
    assert len(smtp_server.messages) == 1


def test_rerunning_allocation_changes_nothing(app, factory, session, smtp_server):
    program, [claim_id] = stocked_program(app, factory, session, quota=10, creators=1, codes=2)
    with app.app_context():
        first = allocation.allocate_program(get_session(), program_id=program.id)
        again = allocation.allocate_program(get_session(), program_id=program.id)
    assert first.allocated == [claim_id] and first.changed
    assert not again.changed
    verified(app, program)
    assert len(smtp_server.messages) == 1


def test_unknown_program_is_ignored(app):
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=424242)
    assert not result.changed and result.outbound_ids == []


def test_waitlist_reason_follows_what_holds_it(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=3, creators=5, codes=1)
    allocate_each(app, claim_ids)
    assert [(s, r) for _id, s, r, _c in claim_states(session, program)] == (
        [("allocated", None)] + [("waitlisted", "out_of_stock")] * 4)
    factory.codes(program, ["HS-MORE-0001", "HS-MORE-0002", "HS-MORE-0003"])
    assert [(s, r) for _id, s, r, _c in claim_states(session, program)] == (
        [("allocated", None)] * 3 + [("waitlisted", "quota_reached")] * 2)
    verified(app, program)


def test_a_claim_is_decided_after_it_was_requested_even_when_the_batch_waited(
        app, factory, session, backend, smtp_server):
    """A batch reads the clock once it holds the program's lock: a claim recorded while the
    batch waited for that lock (and served by it) is never decided before it was requested."""
    if backend != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers before any clock read")
    program = factory.program(quota=5)
    factory.creators(program, ["creator000@example.com", "creator001@example.com"])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002"])
    pending_claims(session, program, 1)
    errors = []

    def allocate():
        try:
            with app.app_context():
                allocation.allocate_program(get_session(), program_id=program.id)
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    def waiting_for_a_lock() -> int:
        session.rollback()
        return session.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()")).scalar_one()

    thread = threading.Thread(target=allocate)
    with app.app_context():
        lock_holder = get_session()
        programs.lock_program(lock_holder, program.id)
        try:
            thread.start()
            deadline = time.monotonic() + 10
            while not waiting_for_a_lock() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert waiting_for_a_lock() == 1, "the batch never waited for the program's lock"
            late = session.exec(select(Creator).where(
                Creator.email == "creator001@example.com")).one()
            session.add(Claim(program_id=program.id, creator_id=late.id, country=late.country))
            session.commit()
        finally:
            lock_holder.rollback()
    thread.join(timeout=30)
    assert errors == []
    session.rollback()
    rows = session.exec(select(Claim).order_by(Claim.id)).all()
    assert [c.state for c in rows] == ["allocated", "allocated"]
    assert all(c.decided_at >= c.requested_at for c in rows), [
        (c.requested_at, c.decided_at) for c in rows]


def test_a_waiting_claim_of_a_creator_off_the_list_is_refused_and_the_line_moves_on(
        app, factory, session, smtp_server):
    """The first claim's creator left the list while it waited: allocation refuses it
    (``removed_from_list``, dated, audited, no code, no count) and serves the claims behind it,
    the batch that read the refused claim counting it as read (a full batch: another follows).
    The quota, reached after, waitlists the last claim and leaves the refusal's reason alone."""
    program, claim_ids = stocked_program(app, factory, session, quota=2, creators=4, codes=5)
    first, second, third, fourth = claim_ids
    session.execute(sa.delete(Eligibility).where(
        Eligibility.program_id == program.id,
        Eligibility.creator_id == session.get(Claim, first).creator_id))
    session.commit()
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id,
                                             batch_size=2)
    assert (result.refused, result.allocated, result.waitlisted) == (
        [first], [second, third], [fourth])
    session.rollback()
    refused = session.get(Claim, first, populate_existing=True)
    assert (refused.state, refused.reason, refused.code_id) == (
        "refused", ClaimReason.removed_from_list, None)
    assert refused.decided_at is not None and refused.decided_at >= refused.requested_at
    waitlisted = session.get(Claim, fourth, populate_existing=True)
    assert waitlisted.decided_at is not None and waitlisted.decided_at >= waitlisted.requested_at
    assert [(s, r) for _id, s, r, _c in claim_states(session, program)] == [
        ("refused", "removed_from_list"), ("allocated", None), ("allocated", None),
        ("waitlisted", "quota_reached")]
    events = session.exec(select(AuditEvent).where(AuditEvent.action == "claim.refused")).all()
    assert [(e.actor, e.object_type, e.object_id, e.program_id, json.loads(e.detail), e.at)
            for e in events] == [("system", "claim", first, program.id,
                                  {"reason": "removed_from_list"}, refused.decided_at)]
    assert sorted(session.exec(select(OutboundEmail.claim_id)).all()) == [second, third]
    assert stock(session, program.id) == (3, 3)
    verified(app, program)


@pytest.mark.parametrize("full", ["quota", "country quota"])
def test_a_claim_of_a_creator_off_the_list_is_refused_even_when_the_quota_is_full(
        app, factory, session, smtp_server, full):
    """With no room left (the quota, or the creator's country quota, reached), the pending
    claims are waitlisted at once, without a batch: those of creators taken off the list are
    refused (``removed_from_list``, audited), never waitlisted first; the others wait."""
    options = {"quota": 1} if full == "quota" else {"quota": 5, "country_quotas": {"PK": 1}}
    program, claim_ids = stocked_program(app, factory, session, creators=4, codes=5,
                                         **options)
    first, second, third, fourth = claim_ids
    with app.app_context():
        served = allocation.allocate_program(get_session(), program_id=program.id,
                                             batch_size=1)
    assert served.allocated == [first]
    session.rollback()
    for claim_id in (second, third, fourth):  # back in line, as claims made after the quota
        session.get(Claim, claim_id).state = "pending"
    session.execute(sa.delete(Eligibility).where(
        Eligibility.program_id == program.id,
        Eligibility.creator_id == session.get(Claim, third).creator_id))
    session.commit()
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id)
    reason = "quota_reached" if full == "quota" else "country_quota_reached"
    assert (result.allocated, result.refused, result.waitlisted) == ([], [third],
                                                                      [second, fourth])
    assert [(s, r) for _id, s, r, _c in claim_states(session, program)] == [
        ("allocated", None), ("waitlisted", reason), ("refused", "removed_from_list"),
        ("waitlisted", reason)]
    refused = session.get(Claim, third, populate_existing=True)
    assert refused.code_id is None and refused.decided_at is not None
    events = session.exec(select(AuditEvent).where(AuditEvent.action == "claim.refused")).all()
    assert [(e.object_id, json.loads(e.detail)) for e in events] == [
        (third, {"reason": "removed_from_list"})]
    verified(app, program)


def test_allocation_decides_only_its_own_programs_claims(app, factory, session, smtp_server):
    """Another program's claims, one waiting for codes and one not yet allocated, are left as
    they are when this program's quota is reached and its line waitlisted."""
    other = factory.program(slug="calm-1y", quota=5)
    factory.creators(other, ["other0@example.com", "other1@example.com"])

    def claim(email):
        return _claim_as_made(session, other, email)

    waiting = claim("other0@example.com")
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=other.id)  # no codes: it waits
    pending = claim("other1@example.com")
    program, claim_ids = stocked_program(app, factory, session, quota=1, creators=3, codes=3)
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id)
    assert (result.allocated, result.waitlisted) == (claim_ids[:1], claim_ids[1:])
    assert [(c, s, r) for c, s, r, _c in claim_states(session, other)] == [
        (waiting, "waitlisted", "out_of_stock"), (pending, "pending", None)]
    assert [(s, r) for _id, s, r, _c in claim_states(session, program)] == [
        ("allocated", None), ("waitlisted", "quota_reached"), ("waitlisted", "quota_reached")]
    verified(app, program)


def test_the_quota_reached_relabels_the_waitlist_outside_the_full_countries(
        app, factory, session, smtp_server):
    """PK's quota is full and IN's creators wait for codes; codes come, the global quota is
    reached before the last IN creator: IN's creator now waits for the quota, PK's still for
    their country."""
    program, claim_ids = stocked_program(
        app, factory, session, quota=3, creators=6, codes=1, countries=("PK", "IN"),
        country_quotas={"PK": 1})
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=program.id)
    # creator000 PK served; 001, 003, 005 (IN) wait for codes; 002, 004 (PK) for their country
    assert [(c, s, r) for _id, s, r, c in claim_states(session, program)] == [
        ("PK", "allocated", None), ("IN", "waitlisted", "out_of_stock"),
        ("PK", "waitlisted", "country_quota_reached"), ("IN", "waitlisted", "out_of_stock"),
        ("PK", "waitlisted", "country_quota_reached"), ("IN", "waitlisted", "out_of_stock")]
    factory.codes(program, ["HS-MORE-0001", "HS-MORE-0002", "HS-MORE-0003"])
    assert [(c, s, r) for _id, s, r, c in claim_states(session, program)] == [
        ("PK", "allocated", None), ("IN", "allocated", None),
        ("PK", "waitlisted", "country_quota_reached"), ("IN", "allocated", None),
        ("PK", "waitlisted", "country_quota_reached"), ("IN", "waitlisted", "quota_reached")]
    verified(app, program)


def test_a_run_of_batches_reports_what_every_batch_did(app, factory, session, smtp_server):
    """One run, two batches of two: the first serves PK's only place and IN's first creator and
    waitlists PK's next; the second serves the last IN creator. The run reports all of it, and
    each claim, its code and its assignment carry the one time of the decision."""
    program, claim_ids = stocked_program(
        app, factory, session, quota=10, creators=4, codes=10, countries=("PK", "IN"),
        country_quotas={"PK": 1})
    pk0, in1, pk2, in3 = claim_ids
    session.execute(sa.update(Creator).where(Creator.id == session.get(Claim, in1).creator_id)
                    .values(locale="ur"))
    session.commit()
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id,
                                             batch_size=2)
    assert result.program_id == program.id
    assert (result.allocated, result.waitlisted, result.refused) == ([pk0, in1, in3], [pk2], [])
    session.rollback()
    assert sorted(result.outbound_ids) == sorted(session.exec(select(OutboundEmail.id)).all())
    assert len(result.outbound_ids) == 3
    served = session.exec(select(Claim.decided_at, Code.assigned_at, CodeAssignment.assigned_at)
                          .join(Code, Code.id == Claim.code_id)
                          .join(CodeAssignment, CodeAssignment.claim_id == Claim.id)
                          .order_by(Claim.id)).all()
    assert len(served) == 3 and all(
        decided is not None and decided == code_at == assignment_at
        for decided, code_at, assignment_at in served), served
    # each served creator is owed the redemption mail of their code, in their language
    mails = session.exec(select(OutboundEmail.claim_id, OutboundEmail.kind, OutboundEmail.to_email,
                                OutboundEmail.creator_id, OutboundEmail.code_id,
                                OutboundEmail.locale).order_by(OutboundEmail.claim_id)).all()
    claims_served = session.exec(select(Claim.id, Creator.email, Creator.id, Claim.code_id)
                                 .join(Creator, Creator.id == Claim.creator_id)
                                 .where(Claim.state == "allocated").order_by(Claim.id)).all()
    assert mails == [(claim_id, "redemption", email, creator_id, code_id,
                      "ur" if claim_id == in1 else "en")
                     for claim_id, email, creator_id, code_id in claims_served]
    allocated = session.exec(select(AuditEvent).where(AuditEvent.action == "claim.allocated")
                             .order_by(AuditEvent.object_id)).all()
    assert [(e.actor, e.object_type, e.object_id, e.program_id, json.loads(e.detail), e.at)
            for e in allocated] == [
        ("system", "claim", claim_id, program.id, {"code_id": code_id}, decided)
        for (claim_id, _e, _c, code_id), (decided, _ca, _aa) in zip(claims_served, served,
                                                                    strict=True)]
    verified(app, program)


def test_once_the_quota_is_reached_every_waiting_claim_waits_for_it(
        app, factory, session, smtp_server):
    """A run that finds the quota reached serves nobody: a claim made since is waitlisted
    (dated) for the quota, and so is one that waited for its country's quota."""
    program, claim_ids = stocked_program(
        app, factory, session, quota=1, creators=4, codes=3, countries=("PK", "IN"),
        country_quotas={"PK": 1})
    pk0, in1, pk2 = claim_ids[:3]
    session.execute(sa.delete(Claim).where(Claim.id == claim_ids[3]))
    session.commit()  # creator003 claims after the first run
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=program.id)
    assert [(c, s, r) for c, s, r, _c in claim_states(session, program)] == [
        (pk0, "allocated", None), (in1, "waitlisted", "quota_reached"),
        (pk2, "waitlisted", "country_quota_reached")]
    creator = session.exec(select(Creator).where(Creator.email == "creator003@example.com")).one()
    late = Claim(program_id=program.id, creator_id=creator.id, country=creator.country)
    session.add(late)
    session.commit()
    later = late.id
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id)
    assert (result.allocated, result.waitlisted) == ([], [later])
    assert [(c, s, r) for c, s, r, _c in claim_states(session, program)] == [
        (pk0, "allocated", None), (in1, "waitlisted", "quota_reached"),
        (pk2, "waitlisted", "quota_reached"), (later, "waitlisted", "quota_reached")]
    waited = session.get(Claim, later, populate_existing=True)
    assert waited.decided_at is not None and waited.decided_at >= waited.requested_at
    verified(app, program)


def test_a_country_full_when_the_batch_starts_waits_and_the_others_are_served(
        app, factory, session, smtp_server):
    """PK's only place is taken; PK's new claims, first in line, are waitlisted (dated) for their
    country at once and take no place in the batches, which serve IN's claims behind them."""
    program = factory.program(quota=10, country_quotas={"PK": 1})
    factory.creators(program, ["pk0@example.com", "pk1@example.com", "pk2@example.com"])
    factory.creators(program, ["in0@example.com", "in1@example.com", "in2@example.com"],
                     country="IN")
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(10)])

    def claim(email):
        return _claim_as_made(session, program, email)

    first = claim("pk0@example.com")
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=program.id)
    pk = [claim("pk1@example.com"), claim("pk2@example.com")]
    in_ = [claim(f"in{i}@example.com") for i in range(3)]
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id,
                                             batch_size=2)
    assert (result.allocated, result.waitlisted) == (in_, pk)
    assert [(c, s, r) for c, s, r, _c in claim_states(session, program)] == [
        (first, "allocated", None),
        *[(c, "waitlisted", "country_quota_reached") for c in pk],
        *[(c, "allocated", None) for c in in_]]
    assert all(c.decided_at is not None and c.decided_at >= c.requested_at for c in
               session.exec(select(Claim).where(Claim.id.in_(pk))).all())
    verified(app, program)


def test_a_country_the_batch_fills_waitlists_its_next_pending_claim_once(
        app, factory, session, smtp_server, monkeypatch):
    """PK's creators wait for codes; a new PK claim arrives; codes come (their allocation task
    not run yet). The batch serves the first PK claim, filling PK: the new claim behind it is
    waitlisted (dated) for its country and reported once; the one already waiting is not
    reported as newly waitlisted."""
    program, claim_ids = stocked_program(app, factory, session, quota=10, creators=3, codes=0,
                                         country_quotas={"PK": 1})
    session.execute(sa.delete(Claim).where(Claim.id == claim_ids[2]))
    session.commit()
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=program.id)  # no codes yet
    creator = session.exec(select(Creator).where(Creator.email == "creator002@example.com")).one()
    late = Claim(program_id=program.id, creator_id=creator.id, country="PK")
    session.add(late)
    session.commit()
    late_id = late.id
    with monkeypatch.context() as patched:
        patched.setattr(dispatch, "allocate_program", lambda program_id: None)
        factory.codes(program, ["HS-MORE-0001", "HS-MORE-0002"])
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id)
    assert (result.allocated, result.waitlisted) == ([claim_ids[0]], [late_id])
    assert [(c, s, r) for c, s, r, _c in claim_states(session, program)] == [
        (claim_ids[0], "allocated", None), (claim_ids[1], "waitlisted", "country_quota_reached"),
        (late_id, "waitlisted", "country_quota_reached")]
    waited = session.get(Claim, late_id, populate_existing=True)
    assert waited.decided_at is not None and waited.decided_at >= waited.requested_at
    verified(app, program)


def test_a_batch_reports_every_claim_it_waitlists_for_a_country(app, factory, session,
                                                               smtp_server):
    """BR is full when the batch starts, PK fills during it: the batch waitlists BR's new claim
    at once, PK's claim behind the one it serves, and PK's claim beyond the batch, and
    reports all three."""
    program = factory.program(quota=10, country_quotas={"PK": 1, "BR": 1})
    factory.creators(program, ["br0@example.com", "br1@example.com"], country="BR")
    factory.creators(program, [f"pk{i}@example.com" for i in range(3)])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(10)])

    def claim(email):
        return _claim_as_made(session, program, email)

    br0 = claim("br0@example.com")
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=program.id)  # BR now full
    br1 = claim("br1@example.com")
    pk0, pk1, pk2 = (claim(f"pk{i}@example.com") for i in range(3))
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id,
                                             batch_size=2)
    assert (result.allocated, result.waitlisted) == ([pk0], [br1, pk1, pk2])
    assert [(c, s, r) for c, s, r, _c in claim_states(session, program)] == [
        (br0, "allocated", None), (br1, "waitlisted", "country_quota_reached"),
        (pk0, "allocated", None), (pk1, "waitlisted", "country_quota_reached"),
        (pk2, "waitlisted", "country_quota_reached")]
    verified(app, program)


def test_a_country_filled_before_the_stock_ran_out_keeps_its_creators_waiting_for_it(
        app, factory, session, smtp_server):
    """One code: PK's first creator takes it and fills PK; the IN creator behind finds no code.
    PK's next creator, never reached, waits (dated) for their country, not for codes."""
    program, claim_ids = stocked_program(
        app, factory, session, quota=10, creators=3, codes=1, countries=("PK", "IN"),
        country_quotas={"PK": 1})
    pk0, in1, pk2 = claim_ids
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id)
    # waitlisted in that order: PK's for their country as the batch filled it, then IN's for codes
    assert (result.allocated, result.waitlisted) == ([pk0], [pk2, in1])
    assert [(c, s, r) for c, s, r, _c in claim_states(session, program)] == [
        (pk0, "allocated", None), (in1, "waitlisted", "out_of_stock"),
        (pk2, "waitlisted", "country_quota_reached")]
    waited = session.get(Claim, pk2, populate_existing=True)
    assert waited.decided_at is not None and waited.decided_at >= waited.requested_at
    verified(app, program)


def test_a_run_stops_at_the_batch_that_runs_out_of_codes(app, factory, session, smtp_server):
    """Batches of two, one code: the first batch serves one claim and finds no code for the
    next; the run stops there (another batch would find no code either), the third claim
    waitlisted with it."""
    program, claim_ids = stocked_program(app, factory, session, quota=10, creators=3, codes=1)
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id,
                                             batch_size=2)
    assert (result.allocated, result.waitlisted) == (claim_ids[:1], claim_ids[1:])
    assert [(s, r) for _id, s, r, _c in claim_states(session, program)] == [
        ("allocated", None), ("waitlisted", "out_of_stock"), ("waitlisted", "out_of_stock")]
