"""Test helpers shared by unit and integration tests: real services, polled with deadlines."""

from __future__ import annotations

import email
import email.policy
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from wellness_perks.models import Code, CodeStatus, Program

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
# Where the tests find the services (test harness settings, not app settings).
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")

CSRF_RE = re.compile(r'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"')
LINK_RE = re.compile(r"https?://\S+/login/[A-Za-z0-9_.\-]+")


def service_missing(what: str, why: str) -> None:
    """Skip with the reason, or fail when REQUIRE_SERVICES=1: never a silent pass."""
    message = f"{what} is not available ({why})"
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
    pytest.skip(message)


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- PostgreSQL


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{PG_ADMIN_URL}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def create_pg_database() -> str:
    """A fresh, empty database wp_test_<random>; returns its URL."""
    name = f"wp_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextmanager
def migrated_pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database at the migrations' head; dropped afterwards. Without
    PostgreSQL the test is skipped with the reason (failed under REQUIRE_SERVICES=1)."""
    from wellness_perks.migrate import upgrade

    why = postgres_available()
    if why:
        service_missing("PostgreSQL", why)
    url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(url)


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def stock(session, program_id: int) -> tuple[int, int]:
    """(the program's counter of codes in stock, its available codes counted one by one), read
    afresh."""
    session.rollback()
    counter = session.execute(sa.select(Program.in_stock_count)
                              .where(Program.id == program_id)).scalar_one()
    counted = session.execute(sa.select(sa.func.count()).select_from(Code).where(
        Code.program_id == program_id, Code.status == CodeStatus.available)).scalar_one()
    session.rollback()
    return counter, counted


# --------------------------------------------------------------------------- Redis


def redis_available() -> str | None:
    host, port = REDIS_URL.split("//", 1)[1].split("/")[0].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                return f"{REDIS_URL} did not answer PING"
        return None
    except OSError as exc:
        return f"{REDIS_URL}: {exc}"


# --------------------------------------------------------------------------- SMTP


@dataclass
class MailCatcher:
    """A real SMTP server (aiosmtpd) on a free local port that keeps what it receives."""

    messages: list[EmailMessage] = field(default_factory=list)
    refuse_with: str | None = None  # e.g. "451 4.3.0 try later": refuse every DATA
    refused: int = 0
    connections: int = 0  # SMTP sessions opened (EHLO seen)
    pipelining: bool = False  # offer PIPELINING (RFC 2920) in the EHLO reply
    _lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        with self._lock:
            self.connections += 1
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd serves pipelined commands; it just doesn't offer it
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        if self.refuse_with:
            with self._lock:
                self.refused += 1
            return self.refuse_with
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)
        return "250 OK"

    def start(self) -> MailCatcher:
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.refused = 0
            self.connections = 0
            self.refuse_with = None
            self.pipelining = False

    def to(self, address: str, subject_contains: str = "") -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages
                    if m["To"] == address and subject_contains in (m["Subject"] or "")]

    def wait_for_mail(self, address: str, subject_contains: str = "", count: int = 1,
                      timeout: float = 20.0) -> list[EmailMessage]:
        return wait_for(lambda: (found := self.to(address, subject_contains))
                        and len(found) >= count and found,
                        timeout=timeout, what=f"{count} mail(s) to {address}")


def text_body(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def html_body(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def sign_in_link(message: EmailMessage) -> str:
    match = LINK_RE.search(text_body(message))
    assert match, "no sign-in link in the mail"
    return match.group(0)


def csrf_token(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no csrf_token field on the page"
    return match.group(1)


def redemption_code(message: EmailMessage) -> str:
    """The code line of a redemption mail (indented on a line of its own)."""
    match = re.search(r"^ {4}(\S+)\r?$", text_body(message), re.MULTILINE)
    assert match, "no code in the redemption mail"
    return match.group(1)
