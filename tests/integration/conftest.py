"""Process fixtures for the end-to-end tests: a fresh PostgreSQL database, a Redis database of
the test's own, an SMTP server in the test process, and the real ``gunicorn`` and ``celery``
processes started with the exact commands an operator runs, all configured by environment.

Every process gets its own process group, is terminated (then killed after a deadline) on
teardown, and writes its output to a file whose tail is attached to the report of a failed test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import requests
import sqlalchemy as sa

from tests.helpers import (
    REDIS_URL,
    MailCatcher,
    create_pg_database,
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
    "HELP_EMAIL", "LOGIN_TOKEN_MAX_AGE", "LOG_LEVEL",
)
REDIS_OWNER_KEY = "wellness-perks-e2e:owner"
TAIL_LINES = 60


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.exists():
        return "(no output file)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty)"


@dataclass
class SmtpServer(MailCatcher):
    """The MailCatcher, able to answer the next few messages with a temporary refusal."""

    refuse_count: int = 0
    refuse_reply: str = "451 4.3.0 try again later"

    def refuse_next(self, count: int) -> None:
        with self._lock:
            self.refuse_count = count

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            refuse = self.refuse_count > 0
            if refuse:
                self.refuse_count -= 1
                self.refused += 1
        if refuse:
            return self.refuse_reply
        return await super().handle_DATA(server, session, envelope)


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

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


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

    def url(self, path: str) -> str:
        return self.base_url + path

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``wellness-perks ARGS`` as an operator would; fail the test if it fails."""
        result = subprocess.run([str(BIN / "wellness-perks"), *args], cwd=ROOT, env=self.env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
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
        service = Service(name, argv, self.env, self.tmp / f"{name}.log").start()
        self.services[name] = service
        return service

    def stop_all(self) -> None:
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


@pytest.fixture(scope="module")
def stack(mail_catcher, tmp_path_factory) -> Iterator[Stack]:
    """PostgreSQL database + Redis database + settings; gunicorn and the Celery worker running.

    The schema and data are left to the test (through the real CLI): the processes don't touch
    the database until they get work.
    """
    for what, why in (("PostgreSQL", postgres_available()), ("Redis", redis_available())):
        if why:
            service_missing(what, why)
    for binary in ("wellness-perks", "gunicorn", "celery"):
        if not (BIN / binary).exists():
            pytest.fail(f"{BIN / binary} is missing: run `make test` (it installs the project)")

    tmp = tmp_path_factory.mktemp("e2e")
    broker_url, redis_client = _claim_redis_database()
    try:
        db_url = create_pg_database()  # postgresql+psycopg://...
    except BaseException:
        _release_redis(redis_client)
        raise
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in APP_SETTINGS}
    env.update({
        # The plain form an operator (or a PaaS) hands out: the app must accept it.
        "DATABASE_URL": "postgresql://" + db_url.split("://", 1)[1],
        "CELERY_BROKER_URL": broker_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mail_catcher.port),
        "MAIL_FROM": "Wellness Perks <perks@example.com>",
        "BASE_URL": f"http://127.0.0.1:{port}",
        "SECRET_KEY": uuid.uuid4().hex,
        "INSTANCE_PATH": str(tmp / "instance"),
        "MAIL_RETRY_BASE_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
        # gunicorn keeps its control socket under ~/.gunicorn: keep it out of the real home.
        "HOME": str(tmp / "home"),
    })
    (tmp / "home").mkdir()
    st = Stack(env=env, base_url=env["BASE_URL"], database_url=db_url, mail=mail_catcher, tmp=tmp)
    try:
        web = st.start("gunicorn", [str(BIN / "gunicorn"), "wellness_perks:create_app()",
                                    "-b", f"127.0.0.1:{port}", "-w", "2"])
        worker = st.start("celery", [str(BIN / "celery"), "-A", "worker", "worker", "-c", "2",
                                     "--loglevel", "INFO"])
        wait_for(lambda: web.ensure_running() or _answers(st.url("/login")), timeout=30,
                 interval=0.2, what="gunicorn to answer GET /login")
        wait_for(lambda: worker.ensure_running() or _worker_pings(env), timeout=30,
                 interval=0.2, what="the Celery worker to answer `celery inspect ping`")
        yield st
    finally:
        st.stop_all()
        if st.engine is not None:
            st.engine.dispose()
        drop_pg_database(db_url)
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
    st = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(st, Stack):
        for name, text in st.log_tails().items():
            report.sections.append((f"{name} output (last {TAIL_LINES} lines)", text))
    return report
