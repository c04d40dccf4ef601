"""The Alembic history builds the schema the models describe, and runs down and up again."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import wellness_perks.models  # noqa: F401  (the tables)
from tests.helpers import create_pg_database, drop_pg_database, postgres_available, service_missing
from wellness_perks.db import make_engine
from wellness_perks.migrate import alembic_config


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    why = postgres_available()
    if why:
        service_missing("PostgreSQL", why)
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def _differences(url):
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    return diff


def test_upgrade_matches_models_and_round_trips(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    assert _differences(empty_database) == []
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    assert _differences(empty_database) == []


def test_upgrade_to_0003_counts_each_programs_codes_in_stock(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "0002")
    engine = make_engine(empty_database)
    with engine.begin() as conn:
        for program_id, statuses in ((1, ["available", "assigned", "available", "void"]),
                                     (2, ["assigned"]), (3, [])):
            conn.execute(sa.text(
                "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
                "code_pattern, created_at) VALUES (:id, :slug, 'P', 6, 10, 0, '.*', "
                "CURRENT_TIMESTAMP)"), {"id": program_id, "slug": f"p{program_id}"})
            conn.execute(sa.text(
                "INSERT INTO codebatch (id, program_id, name, code_count, created_at) "
                "VALUES (:id, :id, 'b', 0, CURRENT_TIMESTAMP)"), {"id": program_id})
            for i, status in enumerate(statuses):
                conn.execute(sa.text(
                    "INSERT INTO code (program_id, batch_id, value, status) "
                    "VALUES (:p, :p, :value, :status)"),
                    {"p": program_id, "value": f"C-{i}", "status": status})
    for _ in range(2):  # and down and up again, with the rows that reference the programs
        command.upgrade(config, "0003")
        with engine.connect() as conn:
            counters = conn.execute(sa.text("SELECT id, in_stock_count FROM program "
                                            "ORDER BY id"))
            assert counters.all() == [(1, 2), (2, 0), (3, 0)]
        command.downgrade(config, "0002")
    engine.dispose()
