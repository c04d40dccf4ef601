"""What both benchmark runs share: services, the product's processes, the database, progress
lines, process statistics from /proc, machine facts and the results file.

Nothing here imports the product: it is run through its commands and its HTTP endpoints.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
RESULTS_DIR = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SIGN_IN_SALT = "wellness-perks.sign-in"  # how the app signs sign-in links (services/auth.py)

# Settings the bench decides for every product process (config.py reads them). Whatever else the
# caller's environment holds (LOG_LEVEL, ALLOCATION_BATCH_SIZE, MAIL_RATE_LIMIT, ...) passes
# through, and is recorded in the results.
OWN_SETTINGS = ("DATABASE_URL", "CELERY_BROKER_URL", "SMTP_HOST", "SMTP_PORT", "BASE_URL",
                "SECRET_KEY", "INSTANCE_PATH", "MAIL_FROM", "PORT")
# Settings that would point the processes elsewhere, or fail against the bench's SMTP sink.
DROPPED_SETTINGS = ("SMTP_USER", "SMTP_PASSWORD", "SMTP_STARTTLS", "SMTP_SSL", "OUTBOX_DIR")
# Tuning settings worth recording when set (config.py's, and those being added).
TUNING_SETTINGS = ("LOG_LEVEL", "DATABASE_POOL_SIZE", "ALLOCATION_BATCH_SIZE", "MAIL_RATE_LIMIT",
                   "MAIL_CONNECTIONS", "MAIL_BATCH_SIZE",
                   "SMTP_TIMEOUT", "MAIL_MAX_ATTEMPTS", "MAIL_RETRY_BASE_SECONDS",
                   "SWEEP_INTERVAL_SECONDS", "SWEEP_PENDING_AFTER_SECONDS",
                   "MAIL_SENDING_TIMEOUT_SECONDS", "BROKER_RETRY_AFTER_SECONDS", "WORKER_NICENESS")


class BenchError(RuntimeError):
    """The benchmark could not run (a service missing, a process that died, a timeout)."""


# --------------------------------------------------------------------------- output


_TTY = sys.stdout.isatty()
_status_shown = False


def say(message: str = "") -> None:
    """A line of output (ends a progress line shown before it)."""
    global _status_shown
    if _status_shown:
        sys.stdout.write("\n")
        _status_shown = False
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class Progress:
    """A progress line, rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, label: str, every: float = 0.5, log_every: float = 5.0) -> None:
        self.label = label
        self.every = every if _TTY else log_every
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        global _status_shown
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        line = f"  [{self.label}] {text}"
        if _TTY:
            sys.stdout.write("\r\x1b[2K" + line)
            _status_shown = True
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def done(self, text: str) -> None:
        self.show(text, force=True)
        say()


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.1, on_poll: Callable[[], None] | None = None):
    """Poll ``predicate`` until it returns something truthy; BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if on_poll:
            on_poll()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quantiles(values: list[float], points=(0.5, 0.95, 0.99)) -> dict[str, float | None]:
    """Nearest-rank percentiles (p50, p95, p99) of ``values``."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in points:
        key = f"p{round(p * 100)}"
        if not ordered:
            out[key] = None
            continue
        rank = max(1, int(-(-p * len(ordered) // 1)))  # ceil(p * n)
        out[key] = ordered[min(rank, len(ordered)) - 1]
    out["max"] = ordered[-1] if ordered else None
    out["mean"] = sum(ordered) / len(ordered) if ordered else None
    return out


# --------------------------------------------------------------------------- PostgreSQL


def pg_connect(url: str, autocommit: bool = True):
    import psycopg

    return psycopg.connect(plain_pg_url(url), autocommit=autocommit, connect_timeout=5)


def plain_pg_url(url: str) -> str:
    """``postgresql+psycopg://`` -> ``postgresql://`` (what libpq takes)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def create_database(prefix: str = "wp_bench") -> str:
    """A fresh, empty database; returns its URL (``postgresql://``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with pg_connect(PG_ADMIN_URL) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with pg_connect(PG_ADMIN_URL) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def check_postgres() -> str:
    try:
        with pg_connect(PG_ADMIN_URL) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # noqa: BLE001
        raise BenchError(f"PostgreSQL does not answer at {PG_ADMIN_URL}: {exc}") from exc


def postmaster_pid() -> int | None:
    """The PostgreSQL server's main process (its backends are its children)."""
    try:
        with pg_connect(PG_ADMIN_URL) as conn:
            data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        return int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    except Exception:  # noqa: BLE001 - not readable (another user's data dir): try /proc
        table = _process_table()
        for pid, (comm, ppid) in table.items():
            if comm == "postgres" and table.get(ppid, ("",))[0] != "postgres":
                return pid
    return None


# --------------------------------------------------------------------------- processes


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no output)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty)"


@dataclass
class Service:
    """A long-running process: its own session (process group), output to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = ROOT
    proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = None

    def start(self) -> Service:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> None:
        if not self.running:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}; its "
                             f"output ({self.log_path}):\n{tail(self.log_path)}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a graceful stop), SIGKILL to the whole group after ``timeout``."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group is ours alone
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        finally:
            if self._log:
                self._log.close()
                self._log = None


@dataclass
class RedisServer:
    """A private ``redis-server`` (no persistence) on a free port: the broker of one run."""

    workdir: Path
    port: int = field(default_factory=free_port)
    service: Service | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not on PATH (the benchmark starts a private one)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.service = Service("redis", [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no",
                                         "--dir", str(self.workdir)],
                               dict(os.environ), self.workdir / "redis.log",
                               cwd=self.workdir).start()
        wait_for(self._pong, timeout=15, interval=0.05, what=f"redis-server on {self.port}")
        return self

    def _pong(self) -> bool:
        self.service.ensure_running()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.service:
            self.service.stop(5)


def product_env(*, database_url: str, broker_url: str, smtp_port: int, base_url: str,
                instance: Path, home: Path) -> dict[str, str]:
    """The environment of every product process: the caller's, with the bench's own settings."""
    env = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS + DROPPED_SETTINGS}
    env.update({
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "MAIL_FROM": "Wellness Perks <perks@bench.example>",
        "BASE_URL": base_url,
        "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
        "INSTANCE_PATH": str(instance),
        "PYTHONUNBUFFERED": "1",
        # gunicorn keeps a control socket under ~/.gunicorn: keep it in the run's directory.
        "HOME": str(home),
    })
    instance.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    return env


def tuning_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in TUNING_SETTINGS if env.get(k)}


@dataclass
class CliResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_kb: int
    cpu_seconds: float

    def json(self):
        return json.loads(self.stdout)


def run_cli(env: dict[str, str], *args: str, check: bool = True,
            timeout: float = 1800) -> CliResult:
    """``wellness-perks ARGS`` as an operator runs it; its wall time, peak RSS and CPU."""
    argv = [str(BIN / "wellness-perks"), *args]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    box: dict[str, str] = {}

    def drain(name, stream):
        box[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise BenchError(f"wellness-perks {' '.join(args)} took over {timeout:.0f} s")
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(10)
    result = CliResult(argv, proc.returncode, box.get("out", ""), box.get("err", ""), seconds,
                       usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
    if check and result.returncode != 0:
        raise BenchError(f"wellness-perks {' '.join(args)} exited with {result.returncode}:\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


@dataclass
class StackSettings:
    web_workers: int = 2
    web_threads: int = 8
    web_worker_class: str = "gthread"
    celery_workers: int = 2
    celery_concurrency: int = 2
    celery_loglevel: str = "INFO"
    celery_queues: str = ""  # empty: every queue (the default of `celery -A worker worker`)
    beat: bool = True

    def gunicorn_args(self) -> list[str]:
        args = ["-w", str(self.web_workers), "-k", self.web_worker_class]
        if self.web_worker_class == "gthread":
            args += ["--threads", str(self.web_threads)]
        return args

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Stack:
    """The product's processes for one run, started with the commands an operator runs."""

    def __init__(self, env: dict[str, str], tmp: Path, settings: StackSettings) -> None:
        self.env = env
        self.tmp = tmp
        self.settings = settings
        self.services: dict[str, Service] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        service = Service(name, argv, env or self.env, self.tmp / f"{name}.log").start()
        self.services[name] = service
        return service

    def start_gunicorn(self, name: str, app: str, port: int,
                       env: dict[str, str] | None = None) -> Service:
        return self.start(name, [str(BIN / "gunicorn"), app, "-b", f"127.0.0.1:{port}",
                                 *self.settings.gunicorn_args()], env)

    def start_workers(self) -> list[Service]:
        workers = []
        for n in range(1, self.settings.celery_workers + 1):
            argv = [str(BIN / "celery"), "-A", "worker", "worker",
                    "-c", str(self.settings.celery_concurrency), "-n", f"bench{n}@%h",
                    "--loglevel", self.settings.celery_loglevel]
            if self.settings.celery_queues:
                argv += ["-Q", self.settings.celery_queues]
            workers.append(self.start(f"worker{n}", argv))
        return workers

    def start_beat(self) -> Service:
        return self.start("beat", [str(BIN / "celery"), "-A", "worker", "beat",
                                   "--loglevel", "INFO",
                                   "-s", str(self.tmp / "celerybeat-schedule")])

    def workers(self) -> list[Service]:
        return [s for n, s in self.services.items() if n.startswith("worker")]

    def wait_workers_ready(self, timeout: float = 90) -> None:
        for worker in self.workers():
            wait_for(lambda w=worker: w.ensure_running() or " ready." in w.output(),
                     timeout=timeout, interval=0.1, what=f"Celery {worker.name} to be ready")

    def wait_http(self, service: Service, url: str, timeout: float = 60) -> None:
        import urllib.error
        import urllib.request

        def answers() -> bool:
            service.ensure_running()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status < 500
            except urllib.error.HTTPError as exc:
                return exc.code < 500
            except OSError:
                return False

        wait_for(answers, timeout=timeout, interval=0.2, what=f"{service.name} to answer {url}")

    def stop(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service:
            service.stop()

    def stop_all(self) -> None:
        for name in reversed(list(self.services)):
            with contextlib.suppress(Exception):
                self.stop(name)


def celery_control(broker_url: str):
    """A bare Celery app on the broker, for remote control of the workers (no product code)."""
    from celery import Celery

    return Celery("bench-control", broker=broker_url).control


def set_consuming(control, queue: str, consuming: bool, workers: int) -> float:
    """Tell every worker to stop (or start) consuming ``queue``; returns, once all answered,
    the time the command was sent."""
    command = control.add_consumer if consuming else control.cancel_consumer
    sent = time.time()
    replies = command(queue, reply=True, timeout=10, limit=workers)
    if len(replies or []) < workers:
        raise BenchError(f"only {len(replies or [])} of {workers} workers answered "
                         f"{'add' if consuming else 'cancel'}_consumer {queue}")
    return sent


# --------------------------------------------------------------------------- /proc


CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _process_table() -> dict[int, tuple[str, int]]:
    """pid -> (comm, ppid) of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        ppid = int(raw[raw.rindex(")") + 2:].split()[1])
        table[int(entry.name)] = (comm, ppid)
    return table


def descendants(root: int, table: dict[int, tuple[str, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (_comm, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of the children it has reaped."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident memory in KiB (``/proc/PID/statm``: cheap, no walk of the page tables)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except OSError:
        return 0


def pss_kb(pid: int) -> int:
    """Proportional set size in KiB: pages shared among processes counted once in all.
    ``smaps_rollup`` walks the process's page tables: about 0.4 ms for a small process and
    more for a PostgreSQL backend mapping the shared buffers, so it is read less often."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return rss_kb(pid)


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_fields() -> dict[str, float]:
    """CPU seconds of the whole machine since boot, by kind (/proc/stat)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return {name: value / CLK_TCK for name, value in zip(CPU_FIELDS, parts, strict=True)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    f = machine_cpu_fields()
    total = sum(f.values())
    return total - f["idle"] - f["iowait"], total


def machine_busy_now(seconds: float = 1.0) -> float:
    """The share of the machine's CPU in use over the next ``seconds`` (0..1)."""
    busy0, total0 = machine_cpu()
    time.sleep(seconds)
    busy1, total1 = machine_cpu()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def busy_processes(seconds: float = 1.0, exclude: set[int] | None = None,
                   top: int = 5) -> list[tuple[str, float]]:
    """The processes using the most CPU over ``seconds`` (command, CPU share of one core)."""
    def snap():
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    raw = Path(entry.path, "stat").read_text()
                except OSError:
                    continue
                fields = raw[raw.rindex(")") + 2:].split()
                out[int(entry.name)] = (raw[raw.index("(") + 1:raw.rindex(")")],
                                        (int(fields[11]) + int(fields[12])) / CLK_TCK)
        return out

    before = snap()
    time.sleep(seconds)
    after = snap()
    used = [(f"{comm}[{pid}]", (t - before[pid][1]) / seconds)
            for pid, (comm, t) in after.items()
            if pid in before and pid not in (exclude or set())]
    return sorted((u for u in used if u[1] > 0.02), key=lambda u: -u[1])[:top]


class ProcessWatch:
    """Peak memory and CPU of process trees by role (web, worker, load, ...), sampled from
    /proc in a thread. Peak memory is the largest sum over a role's processes seen in one
    sample: RSS every ``interval``, and PSS (which counts pages shared by forked processes
    once) every ``pss_every`` samples. Reading every process's PSS twice a second cost the
    bench some 12% of a core during a launch, taken from what it measures."""

    def __init__(self, interval: float = 0.5, pss_every: int = 10) -> None:
        self.interval = interval
        self.pss_every = pss_every
        self._samples = 0
        self.roles: dict[str, list[int]] = {}  # role -> root pids (whole trees are counted)
        self.singles: dict[str, list[int]] = {}  # role -> pids counted without children
        self.peak_rss: dict[str, int] = {}
        self.peak_pss: dict[str, int] = {}
        self.peak_procs: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, role: str, pid: int, tree: bool = True) -> None:
        with self._lock:
            (self.roles if tree else self.singles).setdefault(role, []).append(pid)

    def members(self, table=None) -> dict[str, list[int]]:
        table = table if table is not None else _process_table()
        with self._lock:
            out = {role: sorted({p for root in roots for p in descendants(root, table)})
                   for role, roots in self.roles.items()}
            for role, pids in self.singles.items():
                out.setdefault(role, []).extend(p for p in pids if p in table)
        return out

    def sample(self, pss: bool | None = None) -> None:
        """One sample of every role's memory; PSS too when ``pss`` (default: every
        ``pss_every``-th sample, and the first)."""
        if pss is None:
            pss = self._samples % self.pss_every == 0
        self._samples += 1
        for role, pids in self.members().items():
            rss = sum(rss_kb(pid) for pid in pids)
            with self._lock:
                self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)
                self.peak_procs[role] = max(self.peak_procs.get(role, 0), len(pids))
            if pss:
                shared = sum(pss_kb(pid) for pid in pids)
                with self._lock:
                    self.peak_pss[role] = max(self.peak_pss.get(role, 0), shared)

    def reset_peaks(self) -> None:
        with self._lock:
            self.peak_rss.clear()
            self.peak_pss.clear()
            self.peak_procs.clear()

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each role (live processes and those they reaped)."""
        out = {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.members().items()}
        for name, value in machine_cpu_fields().items():
            out["_" + name] = value
        return out

    def peaks(self) -> dict[str, dict]:
        with self._lock:
            return {role: {"rss_mb": round(self.peak_rss[role] / 1024, 1),
                           "pss_mb": round(self.peak_pss.get(role, 0) / 1024, 1),
                           "processes": self.peak_procs.get(role, 0)}
                    for role in self.peak_rss}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def start(self) -> ProcessWatch:
        self._thread = threading.Thread(target=self._run, name="process-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict:
    """CPU seconds each role used between two ``ProcessWatch.cpu()`` snapshots, plus the
    machine's busy share."""
    roles = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2)
             for k in after if not k.startswith("_")}
    machine = {name: after["_" + name] - before["_" + name] for name in CPU_FIELDS}
    total = sum(machine.values())
    busy = total - machine["idle"] - machine["iowait"]
    # Not ours: other processes on the machine (a test run, say), and the kernel's own work.
    roles["other"] = round(busy - sum(roles.values()), 2)
    return {"seconds": roles, "busy_seconds": round(busy, 2), "wall_seconds": round(
                total / (os.cpu_count() or 1), 2),
            "machine_busy_pct": round(100 * busy / total, 1) if total else None,
            "machine_pct": {k: round(100 * v / total, 1) for k, v in machine.items()}
            if total else {}}


# --------------------------------------------------------------------------- facts, results


def machine_info() -> dict:
    info: dict = {"nproc": os.cpu_count(), "kernel": platform.release(),
                  "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        with pg_connect(PG_ADMIN_URL) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            info["postgresql_settings"] = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
                "'synchronous_commit', 'fsync', 'max_connections', 'work_mem')").fetchall())
    with contextlib.suppress(Exception):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        match = re.search(r"v=(\S+)", out)
        info["redis"] = match.group(1) if match else out.strip()
    from importlib import metadata

    for package in ("flask", "gunicorn", "celery", "kombu", "sqlalchemy", "psycopg", "aiosmtpd"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[package] = metadata.version(package)
    return info


def git_info() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    with contextlib.suppress(Exception):
        changed = [line[3:] for line in git("status", "--porcelain",
                                            "--untracked-files=no").splitlines()]
        return {"commit": git("rev-parse", "HEAD"),
                "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(changed), "changed_files": changed}
    return {}


def write_results(name: str, data: dict, directory: Path = RESULTS_DIR) -> Path:
    """``bench/results/<name>.json``, written whole (via a .tmp file, then linked in place).

    An earlier run's file is never replaced: a second run of the same name (the same day and
    N) is written as ``<name>-<commit>.json``, further ones ``<name>-<commit>-2.json`` and on
    (``<name>-2.json`` outside git). The link fails if the name is taken, so two runs finishing
    at once cannot take the same one either.
    """
    directory.mkdir(parents=True, exist_ok=True)
    commit = (data.get("git") or {}).get("commit", "")[:7]
    stem = f"{name}-{commit}" if commit else name
    tmp = directory / f".{name}.{os.getpid()}.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    try:
        for candidate in _result_names(name, stem):
            path = directory / f"{candidate}.json"
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            return path
    finally:
        tmp.unlink()
    raise AssertionError("unreachable: _result_names does not end")


def _result_names(name: str, stem: str) -> Iterator[str]:
    yield name
    if stem != name:
        yield stem
    for number in itertools.count(2):
        yield f"{stem}-{number}"


def today() -> str:
    return datetime.now().strftime("%Y-%m-%d")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every ``finally`` cleans up."""
    def raise_interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"
