"""PostgreSQL: a fresh database per run, dropped afterwards, on a server reached as its admin."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

CONNECT_TIMEOUT = 5  # seconds: a server that is not there is reported, not waited for


def plain_url(url: str) -> str:
    """``postgresql+psycopg://`` (SQLAlchemy's form) -> ``postgresql://`` (libpq's, and the form
    an operator is handed)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def connect(url: str, autocommit: bool = True):
    """A psycopg connection to ``url`` (either form)."""
    import psycopg

    return psycopg.connect(plain_url(url), autocommit=autocommit,
                           connect_timeout=CONNECT_TIMEOUT)


@dataclass(frozen=True)
class PostgresServer:
    """The server at ``admin_url`` (a role that may create databases, either URL form); the
    URLs of the databases made here come back in the form ``admin_url`` is given in."""

    admin_url: str
    prefix: str = "wp"  # database names: <prefix>_<random>

    def connect(self):
        return connect(self.admin_url)

    def why_unavailable(self) -> str | None:
        """None when the server answers, else why not."""
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
            return None
        except Exception as exc:  # noqa: BLE001 - the reason is the answer
            first_line = (str(exc).splitlines() or [""])[0][:200]
            return f"{self.admin_url}: {type(exc).__name__}: {first_line}"

    def create_database(self, prefix: str | None = None) -> str:
        """A fresh, empty database ``<prefix>_<random>``; returns its URL."""
        name = f"{prefix or self.prefix}_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url``, closing the sessions still on it."""
        name = url.rsplit("/", 1)[1]
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
