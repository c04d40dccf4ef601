"""Process fixtures for the end-to-end tests: a fresh PostgreSQL database, a Redis database of
the test's own, an SMTP server in the test process, and the real ``gunicorn`` and ``celery``
processes started with the exact commands an operator runs, all configured by environment.

Every process gets its own process group, is terminated (then killed after a deadline) on
teardown, and writes its output to a file whose tail is attached to the report of a failed test.

``running_stack`` builds such a stack for any broker (the shared Redis, or a private
``redis-server`` the test may stop and restart: ``RedisServer``), with any number of named
workers; ``Stack.sign_in`` signs many creators in at once with tokens minted as the app mints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import IO

import pytest
import requests
import sqlalchemy as sa

from tests.helpers import (
    REDIS_URL,
    MailCatcher,
    create_pg_database,
    csrf_token,
    drop_pg_database,
    free_port,
    postgres_available,
    redis_available,
    service_missing,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
# Settings the app reads (config.py): none leaks into the processes from the caller's environment.
APP_SETTINGS = (
    "INSTANCE_PATH", "PORT", "SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "BASE_URL",
    "SMTP_HOST", "SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_STARTTLS", "SMTP_SSL",
    "SMTP_TIMEOUT", "MAIL_FROM", "MAIL_MAX_ATTEMPTS", "MAIL_RETRY_BASE_SECONDS", "OUTBOX_DIR",
    "HELP_EMAIL", "LOGIN_TOKEN_MAX_AGE", "LOG_LEVEL", "ALLOCATION_BATCH_SIZE",
    "SWEEP_INTERVAL_SECONDS", "SWEEP_PENDING_AFTER_SECONDS", "MAIL_SENDING_TIMEOUT_SECONDS",
)
SIGN_IN_SALT = "wellness-perks.sign-in"  # wellness_perks.services.auth
HTTP_TIMEOUT = 30
REDIS_OWNER_KEY = "wellness-perks-e2e:owner"
TAIL_LINES = 60


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.exists():
        return "(no output file)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty)"


@dataclass
class SmtpServer(MailCatcher):
    """The MailCatcher, able to answer the next few messages (or every message, for a while)
    with a temporary refusal, and to take its time over each message it accepts."""

    refuse_count: int = 0
    refuse_reply: str = "451 4.3.0 try again later"
    accept_delay: float = 0.0  # seconds spent on each accepted DATA (a slow mail server)

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

    async def handle_DATA(self, server, session, envelope):
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
class RedisServer:
    """A private ``redis-server`` (no persistence) on a free port: a broker a test may kill and
    restart on the same port, without touching the shared Redis."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @staticmethod
    def binary() -> str | None:
        return shutil.which("redis-server")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"redis-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        wait_for(self._pong, timeout=15, interval=0.05, what=f"redis-server on {self.port}")
        return self

    def _pong(self) -> bool:
        if not self.running:
            pytest.fail(f"redis-server on port {self.port} exited with {self.proc.returncode}:\n"
                        f"{tail(self.workdir / f'redis-{self.starts}.log')}")
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            return client.ping()
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the broker is gone, with every message it held (nothing is persisted)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Service:
    """A long-running process of ours: started in its own process group, output to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = None

    def start(self) -> Service:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def ensure_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with status {self.proc.returncode}; its output:\n"
                        f"{tail(self.log_path)}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful: the task in hand is finished), then SIGKILL to the group."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._kill_group()
                    self.proc.wait(5)
            # Children the main process left behind (its group is ours alone).
            self._kill_group()
        finally:
            if self._log:
                self._log.close()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the whole process group at once (a Celery worker and its pool children):
        no warm shutdown, no message given back, transactions cut off mid-way."""
        self._kill_group()
        self.proc.wait(10)
        if self._log:
            self._log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class SignedIn:
    """A creator's browser: signed in, with a CSRF token of its session."""

    email: str
    http: requests.Session
    csrf_token: str


@dataclass
class Stack:
    """The deployment under test: its settings, its processes and the SMTP server it mails to."""

    env: dict[str, str]
    base_url: str
    database_url: str  # for the test's own read-only checks
    mail: SmtpServer
    tmp: Path
    services: dict[str, Service] = field(default_factory=dict)
    engine: sa.Engine | None = None
    broker: RedisServer | None = None  # when the stack has a private broker
    browsers: list[requests.Session] = field(default_factory=list)  # closed by close_browsers

    def url(self, path: str) -> str:
        return self.base_url + path

    def cli(self, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``wellness-perks ARGS`` as an operator would (``env`` overrides settings for this
        run); fail the test if it fails, unless ``check`` is false."""
        result = subprocess.run([str(BIN / "wellness-perks"), *args], cwd=ROOT,
                                env=self.env | (env or {}), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            pytest.fail(f"wellness-perks {' '.join(args)} exited with {result.returncode}:\n"
                        f"{result.stdout}\n{result.stderr}")
        return result

    def quota(self, slug: str) -> dict:
        return json.loads(self.cli("quota", slug, "--json").stdout)

    def db(self) -> sa.Connection:
        if self.engine is None:
            self.engine = sa.create_engine(self.database_url)
        return self.engine.connect()

    def start(self, name: str, argv: list[str]) -> Service:
        if name in self.services and self.services[name].running:
            raise ValueError(f"a service named {name} is running already")
        service = Service(name, argv, self.env, self.tmp / f"{name}.log").start()
        self.services[name] = service
        return service

    def start_worker(self, name: str, concurrency: int = 1, wait: bool = True) -> Service:
        """``celery -A worker worker -c N -n NAME@%h``: one more worker process, on every
        queue; waits until it is consuming (its log says ready)."""
        worker = self.start(name, [str(BIN / "celery"), "-A", "worker", "worker",
                                   "-c", str(concurrency), "-n", f"{name}@%h",
                                   "--loglevel", "INFO"])
        if wait:
            wait_for(lambda: worker.ensure_running() or f"{name}@" in (text := worker.output())
                     and " ready." in text, timeout=60, interval=0.1,
                     what=f"the Celery worker {name} to be ready")
        return worker

    def workers(self) -> list[Service]:
        return [s for s in self.services.values()
                if s.running and s.argv[1:4] == ["-A", "worker", "worker"]]

    def sign_in(self, emails: Iterable[str], path: str = "/",
                threads: int = 16) -> dict[str, SignedIn]:
        """A signed-in browser per creator, each having fetched ``path`` once (so it holds a
        CSRF token). The sign-in link is minted as the app mints it (the test knows SECRET_KEY)
        instead of mailed, and used through ``GET /login/<token>``."""
        from itsdangerous import URLSafeTimedSerializer

        emails = list(emails)
        with self.db() as conn:
            rows = {email: (creator_id, nonce) for email, creator_id, nonce in conn.execute(
                sa.text("SELECT email, id, login_nonce FROM creator WHERE email = ANY(:emails)"),
                {"emails": emails})}
        missing = sorted(set(emails) - rows.keys())
        assert not missing, f"not imported: {missing[:5]}"
        serializer = URLSafeTimedSerializer(self.env["SECRET_KEY"], salt=SIGN_IN_SALT)

        def one(email: str) -> tuple[str, SignedIn]:
            creator_id, nonce = rows[email]
            http = requests.Session()
            self.browsers.append(http)
            token = serializer.dumps({"c": creator_id, "n": nonce})
            response = http.get(self.url(f"/login/{token}"), allow_redirects=False,
                                timeout=HTTP_TIMEOUT)
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
        for service in reversed(list(self.services.values())):
            service.stop()

    def log_tails(self) -> dict[str, str]:
        return {name: tail(s.log_path) for name, s in self.services.items()}


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
    for binary in ("wellness-perks", "gunicorn", "celery"):
        if not (BIN / binary).exists():
            pytest.fail(f"{BIN / binary} is missing: run `make test` (it installs the project)")


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
    env = {k: v for k, v in os.environ.items() if k not in APP_SETTINGS}
    env.update({
        # The plain form an operator (or a PaaS) hands out: the app must accept it.
        "DATABASE_URL": "postgresql://" + db_url.split("://", 1)[1],
        "CELERY_BROKER_URL": broker_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mail.port),
        "MAIL_FROM": "Wellness Perks <perks@example.com>",
        "BASE_URL": f"http://127.0.0.1:{port}",
        "SECRET_KEY": uuid.uuid4().hex,
        "INSTANCE_PATH": str(tmp / "instance"),
        "MAIL_RETRY_BASE_SECONDS": "1",
        # Backoff 1, 2, 4, 8, 16 s: a refusing server is outlasted (~30 s) on a loaded machine.
        "MAIL_MAX_ATTEMPTS": "6",
        "PYTHONUNBUFFERED": "1",
        # gunicorn keeps its control socket under ~/.gunicorn: keep it out of the real home.
        "HOME": str(tmp / "home"),
    } | (settings or {}))
    (tmp / "home").mkdir(exist_ok=True)
    st = Stack(env=env, base_url=env["BASE_URL"], database_url=db_url, mail=mail, tmp=tmp)
    try:
        web = st.start("gunicorn", [str(BIN / "gunicorn"), "wellness_perks:create_app()",
                                    "-b", f"127.0.0.1:{port}", "-w", str(web_workers)])
        started = [st.start_worker(name, concurrency, wait=False) for name, concurrency in workers]
        wait_for(lambda: web.ensure_running() or _answers(st.url("/login")), timeout=30,
                 interval=0.2, what="gunicorn to answer GET /login")
        for worker in started:
            wait_for(lambda w=worker: w.ensure_running() or " ready." in w.output(), timeout=60,
                     interval=0.1, what=f"the Celery worker {worker.name} to be ready")
        yield st
    finally:
        st.stop_all()
        if st.engine is not None:
            st.engine.dispose()
        drop_pg_database(db_url)


@pytest.fixture(scope="module")
def stack(mail_catcher, tmp_path_factory) -> Iterator[Stack]:
    """PostgreSQL database + Redis database + settings; gunicorn and the Celery worker running."""
    require_stack_services()
    broker_url, redis_client = _claim_redis_database()
    try:
        with running_stack(mail_catcher, tmp_path_factory.mktemp("e2e"),
                           broker_url=broker_url) as st:
            worker = st.start("celery", [str(BIN / "celery"), "-A", "worker", "worker",
                                         "-c", "2", "--loglevel", "INFO"])
            wait_for(lambda: worker.ensure_running() or _worker_pings(st.env), timeout=30,
                     interval=0.2, what="the Celery worker to answer `celery inspect ping`")
            yield st
    finally:
        _release_redis(redis_client)


def _release_redis(client) -> None:
    client.flushdb()  # it was empty when we took it: everything in it is ours
    client.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet, or no worker booted to answer
        return False


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
