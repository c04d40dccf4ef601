"""Alembic environment: targets SQLModel.metadata; the URL comes from the caller or config.py."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import wellness_perks.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from config import Config
from wellness_perks.db import make_engine
from wellness_perks.models import UTCDateTime

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    return config.attributes.get("database_url") or Config().DATABASE_URL


def render_item(type_, obj, autogen_context):
    """Migrations spell plain SQLAlchemy types, never the app's own classes."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and obj.__class__.__module__.startswith("sqlmodel"):
        return "sa.String()"
    return False


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_item=render_item, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine: sa.Engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                _sqlite_foreign_keys_off(connection)
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_item=render_item, render_as_batch=sqlite,
                              on_version_apply=_check_sqlite_foreign_keys if sqlite else ())
            with context.begin_transaction():
                context.run_migrations()
    finally:
        # The connection goes with it, also when a migration refuses: nothing else uses it.
        engine.dispose()


def _sqlite_foreign_keys_off(connection: sa.Connection) -> None:
    """SQLite changes a table by rebuilding it (batch mode: copy, drop, rename), and with
    foreign keys enforced, dropping a table that rows of another table refer to fails. So they
    are off while the migrations run (the pragma only takes effect outside a transaction: it is
    sent on the driver's connection, which SQLAlchemy has not begun one on)."""
    connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")


def _check_sqlite_foreign_keys(*, ctx, step, **_kw) -> None:
    """After each step, before it commits: every reference still points at a row."""
    broken = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        shown = "; ".join(f"{table} row {rowid} -> {parent}"
                          for table, rowid, parent, _fk in broken[:10])
        raise RuntimeError(f"migration {step.up_revision_id} left {len(broken)} broken "
                           f"references: {shown}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
