"""The Alembic history builds the schema the models describe, and runs down and up again."""

from __future__ import annotations

import pytest
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
