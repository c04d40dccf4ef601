"""The figures of ``/healthz`` and ``/metrics`` come from index ranges bounded by the work
outstanding, never from a scan of the claims decided or the mails sent: checked on PostgreSQL
with 100,000 claims and 100,000 mails, nearly all of them done (EXPLAIN ANALYZE, so the plan is
the one the statement really runs)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from tests.helpers import migrated_pg_database
from wellness_perks.db import make_engine
from wellness_perks.services import health

GROW = (
    "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, code_pattern, "
    "created_at) SELECT g, 'p' || g, 'P', 6, 100000, 0, '.*', now() FROM generate_series(1, 3) g",
    "INSERT INTO creator (id, email, handle, country, locale, login_nonce, created_at) "
    "SELECT g, 'c' || g || '@example.com', 'h', 'PK', 'en', 0, now() "
    "FROM generate_series(1, 100000) g",
    # A handful pending, a tenth waitlisted, some refused, the rest allocated.
    "INSERT INTO claim (program_id, creator_id, country, state, requested_at) "
    "SELECT 1 + g %% 3, g, 'PK', CASE WHEN g %% 50000 = 7 THEN 'pending' "
    "WHEN g %% 10 = 0 THEN 'waitlisted' WHEN g %% 13 = 0 THEN 'refused' ELSE 'allocated' END, "
    "now() - interval '1 hour' + g * interval '1 ms' FROM generate_series(1, 100000) g",
    # A handful queued (some waiting for a retry) or failed, the rest sent.
    "INSERT INTO outboundemail (kind, to_email, status, attempts, created_at, sent_at, "
    "next_attempt_at) SELECT 'redemption', 'c' || g || '@example.com', "
    "CASE WHEN g %% 20000 = 3 THEN 'queued' WHEN g %% 30000 = 5 THEN 'failed' ELSE 'sent' END, "
    "1, now(), now(), CASE WHEN g %% 40000 = 3 THEN now() END FROM generate_series(1, 100000) g",
    "ANALYZE",
)

pytestmark = pytest.mark.one_process  # one grown database per module
STATEMENTS = ("_PENDING", "_PROGRAMS", "_MAILS_BY_STATUS", "_FIRST_RETRY_DUE", "_FIRST_NEW_DUE",
              "_FIRST_LEASE", "_POSSIBLY_SENT")


@pytest.fixture(scope="module")
def grown_engine():
    with migrated_pg_database() as url:
        engine = make_engine(url)
        with engine.begin() as conn:
            for statement in GROW:
                conn.exec_driver_sql(statement)
        yield engine
        engine.dispose()


def explain(engine: sa.Engine, statement) -> str:
    text = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        return "\n".join(conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, COSTS OFF) " + text.replace("%", "%%")).scalars())


@pytest.mark.parametrize("name", STATEMENTS)
def test_health_figures_read_index_ranges_only(grown_engine, name):
    plan = explain(grown_engine, getattr(health, name))
    assert "Seq Scan on claim" not in plan, plan
    assert "Seq Scan on outboundemail" not in plan, plan
    assert "Index" in plan, plan


def test_the_owed_figures_read_a_few_rows(grown_engine):
    """What /healthz reads touches the pending claims and the mails not sent, not the rest."""
    for name in ("_PENDING", "_MAILS_BY_STATUS", "_FIRST_RETRY_DUE", "_FIRST_NEW_DUE"):
        plan = explain(grown_engine, getattr(health, name))
        rows = [int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plan)]
        assert max(rows) <= 10, plan
