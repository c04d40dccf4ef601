"""The console timer's statement timing (shared by bench.dashboard and bench-scale)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.console_timer import DASHBOARD_READS, _read_name, time_call


def test_settings_are_not_reads_and_reads_are_named_by_fragment_or_place():
    assert _read_name("SET LOCAL statement_timeout = 500", 1, ()) is None
    assert _read_name("SET LOCAL plan_cache_mode = force_custom_plan", 1, DASHBOARD_READS) is None
    assert _read_name("SELECT quota FROM countryquota WHERE x", 2, DASHBOARD_READS) == (
        "country quotas")
    assert _read_name("SELECT a FROM auditevent ORDER BY at", 3, ()) == "read 3 (auditevent)"
    assert _read_name("SELECT 1", 4, ()) == "read 4"


def test_each_statement_of_a_call_is_timed_by_its_place_in_every_run():
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    calls = []

    def call(session):
        calls.append(1)
        session.execute(sa.text("SELECT count(*) FROM t"))
        return session.execute(sa.text("SELECT 7")).scalar()

    with Session(engine) as session:
        timed = time_call(engine, session, call, 3)
    assert len(calls) == 3 and timed["result"] == 7
    assert set(timed["statements"]) == {"read 1 (t)", "read 2"}
    assert {s["runs"] for s in timed["statements"].values()} == {3}
    assert timed["service"]["runs"] == 3
    assert timed["service"]["median_ms"] >= timed["statements"]["read 2"]["median_ms"]


def test_a_read_made_in_some_runs_only_does_not_rename_the_others():
    engine = sa.create_engine("sqlite://")
    runs = []

    def call(session):
        runs.append(1)
        if len(runs) == 2:
            session.execute(sa.text("SELECT 'extra'"))
        return session.execute(sa.text("SELECT 7")).scalar()

    with Session(engine) as session:
        timed = time_call(engine, session, call, 3)
    assert {name: (s["sql"], s["runs"]) for name, s in timed["statements"].items()} == {
        "read 1": ("SELECT 7", 3), "read 2": ("SELECT 'extra'", 1)}
