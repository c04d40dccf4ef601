"""A creator as managers see them (``creator_case``), and taking a creator off a program's list
(``remove_from_list``): a claim still waiting is refused, one holding a code is left alone."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import code_value
from tests.unit.services.scenarios import run_in_threads, stocked_program
from tests.unit.services.test_verify import SLUG, healthy_program
from wellness_perks.db import get_session
from wellness_perks.models import (
    AuditEvent,
    Claim,
    ClaimReason,
    Code,
    Creator,
    Eligibility,
    OutboundEmail,
    Program,
)
from wellness_perks.services import allocation, claims, creators, imports
from wellness_perks.services.errors import Conflict, InvalidInput, NotFound
from wellness_perks.services.verify import verify_program


@pytest.fixture
def healthy(app, factory, session, smtp_server):
    return healthy_program(app, factory, session, smtp_server)


def _verified(app, program_id):
    with app.app_context():
        assert [str(v) for v in verify_program(get_session(), program_id=program_id)] == []


def _case(app, program_id, email):
    with app.app_context():
        return creators.creator_case(get_session(), program_id=program_id, email=email)


def _remove(app, program_id, email, reason="asked to leave"):
    with app.app_context():
        return creators.remove_from_list(get_session(), program_id=program_id, email=email,
                                         reason=reason, actor="manager:1")


def _claim(session, claim_id) -> Claim:
    session.rollback()
    return session.get(Claim, claim_id, populate_existing=True)


def _on_list(session, program_id, creator_id) -> bool:
    session.rollback()
    return session.exec(select(Eligibility.id).where(
        Eligibility.program_id == program_id, Eligibility.creator_id == creator_id)).first() \
        is not None


# --------------------------------------------------------------------------- creator_case


def test_the_case_of_a_reissued_creator_shows_both_mails_and_the_code_masked(app, healthy,
                                                                             session):
    case = _case(app, healthy.program_id, " PK1@example.com ")
    assert case["creator"] == {"id": healthy.creator["pk1"], "email": "pk1@example.com",
                               "handle": "@pk1", "name": None, "country": "PK",
                               "locale": "en", "on_list": True}
    [claim] = case["claims"]
    assert (claim["id"], claim["state"], claim["reason"]) == (
        healthy.claim["pk1"], "allocated", None)
    assert claim["requested_at"] and claim["decided_at"]
    session.rollback()
    held = session.get(Code, healthy.code["pk1"])
    value = code_value(held.value_encrypted)
    assert claim["code"]["id"] == held.id and claim["code"]["status"] == "assigned"
    assert claim["code"]["masked"] == f"HS-****-{value[-4:]}"
    assert [(m["kind"], m["status"], m["attempts"], m["possibly_sent"]) for m in case["mails"]] \
        == [("redemption", "sent", 1, False), ("reissue", "sent", 1, False)]
    assert all(m["sent_at"] for m in case["mails"])
    document = json.dumps(case)
    for token in session.exec(select(Code.value_encrypted)):
        assert code_value(token) not in document  # no code in clear, the voided one neither


def test_the_case_of_a_waitlisted_and_of_a_refused_creator(app, healthy):
    waiting = _case(app, healthy.program_id, "pk3@example.com")
    [claim] = waiting["claims"]
    assert (claim["state"], claim["reason"], claim["code"]) == (
        "waitlisted", "country_quota_reached", None)
    assert waiting["mails"] == []
    refused = _case(app, healthy.program_id, "tardy@example.com")
    assert [(c["state"], c["reason"]) for c in refused["claims"]] == [
        ("refused", "window_closed")]
    no_claim = _case(app, healthy.program_id, "late@example.com")
    assert (no_claim["creator"]["on_list"], no_claim["claims"]) == (True, [])


def test_the_case_of_a_creator_of_another_program_says_not_on_the_list(app, healthy):
    case = _case(app, healthy.program_id, "outsider@example.com")
    assert (case["creator"]["on_list"], case["claims"], case["mails"]) == (False, [], [])


@pytest.mark.parametrize(("email", "error"), [("nobody@example.com", NotFound),
                                              ("not an address", InvalidInput)])
def test_the_case_of_nobody(app, healthy, email, error):
    with pytest.raises(error):
        _case(app, healthy.program_id, email)


# --------------------------------------------------------------------------- remove_from_list


def _events(session):
    session.rollback()
    return [json.loads(e.detail) | {"actor": e.actor, "object_id": e.object_id}
            for e in session.exec(select(AuditEvent).where(
                AuditEvent.action == creators.REMOVED).order_by(AuditEvent.id))]


def test_removing_a_waitlisted_creator_refuses_their_claim(app, healthy, session):
    removal = _remove(app, healthy.program_id, "pk3@example.com")
    assert (removal.was_on_list, removal.claim_state, removal.refused) == (
        True, "waitlisted", True)
    claim = _claim(session, healthy.claim["pk3"])
    assert (claim.state, claim.reason) == ("refused", ClaimReason.removed_from_list)
    assert claim.decided_at is not None and claim.code_id is None
    assert not _on_list(session, healthy.program_id, healthy.creator["pk3"])
    assert _events(session) == [{"reason": "asked to leave", "claim_id": healthy.claim["pk3"],
                                 "claim_state": "waitlisted", "claim_refused": True,
                                 "actor": "manager:1", "object_id": healthy.creator["pk3"]}]
    _verified(app, healthy.program_id)
    with app.app_context():  # claiming again changes nothing: they are off the list
        again = claims.request_claim(get_session(), program=SLUG,
                                     creator_id=healthy.creator["pk3"])
    assert (again.state, again.reason) == ("refused", "removed_from_list")


def test_a_removed_creator_put_back_on_the_list_may_claim_again(app, healthy, session):
    _remove(app, healthy.program_id, "pk3@example.com")
    with app.app_context():
        program = get_session().get(Program, healthy.program_id)
        imports.import_creators(get_session(), program=program,
                                stream=io.BytesIO(b"handle,email,country\n@pk3,pk3@example.com,PK\n"),
                                actor="test")
        again = claims.request_claim(get_session(), program=SLUG,
                                     creator_id=healthy.creator["pk3"])
    assert again.state in ("pending", "waitlisted")
    assert _claim(session, healthy.claim["pk3"]).reason != ClaimReason.removed_from_list
    _verified(app, healthy.program_id)


def test_removing_a_creator_whose_claim_is_pending_refuses_it_before_allocation(
        app, factory, session):
    program = factory.program(slug="calm-1y", quota=5)
    factory.creators(program, ["a@example.com", "b@example.com"])
    factory.codes(program, ["HS-P1-0001", "HS-P2-0002"])
    session.rollback()
    ids = {e: i for i, e in session.exec(select(Creator.id, Creator.email)).all()}
    now = datetime.now(UTC)
    session.add_all(Claim(program_id=program.id, creator_id=ids[e], country="PK",
                          requested_at=now) for e in ("a@example.com", "b@example.com"))
    session.commit()  # pending, their allocation not run yet
    removal = _remove(app, program.id, "a@example.com")
    assert (removal.claim_state, removal.refused) == ("pending", True)
    with app.app_context():
        allocation.allocate_program(get_session(), program_id=program.id)
    session.rollback()
    states = dict(session.exec(select(Claim.creator_id, Claim.state)).all())
    assert states == {ids["a@example.com"]: "refused", ids["b@example.com"]: "allocated"}
    _verified(app, program.id)


def test_removing_a_creator_who_holds_a_code_leaves_the_claim_alone(app, healthy, session):
    before = _claim(session, healthy.claim["pk2"])
    removal = _remove(app, healthy.program_id, "pk2@example.com")
    assert (removal.was_on_list, removal.claim_state, removal.refused) == (
        True, "allocated", False)
    after = _claim(session, healthy.claim["pk2"])
    assert (after.state, after.code_id, after.reason) == ("allocated", before.code_id, None)
    assert not _on_list(session, healthy.program_id, healthy.creator["pk2"])
    _verified(app, healthy.program_id)


def test_removing_a_refused_or_claimless_creator_only_takes_them_off(app, healthy, session):
    assert _remove(app, healthy.program_id, "tardy@example.com").refused is False
    assert _claim(session, healthy.claim["tardy"]).reason == ClaimReason.window_closed
    removal = _remove(app, healthy.program_id, "late@example.com")
    assert (removal.claim_id, removal.refused) == (None, False)
    assert not _on_list(session, healthy.program_id, healthy.creator["late"])
    _verified(app, healthy.program_id)


def test_a_waiting_claim_left_by_a_removal_race_is_refused_by_removing_again(app, healthy,
                                                                             session):
    """A claim recorded while its creator was being removed waits without an eligibility:
    running the removal again refuses it."""
    session.execute(sa.delete(Eligibility).where(
        Eligibility.creator_id == healthy.creator["pk3"]))
    session.commit()
    removal = _remove(app, healthy.program_id, "pk3@example.com")
    assert (removal.was_on_list, removal.refused) == (False, True)
    assert _claim(session, healthy.claim["pk3"]).state == "refused"


@pytest.mark.parametrize(("email", "reason", "error", "message"), [
    ("outsider@example.com", "x", Conflict, "is not on this program's list"),
    ("nobody@example.com", "x", NotFound, "nobody with the address"),
    ("pk3@example.com", " ", InvalidInput, "say why"),
    ("pk3@example.com", "r" * 201, InvalidInput, "longer than 200"),
])
def test_a_refused_removal_changes_nothing(app, healthy, session, email, reason, error,
                                           message):
    session.rollback()
    mails_before = session.exec(select(sa.func.count()).select_from(OutboundEmail)).one()
    with pytest.raises(error, match=message):
        _remove(app, healthy.program_id, email, reason=reason)
    assert _claim(session, healthy.claim["pk3"]).state == "waitlisted"
    assert _on_list(session, healthy.program_id, healthy.creator["pk3"])
    assert _events(session) == []
    assert session.exec(select(sa.func.count()).select_from(OutboundEmail)).one() == mails_before


def test_removals_racing_allocation_never_leave_a_refused_claim_with_a_code(
        app, factory, session, backend):
    """Removals and allocation batches of one program at once (on PostgreSQL, truly parallel):
    each claim ends either allocated (its creator's removal left it alone) or refused with
    ``removed_from_list`` and no code; the counters hold (verify)."""
    program, claim_ids = stocked_program(app, factory, session, quota=40, creators=40, codes=40)
    emails = [f"creator{i:03d}@example.com" for i in range(0, 40, 2)]
    removals: dict[str, creators.Removal] = {}

    def remove(email):
        def job(s):
            removals[email] = creators.remove_from_list(s, program_id=program.id, email=email,
                                                        reason="race", actor="test")
        return job

    def allocate(s):
        allocation.allocate_program(s, program_id=program.id, batch_size=3)

    jobs = [job for pair in zip([remove(e) for e in emails], [allocate] * len(emails),
                                strict=True) for job in pair]
    run_in_threads(app, jobs, threads=6)
    session.rollback()
    by_creator = {c.email: c.id for c in session.exec(select(Creator)).all()}
    for email, removal in removals.items():
        claim = session.exec(select(Claim).where(Claim.creator_id == by_creator[email])).one()
        if removal.refused:
            assert (claim.state, claim.reason, claim.code_id) == (
                "refused", ClaimReason.removed_from_list, None)
        else:
            assert (removal.claim_state, claim.state) == ("allocated", "allocated")
    kept = [e for e in by_creator if e not in removals]
    assert all(session.exec(select(Claim.state).where(Claim.creator_id == by_creator[e])).one()
               == "allocated" for e in kept)
    _verified(app, program.id)


def test_a_claim_recorded_after_its_creators_removal_looked_is_refused_by_allocation(
        app, factory, session):
    """The race with a claim: the removal looked (no claim yet) and took the creator off; the
    claim, checked against the list before that, commits pending after. Allocation reads the
    list with the claims it serves and refuses it (``removed_from_list``): no code, no count,
    no mail; the next claim gets the code."""
    program = factory.program(slug="calm-1y", quota=5)
    factory.creators(program, ["a@example.com", "b@example.com"])
    factory.codes(program, ["HS-R1-0001"])
    session.rollback()
    ids = {e: i for i, e in session.exec(select(Creator.id, Creator.email)).all()}
    removal = _remove(app, program.id, "a@example.com")
    assert (removal.was_on_list, removal.claim_id) == (True, None)
    session.rollback()
    now = datetime.now(UTC)
    session.add_all(Claim(program_id=program.id, creator_id=ids[e], country="PK",
                          requested_at=now) for e in ("a@example.com", "b@example.com"))
    session.commit()  # a's claim first in line, b's behind it; allocation not run yet
    with app.app_context():
        result = allocation.allocate_program(get_session(), program_id=program.id)
    session.rollback()
    a, b = (session.exec(select(Claim).where(Claim.creator_id == ids[e])).one()
            for e in ("a@example.com", "b@example.com"))
    assert (a.state, a.reason, a.code_id) == ("refused", ClaimReason.removed_from_list, None)
    assert a.decided_at is not None and result.refused == [a.id]
    assert (b.state, result.allocated) == ("allocated", [b.id])
    assert session.exec(select(OutboundEmail.claim_id)).all() == [b.id]
    assert session.get(Program, program.id, populate_existing=True).allocated_count == 1
    refusals = session.exec(select(AuditEvent.actor, AuditEvent.object_id, AuditEvent.detail)
                            .where(AuditEvent.action == "claim.refused")).all()
    assert [(actor, claim_id, json.loads(detail)) for actor, claim_id, detail in refusals] == [
        ("system", a.id, {"reason": "removed_from_list"})]
    _verified(app, program.id)


def test_a_waitlisted_claim_of_a_creator_off_the_list_is_refused_when_stock_comes(
        app, factory, session):
    """A claim left waiting without its creator's eligibility is never served: the batch that
    reads it refuses it, and the code goes to the next in line."""
    program = factory.program(slug="calm-1y", quota=5)
    factory.creators(program, ["a@example.com", "b@example.com"])
    session.rollback()
    ids = {e: i for i, e in session.exec(select(Creator.id, Creator.email)).all()}
    session.add_all(Claim(program_id=program.id, creator_id=ids[e], country="PK",
                          state="waitlisted", reason="out_of_stock")
                    for e in ("a@example.com", "b@example.com"))
    session.execute(sa.delete(Eligibility).where(Eligibility.creator_id == ids["a@example.com"]))
    session.commit()
    factory.codes(program, ["HS-R1-0001"])  # the import's allocation serves the waitlist
    session.rollback()
    states = {c.creator_id: (c.state, c.reason, c.code_id is not None)
              for c in session.exec(select(Claim)).all()}
    assert states == {ids["a@example.com"]: ("refused", ClaimReason.removed_from_list, False),
                      ids["b@example.com"]: ("allocated", None, True)}
    _verified(app, program.id)
