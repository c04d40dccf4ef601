"""One benchmark run: the services (database, private Redis, SMTP sink), the product's
processes, the load generator, signing creators in, checks, and cleanup that always runs
(Ctrl-C, SIGTERM or failure alike). The processes and services are the harness's."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from harness.broker import RedisServer
from harness.commands import commands_missing, run_cli
from harness.errors import HarnessError
from harness.ports import free_port
from harness.postgres import connect
from harness.stack import Stack, product_env, wait_http
from harness.tokens import mint_sign_in_token

from .common import (
    DROPPED_SETTINGS,
    POSTGRES,
    ProcessWatch,
    Progress,
    StackSettings,
    busy_processes,
    celery_control,
    git_info,
    machine_busy_now,
    machine_info,
    postmaster_pid,
    say,
    terminate_on_sigterm,
    tuning_settings,
    utc_now,
    write_results,
)
from .load import LoadGenerator
from .smtp_sink import SmtpSink

QUIET_BUSY = 0.25  # a machine busier than this before a measurement is reported
COUNTRIES = ("PK", "IN", "BR", "NG", "US", "GB", "ID", "EG")
REDEEM_URL = "https://app.example/redeem?code={code}"


def add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", "-c", type=int, default=64,
                   help="concurrent HTTP connections of the load generator (default 64)")
    p.add_argument("--load-processes", type=int, default=2,
                   help="load generator processes (default 2)")
    # gthread: a process per core, and threads for the waits on PostgreSQL and Redis
    # (bench/README.md compares the worker classes).
    p.add_argument("--web-workers", type=int, default=2, help="gunicorn -w (default 2)")
    p.add_argument("--web-worker-class", default="gthread",
                   help="gunicorn -k (default gthread)")
    p.add_argument("--web-threads", type=int, default=8,
                   help="gunicorn --threads, with -k gthread (default 8)")
    p.add_argument("--celery-workers", type=int, default=2,
                   help="celery worker processes, each on every queue (default 2)")
    p.add_argument("--celery-concurrency", type=int, default=2,
                   help="celery worker -c: pool processes of each (default 2)")
    p.add_argument("--celery-loglevel", default="INFO")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before measuring, wait up to this long for the machine's CPU to be "
                        "quiet (other processes' load skews every figure; default 0)")
    p.add_argument("--keep", action="store_true",
                   help="keep the run's directory (process logs) even when it passes")
    p.add_argument("--name", default=None, help="results file name, without .json")


def write_creators(path: Path, prefix: str, start: int, count: int) -> None:
    """An eligibility list: ``count`` creators ``<prefix><number>@example.com``."""
    with path.open("w") as fh:
        fh.write("handle,email,country,name\n")
        for i in range(start, start + count):
            fh.write(f"@{prefix}{i:07d},{prefix}{i:07d}@example.com,"
                     f"{COUNTRIES[i % len(COUNTRIES)]},Bench Creator {i}\n")


def write_codes(path: Path, letter: str, start: int, count: int) -> None:
    """``count`` codes ``WP<letter><number>-<8 hex>``, one a line (number from ``start``)."""
    import secrets

    with path.open("w") as fh:
        for i in range(start, start + count):
            fh.write(f"WP{letter}{i:07d}-{secrets.token_hex(4).upper()}\n")


class BenchRun:
    """A run: subclasses give its ``body``, ``report`` and results name."""

    kind = "bench"

    def __init__(self, args: argparse.Namespace, *, beat: bool = True,
                 celery_queues: str = "") -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix=f"wp-{self.kind}-"))
        self.results: dict = {"kind": self.kind, "started_at": utc_now(), "git": git_info()}
        self.checks: list[dict] = []
        self.db_url: str | None = None
        self.redis: RedisServer | None = None
        self.sink: SmtpSink | None = None
        self.stack: Stack | None = None
        self.load: LoadGenerator | None = None
        self.watch = ProcessWatch(interval=0.5)
        self.settings = StackSettings(
            web_workers=args.web_workers, web_threads=args.web_threads,
            web_worker_class=args.web_worker_class, celery_workers=args.celery_workers,
            celery_concurrency=args.celery_concurrency, celery_loglevel=args.celery_loglevel,
            celery_queues=celery_queues, beat=beat)
        self.failed = False
        self._cleaned = False
        self._closers: list = []

    # -- small things -------------------------------------------------------------------------

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        if not ok:
            say(f"  !! {name}: {detail}")
        return ok

    def cli(self, *args: str, check: bool = True):
        return run_cli(self.env, *args, check=check)

    def quiet_check(self, label: str) -> None:
        """Measure (and with --wait-quiet wait for) a quiet machine before measuring: the load
        seen is recorded, and a busy machine reported with its busiest processes."""
        deadline = time.monotonic() + self.args.wait_quiet
        busy = machine_busy_now(1.0)
        while busy > QUIET_BUSY and time.monotonic() < deadline:
            busy = machine_busy_now(1.0)
        entry: dict = {"busy_pct": round(100 * busy, 1)}
        if busy > QUIET_BUSY:
            hogs = busy_processes(1.0)
            entry["busiest"] = [f"{name} {share:.0%}" for name, share in hogs]
            say(f"  warning: the machine is {busy:.0%} busy before {label} "
                f"({', '.join(entry['busiest']) or 'kernel'}); figures will be low")
        self.results.setdefault("machine_load_before", {})[label] = entry

    # -- services -----------------------------------------------------------------------------

    def preflight(self) -> None:
        if why := commands_missing():
            raise HarnessError(f"{why}: run `make bench` (it installs the project)")
        if why := POSTGRES.why_unavailable():
            raise HarnessError(f"PostgreSQL is not available ({why})")
        if why := RedisServer.why_unavailable():
            raise HarnessError(why)

    def start_services(self) -> None:
        self.db_url = POSTGRES.create_database()
        self.redis = RedisServer(self.tmp / "redis").start()
        self.sink = SmtpSink(free_port())
        self.web_port = free_port()
        self.env = product_env(database_url=self.db_url, broker_url=self.redis.url(0),
                               smtp_port=self.sink.port,
                               base_url=f"http://127.0.0.1:{self.web_port}",
                               mail_from="Wellness Perks <perks@bench.example>",
                               workdir=self.tmp, blocked=DROPPED_SETTINGS)
        self.stack = Stack(env=self.env, tmp=self.tmp)
        self.watch.add("smtp", self.sink.pid)
        self.watch.add("redis", self.redis.service.pid)
        if (pg := postmaster_pid()) is not None:
            self.watch.add("postgres", pg)
        self.watch.add("bench", os.getpid(), tree=False)
        self.watch.start()
        self.results["settings"] = {"stack": self.settings.as_dict(),
                                    "product_env": tuning_settings(self.env)}

    def start_product(self) -> None:
        s = self.settings
        say(f"starting the product: gunicorn {' '.join(s.gunicorn_args())}, "
            f"{s.celery_workers} celery worker(s) -c {s.celery_concurrency}"
            + (f" -Q {s.celery_queues}" if s.celery_queues else "")
            + (", beat" if s.beat else ""))
        web = self.stack.start_gunicorn(self.web_port, *s.gunicorn_args())
        workers = [self.stack.start_worker(f"worker{n}", s.celery_concurrency,
                                           queues=s.celery_queues, loglevel=s.celery_loglevel,
                                           wait=False)
                   for n in range(1, s.celery_workers + 1)]
        if s.beat:
            self.watch.add("beat", self.stack.start_beat().pid)
        wait_http(web, f"http://127.0.0.1:{self.web_port}/login")
        for worker in workers:
            self.stack.wait_worker_ready(worker)
        self.workers = workers
        self.watch.add("web", web.pid)
        for w in workers:
            self.watch.add("worker", w.pid)
        self.control = celery_control(self.redis.url(0))
        self.load = LoadGenerator("127.0.0.1", self.web_port, self.args.load_processes)
        for pid in self.load.pids:
            self.watch.add("load", pid)

    def creators(self, email_like: str = "%") -> list[tuple[int, int]]:
        """(id, login nonce) of the creators whose email is LIKE ``email_like``, by id."""
        with connect(self.db_url) as conn:
            return conn.execute("SELECT id, login_nonce FROM creator WHERE email LIKE %s "
                                "ORDER BY id", (email_like,)).fetchall()

    def sign_in(self, creators: list[tuple[int, int]], page: str) -> dict:
        """Sign each creator in through the real link (``GET /login/<token>``, then its
        button's POST; the token minted as the app mints it) and open ``page`` for the CSRF
        token. Not timed."""
        items = [(cid, mint_sign_in_token(self.env["SECRET_KEY"], cid, nonce))
                 for cid, nonce in creators]
        progress = Progress("sign-in")
        total = len(items)
        started = time.perf_counter()

        def show():
            done, errors = self.load.counts()
            rate = done / max(time.perf_counter() - started, 1e-6)
            progress.show(f"{done:,}/{total:,} creators signed in ({rate:,.0f}/s)"
                          + (f", {errors} errors" if errors else ""))

        say(f"signing {total:,} creators in (GET and POST /login/<token>, GET {page}; not timed)")
        result = self.load.sign_in(items, page, self.args.concurrency, on_poll=show)
        elapsed = time.perf_counter() - started
        progress.done(f"{result['signed_in']:,}/{total:,} signed in in {elapsed:.1f} s")
        if result["signed_in"] != total:
            raise HarnessError(f"only {result['signed_in']} of {total} creators signed in: "
                               f"{result['errors'][:5]}")
        return {"creators": total, "seconds": round(elapsed, 2),
                "per_s": round(total / elapsed, 1)}

    # -- the run ------------------------------------------------------------------------------

    def body(self) -> None:
        raise NotImplementedError

    def report(self) -> None:
        raise NotImplementedError

    def results_name(self) -> str:
        raise NotImplementedError

    def run(self) -> int:
        started = time.perf_counter()
        try:
            self.preflight()
            self.results["machine"] = machine_info()
            self.body()
        except HarnessError as exc:
            self.failed = True
            self.check("the benchmark ran to the end", False, str(exc))
        except KeyboardInterrupt:
            say("\ninterrupted: stopping everything")
            self.cleanup()
            return 130
        except Exception as exc:  # noqa: BLE001 - a failed run, reported, then cleaned up
            self.failed = True
            self.check("the benchmark ran to the end", False,
                       f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        finally:
            self.results["run_seconds"] = round(time.perf_counter() - started, 1)
        ok = all(c["ok"] for c in self.checks) and not self.failed
        self.results["checks"] = self.checks
        self.results["ok"] = ok
        try:
            self.report()
            path = write_results(self.args.name or self.results_name(), self.results)
            say(f"results written to {path}")
        finally:
            self.cleanup(keep=self.args.keep or not ok)
        return 0 if ok else 1

    def cleanup(self, keep: bool = False) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        steps = [lambda: self.watch.stop(), lambda: self.load and self.load.close()]
        steps += self._closers
        steps += [lambda: self.stack and self.stack.stop_all(),
                  lambda: self.sink and self.sink.close(),
                  lambda: self.redis and self.redis.stop(),
                  lambda: self.db_url and POSTGRES.drop_database(self.db_url)]
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest anyway
                say(f"  (cleanup: {type(exc).__name__}: {exc})")
        if keep:
            say(f"process logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @classmethod
    def main(cls, args: argparse.Namespace) -> int:
        with terminate_on_sigterm():
            bench = cls(args)
            try:
                return bench.run()
            except KeyboardInterrupt:
                return 130
            finally:
                bench.cleanup()
