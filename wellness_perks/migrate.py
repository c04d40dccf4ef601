"""Applying the Alembic migrations from code (``init-db``, the tests, ``make run``)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig

from config import PROJECT_ROOT


def alembic_config(database_url: str, code_keys: dict | None = None) -> AlembicConfig:
    """``code_keys``: CODE_ENCRYPTION_KEY and CODE_FINGERPRINT_KEY, for the migrations that
    encrypt or decrypt codes (without them, config.py's are used)."""
    config = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    if code_keys is not None:
        config.attributes["code_keys"] = code_keys
    return config


def upgrade(database_url: str, revision: str = "head", code_keys: dict | None = None) -> None:
    command.upgrade(alembic_config(database_url, code_keys), revision)
