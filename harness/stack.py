"""The product's processes for a run, started with the commands an operator runs, and the
environment they all get."""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.codes import new_code_key
from harness.commands import BIN
from harness.errors import HarnessError
from harness.postgres import plain_url
from harness.process import TAIL_LINES, Service, tail
from harness.waiting import wait_for

WEB_APP = "wellness_perks:create_app()"  # gunicorn's app argument, as the README deploys it
WORKER_COMMAND = ["-A", "worker", "worker"]  # after the celery binary


def product_env(*, database_url: str, broker_url: str, smtp_port: int, base_url: str,
                mail_from: str, workdir: Path, blocked: Iterable[str] = ()) -> dict[str, str]:
    """The environment of every product process: the caller's, less ``blocked``, with the
    settings that point the product at this run's services (config.py reads them).

    The database URL is handed over in the plain ``postgresql://`` form an operator (or a PaaS)
    is given: the app must accept it. The instance folder and HOME are under ``workdir``
    (gunicorn keeps a control socket under ~/.gunicorn: not in the real home).
    """
    own = {
        "DATABASE_URL": plain_url(database_url),
        "CELERY_BROKER_URL": broker_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "MAIL_FROM": mail_from,
        "BASE_URL": base_url,
        "SECRET_KEY": secrets.token_hex(32),
        "CODE_ENCRYPTION_KEY": new_code_key(),
        "INSTANCE_PATH": str(workdir / "instance"),
        "PYTHONUNBUFFERED": "1",
        "HOME": str(workdir / "home"),
    }
    dropped = set(blocked) | own.keys()
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(own)
    for folder in ("instance", "home"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    return env


def wait_http(service: Service, url: str, timeout: float = 60) -> None:
    """Until ``service`` answers GET ``url`` with anything but a server error; HarnessError if
    it exits first, or at the deadline."""
    def answers() -> bool:
        service.ensure_running()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:  # not listening yet
            return False

    wait_for(answers, timeout=timeout, interval=0.2, what=f"{service.name} to answer {url}")


@dataclass(kw_only=True)
class Stack:
    """The product's processes of a run, by name, each a ``Service`` writing to
    ``<tmp>/<name>.log``, all with the environment ``env``."""

    env: dict[str, str]
    tmp: Path
    services: dict[str, Service] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> Service:
        if name in self.services and self.services[name].running:
            raise HarnessError(f"a service named {name} is running already")
        service = Service(name, argv, self.env, self.tmp / f"{name}.log").start()
        self.services[name] = service
        return service

    def start_gunicorn(self, port: int, *options: str, name: str = "gunicorn",
                       app: str = WEB_APP) -> Service:
        """``gunicorn APP -b 127.0.0.1:PORT OPTIONS``; wait for it with ``wait_http``."""
        return self.start(name, [str(BIN / "gunicorn"), app, "-b", f"127.0.0.1:{port}",
                                 *options])

    def start_worker(self, name: str, concurrency: int = 1, *, queues: str = "",
                     loglevel: str = "INFO", wait: bool = True) -> Service:
        """``celery -A worker worker -c N -n NAME@%h``, on every queue unless ``queues`` (a
        comma-separated ``-Q``) is given; with ``wait``, returns once it is consuming."""
        argv = [str(BIN / "celery"), *WORKER_COMMAND, "-c", str(concurrency),
                "-n", f"{name}@%h", "--loglevel", loglevel]
        if queues:
            argv += ["-Q", queues]
        worker = self.start(name, argv)
        if wait:
            self.wait_worker_ready(worker)
        return worker

    def wait_worker_ready(self, worker: Service, timeout: float = 90) -> None:
        """Until the worker's log says it is ready (``NAME@host ready.``: connected to the
        broker, consuming); HarnessError if it exits first, or at the deadline."""
        def ready() -> bool:
            worker.ensure_running()
            text = worker.output()
            return f"{worker.name}@" in text and " ready." in text

        wait_for(ready, timeout=timeout, interval=0.1,
                 what=f"the Celery worker {worker.name} to be ready")

    def start_beat(self, loglevel: str = "INFO") -> Service:
        """``celery -A worker beat``, its schedule file in ``tmp``."""
        return self.start("beat", [str(BIN / "celery"), "-A", "worker", "beat",
                                   "--loglevel", loglevel,
                                   "-s", str(self.tmp / "celerybeat-schedule")])

    def workers(self) -> list[Service]:
        """The Celery workers that are running."""
        return [s for s in self.services.values()
                if s.running and s.argv[1:1 + len(WORKER_COMMAND)] == WORKER_COMMAND]

    def stop(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service:
            service.stop()

    def stop_all(self) -> None:
        """Stop every service, the last started first; they stay listed, so their output can
        still be reported. One that fails to stop does not keep the others running: the first
        such error is raised once all were tried."""
        errors = []
        for service in reversed(list(self.services.values())):
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def log_tails(self, lines: int = TAIL_LINES) -> dict[str, str]:
        return {name: tail(s.log_path, lines) for name, s in self.services.items()}
