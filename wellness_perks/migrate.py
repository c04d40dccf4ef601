"""Applying the Alembic migrations from code (``init-db``, the tests, ``make run``)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig

from config import PROJECT_ROOT


def alembic_config(database_url: str) -> AlembicConfig:
    config = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
