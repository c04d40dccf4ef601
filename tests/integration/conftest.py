"""Process fixtures for the end-to-end tests: a fresh PostgreSQL database, a Redis database of
the test's own, an SMTP server in the test process, and the real ``gunicorn`` and ``celery``
processes started with the exact commands an operator runs, all configured by environment.

The processes are the harness's (``harness.stack``): each in its own process group, stopped
(then killed after a deadline) on teardown, writing its output to a file whose tail is attached
to the report of a failed test.

``running_stack`` builds such a stack for any broker (the shared Redis, or a private
``redis-server`` the test may stop and restart: ``harness.broker.RedisServer``), with any number
of named workers; ``Stack.sign_in`` signs many creators in at once with tokens minted as the app
mints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from harness.broker import RedisServer
from harness.commands import BIN, ROOT, CliResult, commands_missing, run_cli
from harness.ports import free_port
from harness.process import TAIL_LINES
from harness.stack import Stack as HarnessStack
from harness.stack import product_env, wait_http
from harness.tokens import mint_sign_in_token
from harness.waiting import wait_for
from tests.helpers import (
    REDIS_URL,
    MailCatcher,
    create_pg_database,
    csrf_token,
    drop_pg_database,
    postgres_available,
    redis_available,
    service_missing,
)

# Settings the app reads (config.py): none leaks into the processes from the caller's environment.
APP_SETTINGS = (
    "INSTANCE_PATH", "PORT", "SECRET_KEY", "CODE_ENCRYPTION_KEY", "CODE_FINGERPRINT_KEY",
    "DATABASE_URL", "CELERY_BROKER_URL", "BASE_URL",
    "SMTP_HOST", "SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_STARTTLS", "SMTP_SSL",
    "SMTP_TIMEOUT", "SMTP_CA_FILE", "SMTP_ALLOW_PLAINTEXT_AUTH", "MAIL_FROM",
    "MAIL_RETRY_WINDOW_SECONDS", "MAIL_RETRY_BASE_SECONDS", "MAIL_RETRY_MAX_DELAY_SECONDS",
    "MAIL_BATCH_SIZE", "OUTBOX_DIR", "MAX_CONTENT_LENGTH",
    "HELP_EMAIL", "LOGIN_TOKEN_MAX_AGE", "INVITE_LINK_MAX_AGE", "LOG_LEVEL",
    "ALLOCATION_BATCH_SIZE",
    "SWEEP_INTERVAL_SECONDS", "SWEEP_PENDING_AFTER_SECONDS", "MAIL_SENDING_TIMEOUT_SECONDS",
    "SESSION_IDLE_MINUTES", "SESSION_MAX_HOURS", "RATELIMIT_ENABLED", "RATELIMIT_STORAGE_URI",
    "RATELIMIT_SIGN_IN_PER_ADDRESS", "RATELIMIT_SIGN_IN_PER_IP", "RATELIMIT_CLAIM_PER_SESSION",
    "RATELIMIT_MANAGER_PASSWORD_FAILURES", "RATELIMIT_API_TOKEN", "TRUSTED_PROXY_COUNT",
    "UPLOAD_DIR", "IMPORT_IN_BACKGROUND_ROWS", "IMPORT_STALE_AFTER_SECONDS",
    "IMPORT_MAX_ATTEMPTS", "IMPORT_PROGRESS_SECONDS",
)
HTTP_TIMEOUT = 30
REDIS_OWNER_KEY = "wellness-perks-e2e:owner"


@dataclass
class SmtpServer(MailCatcher):
    """The MailCatcher, able to answer the next few messages (or every message, for a while)
    with a temporary refusal, and to take its time over each message it accepts."""

    refuse_count: int = 0
    refuse_reply: str = "451 4.3.0 try again later"
    accept_delay: float = 0.0  # seconds spent on each accepted DATA (a slow mail server)
    hang: bool = False  # while set, a RCPT is never answered (a server that hangs)

    def refuse_next(self, count: int) -> None:
        with self._lock:
            self.refuse_count = count

    def refuse_all(self, reply: str = "451 4.3.0 try again later") -> None:
        """Answer every DATA with ``reply`` until ``accept_all``."""
        with self._lock:
            self.refuse_with = reply

    def accept_all(self) -> None:
        with self._lock:
            self.refuse_with = None
            self.refuse_count = 0

    def to_any(self, addresses: Iterable[str], subject_contains: str = "") -> list[EmailMessage]:
        """Messages to any of ``addresses`` (in arrival order)."""
        wanted = set(addresses)
        with self._lock:
            return [m for m in self.messages
                    if m["To"] in wanted and subject_contains in (m["Subject"] or "")]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        while self.hang:  # says nothing: the client's timeout ends the conversation
            await asyncio.sleep(0.05)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        with self._lock:
            refuse = self.refuse_count > 0
            if refuse:
                self.refuse_count -= 1
                self.refused += 1
        if refuse:
            return self.refuse_reply
        if self.accept_delay and not self.refuse_with:
            await asyncio.sleep(self.accept_delay)
        return await super().handle_DATA(server, session, envelope)


@dataclass
class SignedIn:
    """A creator's browser: signed in, with a CSRF token of its session."""

    email: str
    http: requests.Session
    csrf_token: str


@dataclass(kw_only=True)
class Stack(HarnessStack):
    """The deployment under test: the harness's stack, with its address, its database (for the
    test's own read-only checks), the SMTP server it mails to, and the creators' browsers."""

    base_url: str
    database_url: str
    mail: SmtpServer
    engine: sa.Engine | None = None
    broker: RedisServer | None = None  # when the stack has a private broker
    browsers: list[requests.Session] = field(default_factory=list)  # closed by close_browsers

    def url(self, path: str) -> str:
        return self.base_url + path

    def cli(self, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> CliResult:
        """Run ``wellness-perks ARGS`` as an operator would (``env`` overrides settings for this
        run); HarnessError if it fails, unless ``check`` is false."""
        return run_cli(self.env | (env or {}), *args, check=check, timeout=60)

    def quota(self, slug: str) -> dict:
        return self.cli("quota", slug, "--json").json()

    def db(self) -> sa.Connection:
        if self.engine is None:
            self.engine = sa.create_engine(self.database_url)
        return self.engine.connect()

    def sign_in(self, emails: Iterable[str], path: str = "/",
                threads: int = 16) -> dict[str, SignedIn]:
        """A signed-in browser per creator, each having fetched ``path`` once (so it holds a
        CSRF token). The sign-in link is minted as the app mints it (the test knows SECRET_KEY)
        instead of mailed, and used as a creator does: ``GET /login/<token>`` shows the button, its
        POST (with the page's CSRF token) signs in."""
        emails = list(emails)
        with self.db() as conn:
            rows = {email: (creator_id, nonce) for email, creator_id, nonce in conn.execute(
                sa.text("SELECT email, id, login_nonce FROM creator WHERE email = ANY(:emails)"),
                {"emails": emails})}
        missing = sorted(set(emails) - rows.keys())
        assert not missing, f"not imported: {missing[:5]}"

        def one(email: str) -> tuple[str, SignedIn]:
            creator_id, nonce = rows[email]
            http = requests.Session()
            self.browsers.append(http)
            token = mint_sign_in_token(self.env["SECRET_KEY"], creator_id, nonce)
            link = self.url(f"/login/{token}")
            button = http.get(link, allow_redirects=False, timeout=HTTP_TIMEOUT)
            assert button.status_code == 200, (email, button.status_code, button.text)
            response = http.post(link, data={"csrf_token": csrf_token(button.text)},
                                 allow_redirects=False, timeout=HTTP_TIMEOUT)
            assert response.status_code == 302, (email, response.status_code, response.text)
            page = http.get(self.url(path), timeout=HTTP_TIMEOUT)
            assert page.status_code == 200, (email, path, page.status_code)
            return email, SignedIn(email, http, csrf_token(page.text))

        with ThreadPoolExecutor(threads) as pool:
            return dict(pool.map(one, emails))

    def close_browsers(self) -> None:
        while self.browsers:
            self.browsers.pop().close()

    def stop_all(self) -> None:
        self.close_browsers()
        super().stop_all()


def _claim_redis_database() -> tuple[str, object]:
    """A Redis database 1..15 that is empty, marked as ours so a parallel run picks another."""
    import redis

    token = uuid.uuid4().hex
    for number in random.sample(range(1, 16), 15):
        url = f"{REDIS_URL}/{number}"
        client = redis.Redis.from_url(url)
        if client.dbsize() == 0 and client.set(REDIS_OWNER_KEY, token, nx=True):
            return url, client
        client.close()
    service_missing("Redis", f"no empty database 1..15 at {REDIS_URL}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def mail_catcher() -> Iterator[SmtpServer]:
    catcher = SmtpServer().start()
    yield catcher
    catcher.stop()


def require_stack_services(redis: bool = True) -> None:
    """PostgreSQL (and the shared Redis, if asked) answer, and the project's binaries exist."""
    checks = [("PostgreSQL", postgres_available)] + ([("Redis", redis_available)] if redis else [])
    for what, probe in checks:
        why = probe()
        if why:
            service_missing(what, why)
    if why := commands_missing():
        pytest.fail(f"{why}: run `make test` (it installs the project)")


@contextlib.contextmanager
def running_stack(mail: SmtpServer, tmp: Path, *, broker_url: str,
                  settings: dict[str, str] | None = None, web_workers: int = 2,
                  workers: Iterable[tuple[str, int]] = ()) -> Iterator[Stack]:
    """A fresh PostgreSQL database, the settings, gunicorn answering, and the named Celery
    workers (name, concurrency) ready; everything stopped and dropped on exit.

    The schema and data are left to the test (through the real CLI): the processes don't touch
    the database until they get work.
    """
    db_url = create_pg_database()  # postgresql+psycopg://...
    port = free_port()
    env = product_env(database_url=db_url, broker_url=broker_url, smtp_port=mail.port,
                      base_url=f"http://127.0.0.1:{port}",
                      mail_from="Wellness Perks <perks@example.com>", workdir=tmp,
                      blocked=APP_SETTINGS) | {
        "MAIL_RETRY_BASE_SECONDS": "1",
        # Backoff 1, 2, 4, 8, 16 s: a refusing server is outlasted (~30 s) on a loaded machine.
        "MAIL_RETRY_WINDOW_SECONDS": "31",  # waits of 1, 2, 4, 8, 16 s: six attempts
    } | (settings or {})
    st = Stack(env=env, tmp=tmp, base_url=env["BASE_URL"], database_url=db_url, mail=mail)
    try:
        web = st.start_gunicorn(port, "-w", str(web_workers))
        started = [st.start_worker(name, concurrency, wait=False) for name, concurrency in workers]
        wait_http(web, st.url("/login"), timeout=30)
        for worker in started:
            st.wait_worker_ready(worker, timeout=60)
        yield st
    finally:
        st.stop_all()
        if st.engine is not None:
            st.engine.dispose()
        drop_pg_database(db_url)


@pytest.fixture(scope="module")
def stack(mail_catcher, tmp_path_factory) -> Iterator[Stack]:
    """PostgreSQL database + Redis database + settings; gunicorn, the Celery worker and beat
    running."""
    require_stack_services()
    broker_url, redis_client = _claim_redis_database()
    try:
        # Beat runs the sweeper every second: it sends the mails whose retry is due.
        with running_stack(mail_catcher, tmp_path_factory.mktemp("e2e"),
                           broker_url=broker_url,
                           settings={"SWEEP_INTERVAL_SECONDS": "1"}) as st:
            # Node celery@host, the name `celery -A worker worker` takes by default.
            worker = st.start_worker("celery", 2, wait=False)
            wait_for(lambda: worker.ensure_running() or _worker_pings(st.env), timeout=30,
                     interval=0.2, what="the Celery worker to answer `celery inspect ping`")
            st.start_beat()
            yield st
    finally:
        _release_redis(redis_client)


def _release_redis(client) -> None:
    client.flushdb()  # it was empty when we took it: everything in it is ours
    client.close()


def _worker_pings(env: dict[str, str]) -> bool:
    result = subprocess.run([str(BIN / "celery"), "-A", "worker", "inspect", "ping",
                             "--timeout", "1"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and "pong" in result.stdout


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the last lines of each process's output."""
    report = yield
    if report.failed:
        stacks = {id(v): v for v in getattr(item, "funcargs", {}).values()
                  if isinstance(v, Stack)}
        for st in stacks.values():
            for name, text in st.log_tails().items():
                report.sections.append((f"{name} output (last {TAIL_LINES} lines)", text))
    return report
