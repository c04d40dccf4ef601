"""Hot statements keep plans that find their rows by key as the tables grow.

PostgreSQL may keep one plan for a prepared statement, made for all parameters (a generic
plan): made while the tables were new and empty, a launch's first minutes, it scanned what has
since grown. Measured at 20,000 claims: 2.5 ms of PostgreSQL CPU per claim instead of 0.8.
Statements looked up by one key check their state in a form no index serves, so even the
generic plan takes the primary key; batch statements over lists of keys are planned at each
execution, for the tables as they are then.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlmodel import Session

from tests.conftest import Factory
from tests.helpers import CODE_ENCRYPTION_KEY, TEST_SECRET_KEY, migrated_pg_database
from wellness_perks import create_app
from wellness_perks.db import get_session, make_engine
from wellness_perks.models import Creator
from wellness_perks.services import allocation, claims, imports, programs, stock
from wellness_perks.services.mail import queue

pytestmark = pytest.mark.one_process  # one grown database per module

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@contextmanager
def _migrated_database():
    with migrated_pg_database() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture(scope="module")
def fresh_engine():
    """A migrated PostgreSQL database whose tables are empty and were never analysed."""
    with _migrated_database() as engine:
        yield engine


def generic_plan(engine: sa.Engine, statement: sa.Executable, custom: bool = False,
                 **params) -> str:
    """EXPLAIN of ``statement`` prepared server-side and planned once for all parameters (or,
    ``custom``, for these parameters, as ``planned_each_execution`` has it)."""
    return plan_of(engine, lambda conn: conn.execute(statement, params), custom)


def plan_of(engine: sa.Engine, run, custom: bool = False) -> str:
    """The plan of the one statement ``run(connection)`` sends, prepared as the driver does."""
    sent: list[tuple[str, dict]] = []

    def capture(_conn, _cursor, text, parameters, *_args):
        sent.append((text, parameters))

    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", capture)
        run(conn)  # the SQL and values as the driver gets them
        sa.event.remove(conn, "before_cursor_execute", capture)
        conn.rollback()
        (text, values), = sent
        names: list[str] = []

        def placeholder(match: re.Match) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        text = re.sub(r"%\((\w+)\)s", placeholder, text)
        raw = conn.connection.driver_connection
        args = sql.SQL(", ").join(sql.Literal(values[name]) for name in names).as_string(raw)
        mode = "force_custom_plan" if custom else "force_generic_plan"
        conn.exec_driver_sql(f"SET plan_cache_mode = {mode}")
        conn.exec_driver_sql(f"PREPARE probe AS {text}")
        try:
            rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE probe({args})").scalars().all()
        finally:
            conn.exec_driver_sql("DEALLOCATE probe")
            conn.rollback()
    return "\n".join(rows)


BY_ONE_KEY = {
    "record a mail sent": (queue._MARK_SENT, {"b_id": 1, "b_now": NOW, "b_message_id": "<m>"},
                           "outboundemail"),
    "record a mail sent, read the next": (
        queue._MARK_SENT_AND_CHECK_NEXT, {"b_id": 1, "b_now": NOW, "b_message_id": "<m>",
                                         "b_next": 2, "b_next_attempts": 1}, "outboundemail"),
    "is a mail still ours": (queue._STILL_OURS, {"b_next": 2, "b_next_attempts": 1},
                             "outboundemail"),
    "record a mail failed": (queue._RECORD_FAILURE, {"b_id": 1, "b_status": "queued",
                                                   "b_next_attempt_at": NOW, "b_error": "x"},
                             "outboundemail"),
}
BY_KEY_LISTS = {
    "take a mail batch": (queue._TAKE, {"b_ids": list(range(1, 51)), "b_now": NOW},
                          "outboundemail"),
    "renew a batch's leases": (queue._RENEW_LEASES,
                               {"b_held": [(i, 1) for i in range(1, 51)], "b_now": NOW},
                               "outboundemail"),
    "take codes": (stock._TAKE, {"b_codes": list(range(1, 201)), "b_now": NOW},
                   "code"),
}


@pytest.mark.parametrize("name", BY_ONE_KEY)
def test_one_key_lookups_use_the_primary_key_even_in_a_generic_plan(fresh_engine, name):
    statement, params, table = BY_ONE_KEY[name]
    plan = generic_plan(fresh_engine, statement, **params)
    assert f"{table}_pkey" in plan, plan
    assert "ix_outbound_status" not in plan, plan


def test_the_plain_state_test_would_walk_the_state_index(fresh_engine):
    """Why: the same lookup with a plain ``status = 'sending'`` is planned on the state index."""
    plain = (sa.update(queue.OutboundEmail.__table__)
             .where(queue._outbound.id == sa.bindparam("b_id"),
                    queue._outbound.status == "sending")
             .values(status="sent"))
    assert "ix_outbound_status" in generic_plan(fresh_engine, plain, b_id=1)


@pytest.fixture(scope="module")
def grown_engine():
    """Tables that were empty when the database was made, after a few launches' worth of rows
    arrived (not analysed since)."""
    with _migrated_database() as engine:
        _grow(engine)
        yield engine


def _grow(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for statement in (
            "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
            "code_pattern, created_at) VALUES (1, 'p', 'P', 6, 100000, 0, '.*', now())",
            "INSERT INTO codebatch (id, program_id, name, code_count, created_at) "
            "VALUES (1, 1, 'b', 0, now())",
            "INSERT INTO code (program_id, batch_id, value_encrypted, key_id, fingerprint, "
            "status) SELECT 1, 1, convert_to('token ' || g, 'UTF8'), 'k', "
            "sha256(convert_to('C-' || g, 'UTF8')), 'available' "
            "FROM generate_series(1, 100000) g",
            "INSERT INTO outboundemail (kind, to_email, status, attempts, created_at) "
            "SELECT 'redemption', 'c' || g || '@example.com', 'queued', 0, now() "
            "FROM generate_series(1, 100000) g",
        ):
            conn.exec_driver_sql(statement)


@pytest.mark.parametrize("name", BY_KEY_LISTS)
def test_key_list_lookups_are_planned_for_the_tables_as_they_are(grown_engine, name):
    statement, params, table = BY_KEY_LISTS[name]
    plan = generic_plan(grown_engine, statement, custom=True, **params)
    assert f"{table}_pkey" in plan, plan
    assert "Seq Scan" not in plan and "ix_outbound_status" not in plan, plan


def test_an_import_chunk_finds_codes_by_fingerprint_in_a_generic_plan(grown_engine):
    """The codes of other programs are looked up on the fingerprint index, never by scanning
    the codes, however many there are."""
    import hashlib

    fingerprints = [hashlib.sha256(f"C-{i}".encode()).digest() for i in range(1, 1001)]
    plan = generic_plan(grown_engine, imports._PG_WRITE_CODES, b_tokens=[b"t"] * 1000,
                        b_fingerprints=fingerprints, b_program=1, b_batch=1, b_key="k")
    assert "uq_code_fingerprint_program" in plan, plan
    assert "Seq Scan on code" not in plan, plan


def test_batches_plan_their_reads_each_time_and_their_row_writes_once(tmp_path, smtp_server):
    """Allocation and mail batches have PostgreSQL plan the statements that find their rows at
    each execution; the per-row writes after them keep their prepared plans."""
    smtp_server.clear()
    with _migrated_database() as engine:
        app = create_app({"TESTING": True, "DATABASE_URL": engine.url.render_as_string(False),
                          "INSTANCE_PATH": str(tmp_path), "SECRET_KEY": TEST_SECRET_KEY,
                          "CODE_ENCRYPTION_KEY": CODE_ENCRYPTION_KEY,
                          "BASE_URL": "http://localhost", "CELERY_BROKER_URL": "",
                          "SMTP_HOST": "127.0.0.1", "SMTP_PORT": smtp_server.port})
        factory = Factory(app)
        program = factory.program(quota=5)
        factory.creators(program, ["a@example.com", "b@example.com"])
        factory.codes(program, ["HS-PLAN-0001", "HS-PLAN-0002"])
        planned: list[tuple[str, str]] = []  # (plan mode in force, statement)
        mode = ["DEFAULT"]

        def capture(_conn, _cursor, text, *_args):
            if "plan_cache_mode" in text:
                mode[0] = text.rsplit(" ", 1)[1]
            else:
                planned.append((mode[0], " ".join(text.split())))

        app_engine = app.extensions["db_engine"]
        sa.event.listen(app_engine, "before_cursor_execute", capture)
        try:
            with app.app_context():
                session = get_session()
                for creator_id in session.execute(sa.select(Creator.id)).scalars().all():
                    claims.request_claim(session, program=program, creator_id=creator_id)
        finally:
            sa.event.remove(app_engine, "before_cursor_execute", capture)
            app_engine.dispose()
    assert len(smtp_server.messages) == 2

    def modes(*fragments: str) -> set[str]:
        found = {m for m, text in planned if all(f in text for f in fragments)}
        assert found, fragments
        return found

    custom, cached = {"force_custom_plan"}, {"DEFAULT"}
    assert modes("FROM claim JOIN creator", "FOR UPDATE OF claim") == custom  # waiting claims
    assert modes("FROM code", "SKIP LOCKED") == custom  # codes in stock
    assert modes("UPDATE claim SET state") == cached  # each claim allocated
    assert modes("UPDATE outboundemail SET status", "attempts") == custom  # take a mail batch
    assert modes("WHERE outboundemail.id IN") == custom  # what the mails say
    assert modes("UPDATE outboundemail SET status", "sent_at") == cached  # each mail recorded


@pytest.fixture(scope="module")
def stale_engine():
    """A launch half-way: the statistics were taken when every claim was pending; since then
    most claims were allocated."""
    with _migrated_database() as engine:
        with engine.begin() as conn:
            for statement in (
                "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
                "code_pattern, created_at) VALUES (1, 'p', 'P', 6, 100000, 0, '.*', now())",
                "INSERT INTO creator (id, email, handle, country, login_nonce, created_at) "
                "SELECT g, 'c' || g || '@example.com', 'h', 'PK', 0, now() "
                "FROM generate_series(1, 20000) g",
                "INSERT INTO claim (program_id, creator_id, country, state, requested_at) "
                "SELECT 1, g, 'PK', 'pending', now() FROM generate_series(1, 2000) g",
            ):
                conn.exec_driver_sql(statement)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE claim")
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE claim SET state = 'allocated'")
            conn.exec_driver_sql(
                "INSERT INTO claim (program_id, creator_id, country, state, requested_at) "
                "SELECT 1, g, 'PK', CASE WHEN g <= 15000 THEN 'allocated' ELSE 'pending' END, "
                "now() FROM generate_series(2001, 15500) g")
        yield engine


def test_allocation_reads_the_waiting_line_from_its_index_whatever_the_statistics(
        stale_engine):
    plan = generic_plan(stale_engine, allocation._WAITING_CLAIMS, custom=True, b_program=1,
                        b_full=[], b_limit=200)
    assert "ix_claim_waiting" in plan and "claim_pkey" not in plan, plan


@pytest.fixture(scope="module")
def programs_engine():
    """Forty programs, most of their claims allocated, the statistics up to date."""
    with _migrated_database() as engine:
        with engine.begin() as conn:
            for statement in (
                "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
                "code_pattern, created_at) SELECT g, 'p' || g, 'P', 6, 100000, 0, '.*', now() "
                "FROM generate_series(1, 40) g",
                "INSERT INTO creator (id, email, handle, country, login_nonce, created_at) "
                "SELECT g, 'c' || g || '@example.com', 'h', 'PK', 0, now() "
                "FROM generate_series(1, 1000) g",
                "INSERT INTO claim (program_id, creator_id, country, state, requested_at) "
                "SELECT p, c, 'PK', CASE WHEN mod(c, 100) = 0 THEN 'waitlisted' "
                "WHEN mod(c, 101) = 0 THEN 'refused' WHEN mod(c, 103) = 0 THEN 'pending' "
                "ELSE 'allocated' END, now() "
                "FROM generate_series(1, 40) p, generate_series(1, 1000) c",
            ):
                conn.exec_driver_sql(statement)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        yield engine


def test_the_program_list_counts_each_programs_claims_on_the_state_index(programs_engine):
    """Not by reading the claims, most of them allocated (the counter has those)."""
    with programs_engine.connect() as conn:
        text = str(programs._ALL_PROGRAMS.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {text}").scalars())
    assert "ix_claim_program_state" in plan, plan
    assert "Seq Scan on claim" not in plan and " code" not in plan, plan


CLAIM_LOOKUPS = {
    "claim request, by slug": lambda conn: conn.execute(
        claims._CLAIM_CONTEXT_BY_SLUG, {"program": "launch", "creator_id": 2}),
    "claim request, by id": lambda conn: conn.execute(
        claims._CLAIM_CONTEXT_BY_ID, {"program": 1, "creator_id": 2}),
    "a creator's claim": lambda conn: claims.get_claim(Session(bind=conn), program_id=1,
                                                       creator_id=2),
    "is a creator on the list": lambda conn: claims.is_eligible(Session(bind=conn), program_id=1,
                                                                creator_id=2),
}


@pytest.mark.parametrize("name", CLAIM_LOOKUPS)
def test_a_creators_claim_and_eligibility_are_found_by_creator_in_a_generic_plan(
        fresh_engine, name):
    """Not by walking the program's claims (or list) for the creator's: each claim request
    would cost more than the last."""
    plan = plan_of(fresh_engine, CLAIM_LOOKUPS[name])
    assert "ix_claim_program_state" not in plan and "uq_claim_program_creator" not in plan, plan
    assert "uq_eligibility" not in plan and "ix_claim_waiting" not in plan, plan
    assert "ix_claim_creator_id" in plan or "ix_eligibility_creator_id" in plan, plan
