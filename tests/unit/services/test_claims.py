"""The claim rules (``services/claims.py``), called directly: a request answers with the claim
as it stands, once per creator however many requests race; refused off the list; stored even
when the broker is down; recorded while the program's row is locked by an allocation."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.unit.services.scenarios import run_in_threads, verified
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Claim, Creator, Program
from wellness_perks.services import claims, programs


def _claims(session):
    session.rollback()  # a fresh snapshot: SQLite's WAL keeps a reader at its first view
    return session.exec(select(Claim).order_by(Claim.id)).all()


def test_claim_request_returns_the_claim_as_it_stands(app, factory, session):
    from wellness_perks.db import get_session
    from wellness_perks.services import claims as claim_service
    from wellness_perks.services.errors import NotFound, NotOnList, ProgramNotFound

    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    other = factory.program(slug="other-6m", name="Other")
    with app.app_context():
        first = claim_service.request_claim(get_session(), program="headspace-6m", creator_id=1)
        again = claim_service.request_claim(get_session(), program=program, creator_id=1)
        with pytest.raises(NotOnList) as not_on_list:
            claim_service.request_claim(get_session(), program=other, creator_id=1)
        with pytest.raises(NotOnList):
            claim_service.request_claim(get_session(), program="other-6m", creator_id=1)
        with pytest.raises(ProgramNotFound):
            claim_service.request_claim(get_session(), program="nope", creator_id=1)
        with pytest.raises(NotFound, match="no creator"):
            claim_service.request_claim(get_session(), program=program, creator_id=999)
    assert (first.state, first.reason) == ("pending", None)  # as recorded; allocation follows
    assert again.id == first.id
    assert isinstance(not_on_list.value, NotFound) and not_on_list.value.status_code == 404
    assert [c.id for c in _claims(session)] == [first.id]  # nothing recorded off the list
    session.rollback()
    events = session.exec(select(AuditEvent).where(AuditEvent.object_type == "claim")
                          .order_by(AuditEvent.id)).all()
    assert [(e.action, e.object_id, e.actor) for e in events] == [
        ("claim.requested", first.id, "creator:1")]
    assert events[0].at.tzinfo is not None


def test_claims_are_stored_when_the_broker_is_down(app_config, factory, session):
    """The claim is committed before its task is published; a dead broker leaves it pending for
    the sweeper, and after one failure the process stops trying for a while (circuit breaker)."""
    from tests.conftest import Factory
    from wellness_perks import create_app, dispatch
    from wellness_perks.services import claims as claim_service

    app_config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    app = create_app(app_config)
    dispatch.reset_circuit()
    factory = Factory(app)
    program = factory.program()
    factory.creators(program, ["a@example.com", "b@example.com"])
    try:
        with app.app_context():
            from wellness_perks.db import get_session
            for creator_id in (1, 2):
                claim_service.request_claim(get_session(), program=program,
                                            creator_id=creator_id)
            assert dispatch._broker_down_until > 0
    finally:
        dispatch.reset_circuit()
        app.extensions["db_engine"].dispose()
    assert [c.state for c in _claims(session)] == ["pending", "pending"]


def test_claims_are_recorded_while_the_program_row_is_locked(app, factory, session, backend):
    """Allocation batches, quota changes, voids, reissues and restores lock the program's row
    (``programs.lock_program``). A new claim (whose row refers to the program) must not wait
    for that lock: FOR UPDATE would make every claim queue behind every batch; the lock is FOR
    NO KEY UPDATE, which a reference doesn't conflict with."""
    if backend != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers by design")
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-CODE-0001"])
    errors = []

    def claim():  # with no broker, allocation then runs here, and waits for the lock
        try:
            with app.app_context():
                claims.request_claim(get_session(), program=program, creator_id=1)
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=claim)
    with app.app_context():
        lock_holder = get_session()
        programs.lock_program(lock_holder, program.id)
        try:
            thread.start()
            deadline = time.monotonic() + 10
            while not _claims(session) and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.02)
            recorded_under_lock = [c.state for c in _claims(session)]
        finally:
            lock_holder.rollback()
    thread.join(timeout=30)
    assert errors == []
    assert recorded_under_lock == ["pending"], (
        "the claim waited for the lock on the program")
    assert [c.state for c in _claims(session)] == ["allocated"]


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

    run_in_threads(app, [claim] * 6, threads=6)
    verified(app, program)
    [only] = session.exec(select(Claim.id)).all()
    assert answers == [only] * 6  # every request answers with the one claim
    assert session.exec(select(AuditEvent.action).where(AuditEvent.object_type == "claim")
                        ).all() == ["claim.requested", "claim.allocated"]
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("program_given_as", ["object", "slug"])
def test_two_first_claims_racing_in_one_transaction_each_return_the_winner(
        app, factory, session, backend, monkeypatch, program_given_as):
    """Two first requests of one creator that both read "no claim yet" before either writes
    (the transactional path, as a reconsidered refusal takes): the unique constraint makes the
    second insert fail, and the request answers with the claim that won, recorded once."""
    if backend != "postgresql":
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): the two cannot interleave")
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    both_read = threading.Barrier(2, timeout=30)
    real_decide, real_get_claim = claims._decide, claims.get_claim
    fallbacks = []

    def decide_then_wait(*args, **kwargs):
        decision = real_decide(*args, **kwargs)
        both_read.wait()  # neither writes before both have read
        return decision

    def get_claim(*args, **kwargs):
        fallbacks.append(kwargs)
        return real_get_claim(*args, **kwargs)

    monkeypatch.setattr(claims, "_record_new_claim_autocommit", lambda *a, **k: None)
    monkeypatch.setattr(claims, "_decide", decide_then_wait)
    monkeypatch.setattr(claims, "get_claim", get_claim)
    given = program if program_given_as == "object" else program.slug
    answers = []
    run_in_threads(app, [lambda s: answers.append(
        claims.request_claim(s, program=given, creator_id=1))] * 2, threads=2)
    [stored] = _claims(session)
    assert [a.id for a in answers] == [stored.id, stored.id]
    assert len(fallbacks) == 1  # the loser took the fallback, and only the loser
    session.rollback()
    assert len(session.exec(select(AuditEvent).where(AuditEvent.action == "claim.requested"))
               .all()) == 1


def test_a_claim_survives_its_connection_being_cut(app, factory, session, backend, smtp_server):
    """The database ended the request's pooled connection (a restart, a failover, an idle
    timeout): the claim is tried once more on a fresh connection, and recorded once."""
    if backend != "postgresql":
        pytest.skip("SQLite has no server to cut a connection")
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-CODE-0001"])
    session.close()
    with app.app_context():
        doomed = get_session()
        pid = doomed.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        doomed.rollback()  # back to the pool, which hands it out again next
        outsider = sa.create_engine(app.config["DATABASE_URL"], poolclass=sa.pool.NullPool)
        with outsider.begin() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                                {"pid": pid}).scalar_one()
        outsider.dispose()
        claim = claims.request_claim(doomed, program=program.slug, creator_id=1)
    assert claim.state in ("pending", "allocated")
    assert [c.state for c in _claims(session)] == ["allocated"]


def test_a_paused_program_is_told_by_the_claims_one_read(app, factory, session):
    """Pause is part of the query that reads the claim's context: refusing a claim because
    claiming is paused costs that one statement and writes nothing."""
    from wellness_perks.services.errors import ClaimsPaused

    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    with app.app_context():
        programs.pause_claims(get_session(), program_id=program.id, actor="test")
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        if statement.split()[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}:
            statements.append(statement)

    engine = app.extensions["db_engine"]
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        with app.app_context(), pytest.raises(ClaimsPaused):
            claims.request_claim(get_session(), program="headspace-6m", creator_id=1)
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 1 and "claims_paused_at" in statements[0], statements
    assert _claims(session) == []
