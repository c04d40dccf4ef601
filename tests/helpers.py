"""Test helpers shared by unit and integration tests: real services, polled with deadlines."""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet, MultiFernet

from harness.broker import redis_ping
from harness.ports import free_port  # noqa: F401 - the tests take it from here
from harness.postgres import PostgresServer
from harness.smtp import SmtpListener
from harness.waiting import wait_for
from wellness_perks.models import Code, CodeStatus, Program

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
# The tests' codes are encrypted under this key (a fresh one per test session).
CODE_ENCRYPTION_KEY = Fernet.generate_key().decode()
# Where the tests find the services (test harness settings, not app settings).
POSTGRES = PostgresServer(os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    prefix="wp_test")
# The unit tests' SECRET_KEY: long enough for config.py, which refuses a short one.
TEST_SECRET_KEY = "test-secret-key-of-at-least-32-bytes"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")

CSRF_RE = re.compile(r'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"')
LINK_RE = re.compile(r"https?://\S+/login/[A-Za-z0-9_.\-]+")


def service_missing(what: str, why: str) -> None:
    """Skip with the reason, or fail when REQUIRE_SERVICES=1: never a silent pass."""
    message = f"{what} is not available ({why})"
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
    pytest.skip(message)


# --------------------------------------------------------------------------- PostgreSQL

# None when PostgreSQL answers, else why not.
postgres_available = POSTGRES.why_unavailable
# A fresh, empty database wp_test_<random>; its URL (postgresql+psycopg://).
create_pg_database = POSTGRES.create_database
drop_pg_database = POSTGRES.drop_database


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
    """None when the shared Redis answers, else why not."""
    return redis_ping(REDIS_URL)


# --------------------------------------------------------------------------- SMTP


@dataclass
class MailCatcher(SmtpListener):
    """A real SMTP server (aiosmtpd) on a free local port that keeps what it receives."""

    messages: list[EmailMessage] = field(default_factory=list)
    refuse_with: str | None = None  # e.g. "451 4.3.0 try later": refuse every DATA
    refused: int = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        if self.refuse_with:
            with self._lock:
                self.refused += 1
            return self.refuse_with
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)
        return "250 OK"

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


def use_sign_in_link(client, path: str, **post_data):
    """Open a sign-in link (a page with one button) and press its button: the POST's answer."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    return client.post(path, data={"csrf_token": csrf_token(page.text), **post_data})


def csrf_token(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no csrf_token field on the page"
    return match.group(1)


def redemption_code(message: EmailMessage) -> str:
    """The code line of a redemption mail (indented on a line of its own)."""
    match = re.search(r"^ {4}(\S+)\r?$", text_body(message), re.MULTILINE)
    assert match, "no code in the redemption mail"
    return match.group(1)


def code_value(token: bytes, keys: str = CODE_ENCRYPTION_KEY) -> str:
    """A stored code in clear: its token decrypted as Fernet (any of ``keys``) decrypts it."""
    return MultiFernet([Fernet(k) for k in keys.split(",")]).decrypt(bytes(token)).decode()


def code_fingerprint(value: str, keys: str = CODE_ENCRYPTION_KEY) -> bytes:
    from wellness_perks.services.code_cipher import CodeCipher

    return CodeCipher(keys).fingerprint(value)


def code_values(session, statement) -> list[str]:
    """The codes ``statement`` selects (one column: ``Code.value_encrypted``), in clear."""
    return [code_value(token) for token in session.exec(statement).all()]


FOLLOW_SCRIPT = "/static/follow-progress.js"


@dataclass
class FollowedBlock:
    """A page's block that static/follow-progress.js follows: the ``<div>`` with
    ``data-follow-ms``, whether its run is under way, and the ids of its ``data-follow-part``s
    (None for a part without one: the script could not find it again)."""

    id: str | None
    every_ms: str
    running: str | None
    parts: list[str | None] = field(default_factory=list)
    live_parts: list[str | None] = field(default_factory=list)  # the parts read out (role=status)


class _FollowedBlockFinder(HTMLParser):
    def __init__(self):
        super().__init__()
        self.block: FollowedBlock | None = None
        self._divs = 0  # open <div>s inside the block (0: outside it, or it closed)
        self._live = 0  # open elements with role=status, counted as <div>s are (by tag)
        self._live_tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if self.block is None and tag == "div" and "data-follow-ms" in attributes:
            self.block = FollowedBlock(attributes.get("id"), attributes["data-follow-ms"],
                                       attributes.get("data-running"))
            self._divs = 1
            return
        if not self._divs:
            return
        self._divs += tag == "div"
        live = attributes.get("role") == "status" or bool(self._live_tags)
        if attributes.get("role") == "status":
            self._live_tags.append(tag)
        if "data-follow-part" in attributes:
            self.block.parts.append(attributes.get("id"))
            if live:
                self.block.live_parts.append(attributes.get("id"))

    def handle_endtag(self, tag):
        if self._divs:
            self._divs -= tag == "div"
            if self._live_tags and self._live_tags[-1] == tag:
                self._live_tags.pop()


def followed_block(html: str) -> FollowedBlock | None:
    finder = _FollowedBlockFinder()
    finder.feed(html)
    return finder.block


def assert_followed_in_place(client, html: str) -> FollowedBlock:
    """The page follows its run in place, as static/follow-progress.js reads it: the script
    referenced (served from /static: the CSP allows no other), no reload on a timer (axe-core's
    meta-refresh, WCAG 2.2.1), a running block with an id and parts that each have one, the state
    in a status region, and a line for a reader without scripts. The script reads those names."""
    assert f'<script src="{FOLLOW_SCRIPT}" defer></script>' in html
    assert 'http-equiv="refresh"' not in html
    block = followed_block(html)
    assert block is not None, "no block with data-follow-ms on the page"
    assert block.id and block.running == "yes" and int(block.every_ms) >= 500
    assert block.parts and None not in block.parts and len(set(block.parts)) == len(block.parts)
    assert block.live_parts, "no followed part in a status region: the state is not read out"
    assert re.search(r"<noscript><p[^>]*>Reload the page[^<]*</p></noscript>", html)
    with client.get(FOLLOW_SCRIPT) as script:
        assert script.status_code == 200
        for name in ("data-follow-ms", "data-running", "data-follow-part"):
            assert name in script.text, f"the script does not read {name}"
    return block
