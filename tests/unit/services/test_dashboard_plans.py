"""Every statement of a dashboard page view finds its rows on an index, on PostgreSQL and on
SQLite, with a launch's worth of rows: the cost of the page does not grow with the program's
codes or claims (no scan of ``code``, ``claim``, ``outboundemail``, ``codebatch`` or
``claimhour``).

The tables: 220,000 codes (two programs, 604 batches), 50,000 claims spread over 14 days
(40,000 allocated, each with its mail, of which 200 not sent), 90 days of hours rolled up per
program; analysed,
as a live database is. The dashboard plans its reads for their values (``force_custom_plan``
on PostgreSQL, ``planned_each_execution``), so that is the plan checked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.unit.services.test_query_plans import _migrated_database, generic_plan
from wellness_perks.db import make_engine
from wellness_perks.migrate import upgrade
from wellness_perks.services import dashboard, programs, stock

pytestmark = pytest.mark.one_process  # one grown database per module

NOW = datetime.now(UTC)

_FILL = {
    "postgresql": [
        "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
        "in_stock_count, code_pattern, created_at) VALUES "
        "(1, 'p', 'P', 6, 100000, 40000, 160000, '.*', now()), "
        "(2, 'q', 'Q', 6, 1000, 0, 20000, '.*', now())",
        "INSERT INTO codebatch (id, program_id, name, code_count, in_stock_count, created_at) "
        "SELECT g, CASE WHEN g <= 4 THEN 1 ELSE 2 END, 'b' || g, 0, 0, now() "
        "FROM generate_series(1, 604) g",
        "INSERT INTO code (id, program_id, batch_id, value_encrypted, key_id, fingerprint, "
        "status) SELECT g, 1, 1 + (g - 1) / 50000, convert_to('t' || g, 'UTF8'), 'k', "
        "sha256(convert_to('C-' || g, 'UTF8')), "
        "CASE WHEN g <= 40000 THEN 'assigned' ELSE 'available' END "
        "FROM generate_series(1, 200000) g",
        "INSERT INTO code (id, program_id, batch_id, value_encrypted, key_id, fingerprint, "
        "status) SELECT 200000 + g, 2, 5 + mod(g, 600), convert_to('t' || g, 'UTF8'), 'k', "
        "sha256(convert_to('D-' || g, 'UTF8')), 'available' FROM generate_series(1, 20000) g",
        "UPDATE codebatch SET in_stock_count = (SELECT count(*) FROM code "
        "WHERE code.batch_id = codebatch.id AND code.status = 'available')",
        "INSERT INTO creator (id, email, handle, country, login_nonce, created_at) "
        "SELECT g, 'c' || g || '@example.com', 'h', 'PK', 0, now() "
        "FROM generate_series(1, 50000) g",
        "INSERT INTO claim (id, program_id, creator_id, country, state, reason, code_id, "
        "requested_at) SELECT g, 1, g, 'PK', CASE WHEN g <= 40000 THEN 'allocated' "
        "WHEN g <= 45000 THEN 'waitlisted' WHEN g <= 48000 THEN 'refused' ELSE 'pending' END, "
        "CASE WHEN g > 40000 AND g <= 48000 THEN 'quota_reached' END, "
        "CASE WHEN g <= 40000 THEN g END, "
        "now() - interval '14 days' + (g * interval '24 seconds') "
        "FROM generate_series(1, 50000) g",
        "INSERT INTO outboundemail (kind, to_email, creator_id, claim_id, code_id, locale, "
        "status, attempts, created_at) SELECT 'redemption', 'c' || g || '@example.com', g, g, "
        "g, 'en', CASE WHEN mod(g, 400) = 0 THEN 'failed' WHEN mod(g, 400) = 1 THEN 'queued' "
        "ELSE 'sent' END, 1, now() FROM generate_series(1, 40000) g",
        "INSERT INTO claimhour (program_id, hour, claims, in_stock) "
        "SELECT p, date_trunc('hour', now()) - g * interval '1 hour', 150, 1000 "
        "FROM generate_series(1, 2160) g, generate_series(1, 2) p",
    ],
    "sqlite": [
        "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
        "in_stock_count, code_pattern, created_at) VALUES "
        "(1, 'p', 'P', 6, 100000, 40000, 160000, '.*', datetime('now')), "
        "(2, 'q', 'Q', 6, 1000, 0, 20000, '.*', datetime('now'))",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 604) "
        "INSERT INTO codebatch (id, program_id, name, code_count, in_stock_count, created_at) "
        "SELECT n, CASE WHEN n <= 4 THEN 1 ELSE 2 END, 'b' || n, 0, 0, datetime('now') FROM g",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200000) "
        "INSERT INTO code (id, program_id, batch_id, value_encrypted, key_id, fingerprint, "
        "status) SELECT n, 1, 1 + (n - 1) / 50000, CAST('t' || n AS BLOB), 'k', "
        "CAST('C-' || n AS BLOB), CASE WHEN n <= 40000 THEN 'assigned' ELSE 'available' END "
        "FROM g",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000) "
        "INSERT INTO code (id, program_id, batch_id, value_encrypted, key_id, fingerprint, "
        "status) SELECT 200000 + n, 2, 5 + n % 600, CAST('t' || n AS BLOB), 'k', "
        "CAST('D-' || n AS BLOB), 'available' FROM g",
        "UPDATE codebatch SET in_stock_count = (SELECT count(*) FROM code "
        "WHERE code.batch_id = codebatch.id AND code.status = 'available')",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50000) "
        "INSERT INTO creator (id, email, handle, country, locale, login_nonce, "
        "session_version, created_at) "
        "SELECT n, 'c' || n || '@example.com', 'h', 'PK', 'en', 0, 0, datetime('now') FROM g",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50000) "
        "INSERT INTO claim (id, program_id, creator_id, country, state, reason, code_id, "
        "requested_at) SELECT n, 1, n, 'PK', CASE WHEN n <= 40000 THEN 'allocated' "
        "WHEN n <= 45000 THEN 'waitlisted' WHEN n <= 48000 THEN 'refused' ELSE 'pending' END, "
        "CASE WHEN n > 40000 AND n <= 48000 THEN 'quota_reached' END, "
        "CASE WHEN n <= 40000 THEN n END, "
        "strftime('%Y-%m-%d %H:%M:%f', 'now', '-14 days', '+' || (n * 24) || ' seconds') "
        "FROM g",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 40000) "
        "INSERT INTO outboundemail (kind, to_email, creator_id, claim_id, code_id, locale, "
        "status, attempts, created_at) SELECT 'redemption', 'c' || n || '@example.com', n, n, "
        "n, 'en', CASE WHEN n % 400 = 0 THEN 'failed' WHEN n % 400 = 1 THEN 'queued' "
        "ELSE 'sent' END, 1, datetime('now') FROM g",
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 2160), "
        "p(id) AS (VALUES (1), (2)) "
        "INSERT INTO claimhour (program_id, hour, claims, in_stock) "
        "SELECT p.id, strftime('%Y-%m-%d %H:00:00.000000', 'now', '-' || n || ' hours'), 150, "
        "1000 FROM g, p",
    ],
}

LAST_HOUR = dashboard.hour_floor(NOW)
# Each read of a page view: (statement, its values, the index it must be found on, as named
# on PostgreSQL and on SQLite).
READS = {
    # The program table holds a few rows: PostgreSQL may read them all, and that is fine.
    "the program's counters": (programs._COUNTERS, {"b_program": 1},
                               (None, "INTEGER PRIMARY KEY")),
    "claims not allocated, by state": (programs._NOT_ALLOCATED_BY_STATE, {"b_program": 1},
                                       ("ix_claim_program_state",) * 2),
    "code batches": (dashboard._BATCHES, {"b_program": 1}, ("ix_codebatch_program_id",) * 2),
    "code mails owed or failed": (dashboard._MAIL_OWED_OR_FAILED, {"b_program": 1},
                                  ("ix_outbound_status",) * 2),
    "the last hour rolled up": (dashboard._LAST_ROLLED, {"b_program": 1},
                                ("claimhour_pkey", "sqlite_autoindex_claimhour_1")),
    "the hours rolled up": (dashboard._ROLLED_HOURS,
                            {"b_program": 1, "b_from": NOW - timedelta(days=14)},
                            ("claimhour_pkey", "sqlite_autoindex_claimhour_1")),
}
BIG_TABLES = ("code", "claim", "outboundemail", "codebatch", "claimhour", "creator")


def _live(dialect: str):
    return (dashboard._CLAIMS_BY_HOUR[dialect],
            {"b_program": 1, "b_since": LAST_HOUR, "b_until": NOW + timedelta(days=1)},
            ("ix_claim_program_requested",) * 2)


def _reads(dialect: str) -> dict:
    return {**READS, "claims since the last hour rolled up": _live(dialect)}


@pytest.fixture(scope="module")
def pg_engine():
    with _migrated_database() as engine:
        with engine.begin() as conn:
            for statement in _FILL["postgresql"]:
                conn.exec_driver_sql(statement)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        yield engine


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'dashboard.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in _FILL["sqlite"]:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("ANALYZE")
    yield engine
    engine.dispose()


@pytest.mark.parametrize("name", list(_reads("postgresql")))
def test_each_read_of_the_dashboard_is_an_index_lookup_on_postgresql(pg_engine, name):
    statement, params, (index, _sqlite) = _reads("postgresql")[name]
    plan = generic_plan(pg_engine, statement, custom=True, **params)
    assert index is None or index in plan, plan
    for table in BIG_TABLES:
        assert f"Seq Scan on {table} " not in plan + " ", plan
    if name == "code mails owed or failed":
        # From the few mails in those states to their claims, by key: never the program's
        # claims.
        assert "claim_pkey" in plan or "claim_code_id_key" in plan, plan
        assert "ix_claim_program_state" not in plan, plan


def sqlite_plan(engine: sa.Engine, statement: sa.Executable, params: dict) -> list[str]:
    """EXPLAIN QUERY PLAN of the one statement ``statement`` sends, as the driver sends it."""
    sent: list[tuple[str, tuple]] = []

    def capture(_conn, _cursor, text, parameters, *_args):
        sent.append((text, parameters))

    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", capture)
        result = conn.execute(statement, params)
        if result.returns_rows:
            result.all()
        sa.event.remove(conn, "before_cursor_execute", capture)
        (text, values), = [(t, v) for t, v in sent
                           if t.lstrip().upper().startswith(("SELECT", "UPDATE"))]
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {text}", values).all()
        conn.rollback()
    return [row[-1] for row in rows]


@pytest.mark.parametrize("name", list(_reads("sqlite")))
def test_each_read_of_the_dashboard_is_an_index_lookup_on_sqlite(sqlite_engine, name):
    statement, params, (_pg, index) = _reads("sqlite")[name]
    plan = sqlite_plan(sqlite_engine, statement, params)
    assert any(index in line for line in plan), plan
    for line in plan:
        words = line.split()
        if words[0] == "SCAN" and len(words) > 1:
            assert words[1] not in BIG_TABLES, plan  # a walk of the whole table (or index)
    if name == "code mails owed or failed":
        assert not any("ix_claim_program_state" in line for line in plan), plan


def test_the_rollup_finds_each_programs_last_hour_by_key(pg_engine, sqlite_engine):
    """The sweeper's rollup reads, per program (few), the last hour on the key."""
    text = dashboard._LAST_ROLLED_PER_PROGRAM.compile(dialect=pg_engine.dialect)
    with pg_engine.connect() as conn:
        plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {text}").scalars())
    assert "claimhour_pkey" in plan and "Seq Scan on claimhour" not in plan, plan
    lines = sqlite_plan(sqlite_engine, dashboard._LAST_ROLLED_PER_PROGRAM, {})
    assert not any(line.startswith("SCAN claimhour") for line in lines), lines


def test_allocation_lowers_the_batch_counters_by_the_codes_keys(pg_engine, sqlite_engine):
    """The one statement allocation adds per batch (``stock.take``) finds the codes it took by
    key, in a generic plan too (it runs outside ``planned_each_execution``): never by walking
    the codes."""
    params = {"b_codes": list(range(40_001, 40_201))}
    plan = generic_plan(pg_engine, stock._LOWER_BATCHES, **params)
    assert "code_pkey" in plan and "Seq Scan on code " not in plan + " ", plan
    lines = sqlite_plan(sqlite_engine, stock._LOWER_BATCHES, params)
    assert not any(line.split()[:2] == ["SCAN", "taken"] for line in lines), lines
    assert any("taken USING INTEGER PRIMARY KEY" in line for line in lines), lines
