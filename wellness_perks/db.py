"""One engine per app, one session per request and per task, closed on teardown."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from flask import Flask, current_app, g
from sqlalchemy import event
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from .logs import log_event

T = TypeVar("T")

# Execution option that makes a SQLite transaction take the write lock at BEGIN
# (BEGIN IMMEDIATE), so read-then-write units like allocation serialise instead of
# failing with SQLITE_BUSY half-way. PostgreSQL ignores it.
SQLITE_IMMEDIATE = "wp_sqlite_immediate"


def make_engine(url: str, pool_size: int = 10) -> sa.Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            _private_file(Path(path))
        engine = sa.create_engine(
            url, hide_parameters=True, connect_args={"timeout": 30, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    # hide_parameters: SQL parameters carry codes; they stay out of logs and error messages.
    engine = sa.create_engine(url, hide_parameters=True, pool_size=pool_size,
                              max_overflow=pool_size)
    _ping_when_idle(engine)
    return engine


def _private_file(path: Path) -> None:
    """The SQLite file holds every table: made readable by its owner only (0600), before
    SQLite opens it, in a folder of the owner's (0700 when made here). SQLite gives its -wal
    and -shm files the database file's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


# A pooled connection that has sat idle longer than this is pinged before it is handed out.
PING_IDLE_SECONDS = 10.0


def _ping_when_idle(engine: sa.Engine) -> None:
    """Test pooled connections before use, but only those idle for a while.

    ``pool_pre_ping`` would cost a round trip on every checkout, i.e. on every request and
    task. A connection used in the last few seconds is
    alive unless the server has just gone away; then the failing statement's disconnect error
    invalidates the whole pool, and only the requests already under way fail.
    """
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record):
        record.info["wp_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy):
        idle_since = record.info.get("wp_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out another (a fresh one if need be).
            raise sa.exc.DisconnectionError(f"stale pooled connection: {exc}") from exc


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
    engine = make_engine(app.config["DATABASE_URL"], app.config["DATABASE_POOL_SIZE"])
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


def connection_lost(exc: BaseException) -> bool:
    """The database went away under a statement (the server restarted or ended the
    connection), or could not be reached: trying again may work, the request's input was fine."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated)


def once_more_if_disconnected(session: Session, work: Callable[[], T]) -> T:
    """Run ``work``; if the connection died under it, roll back and run it once more on a fresh
    connection. Only for work that is idempotent (the claim: one per creator, whatever ran
    before), since the first attempt may have committed before the connection was lost."""
    try:
        return work()
    except sa.exc.DBAPIError as exc:
        if not connection_lost(exc):
            raise
        session.rollback()
        log_event("db.retry_after_disconnect", logging.WARNING, error=type(exc.orig).__name__)
        return work()


def read_outside_transaction(session: Session, statement: sa.Executable,
                             params: dict | None = None) -> sa.Row | None:
    """The first row of a read that needs no transaction of its own (who a session names).

    On PostgreSQL it runs on a pooled connection in autocommit: one round trip, where the
    session's transaction would add a BEGIN before it and a ROLLBACK at the end of the
    request, on a connection held the whole request. Elsewhere it runs in the session."""
    if not is_postgresql(session):
        return session.execute(statement, params).first()
    with session.get_bind().connect() as conn:
        return (conn.execution_options(isolation_level="AUTOCOMMIT")
                .execute(statement, params).first())


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


@contextmanager
def planned_each_execution(session: Session):
    """PostgreSQL: plan each statement run inside the block, in the session's transaction, for
    its own parameters and the tables as they are now (``plan_cache_mode = force_custom_plan``);
    statements after the block go back to the plans the server keeps.

    The driver prepares a statement run five times, and PostgreSQL may then keep one generic
    plan for it. Made while the tables are small (a new program, a launch's first minutes),
    such a plan goes on scanning what has grown since: every claim of the program to find the
    waiting ones, every mail to take a batch. So the few statements of a batch that find its
    rows (dozens or hundreds of rows each) are planned each time; the per-row writes that
    follow, found by key, keep their prepared plans (planning each of those would cost more
    than it saves).
    """
    postgresql = is_postgresql(session)
    if postgresql:
        session.connection().exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
    yield
    if postgresql:
        session.connection().exec_driver_sql("SET LOCAL plan_cache_mode = DEFAULT")


def found_by_key(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """``condition IS TRUE``: the same test, but one that no index can serve, so the statement
    finds its rows by its other conditions (a key) and only then checks this one.

    For the hot statements that look rows up by a key and check something else: a mail by id,
    then its state (``status = 'sending'``); a creator's claim by creator, then its program.
    PostgreSQL may plan a prepared statement once for all parameters: planned while the tables
    are new and empty, any index ties with any other, and a generic plan may take the other
    condition's (the ``(status, ...)`` index over every mail in that state, the
    ``(program_id, state, id)`` index over every claim of the program), so that each lookup
    costs more than the last as the tables grow.
    """
    return condition.is_(sa.true())
