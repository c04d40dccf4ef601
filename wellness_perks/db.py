"""One engine per app, one session per request and per task, closed on teardown."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, current_app, g
from sqlalchemy import event
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

# Execution option that makes a SQLite transaction take the write lock at BEGIN
# (BEGIN IMMEDIATE), so read-then-write units like allocation serialise instead of
# failing with SQLITE_BUSY half-way. PostgreSQL ignores it.
SQLITE_IMMEDIATE = "wp_sqlite_immediate"


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, hide_parameters=True, connect_args={"timeout": 30, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    # hide_parameters: SQL parameters carry codes; they stay out of logs and error messages.
    return sa.create_engine(
        url, hide_parameters=True, pool_pre_ping=True, pool_size=5, max_overflow=10
    )


def _configure_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def init_app(app: Flask) -> None:
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["db_engine"] = engine
    app.extensions["db_sessionmaker"] = sessionmaker(
        bind=engine, class_=Session, expire_on_commit=False
    )
    app.teardown_appcontext(_close_session)


def engine() -> sa.Engine:
    return current_app.extensions["db_engine"]


def new_session() -> Session:
    return current_app.extensions["db_sessionmaker"]()


def get_session() -> Session:
    """The session of the current request or task (one per app context)."""
    if "db_session" not in g:
        g.db_session = new_session()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def begin_write(session: Session) -> None:
    """Start a transaction that will write what it reads: on SQLite it takes the write lock at
    BEGIN (a WAL reader cannot upgrade to a writer once another writer has committed).

    On SQLite, whatever the session had open is committed first (only reads are expected
    there). On PostgreSQL an open transaction simply goes on: at READ COMMITTED every statement
    sees what is committed when it runs, and the rows it must not race for are locked anyway.
    """
    if session.get_bind().dialect.name != "sqlite":
        return
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={SQLITE_IMMEDIATE: True})


@contextmanager
def write_transaction(session: Session):
    """``begin_write``, then commit on success or roll back on error."""
    begin_write(session)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
