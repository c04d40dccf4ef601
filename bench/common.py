"""What both benchmark runs measure with: progress lines, percentiles, the product's settings,
Celery remote control, process statistics from /proc, machine facts and the results file.

The processes, services, databases and sign-in tokens are the harness's (``harness/``). Nothing
here imports the product: it is run through its commands and its HTTP endpoints.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness.commands import ROOT
from harness.errors import HarnessError
from harness.postgres import PostgresServer

RESULTS_DIR = ROOT / "bench" / "results"
POSTGRES = PostgresServer(os.environ.get("BENCH_PG_ADMIN_URL",
                                         "postgresql://postgres@127.0.0.1:5432/postgres"),
                          prefix="wp_bench")

# Settings of the caller's environment that would point the product's processes elsewhere, or
# fail against the bench's SMTP sink. Whatever else it holds (LOG_LEVEL, ALLOCATION_BATCH_SIZE,
# MAIL_RATE_LIMIT, ...) passes through, and is recorded in the results.
DROPPED_SETTINGS = ("PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_STARTTLS", "SMTP_SSL",
                    "SMTP_CA_FILE", "SMTP_ALLOW_PLAINTEXT_AUTH", "OUTBOX_DIR")
# Tuning settings recorded when set (config.py's).
TUNING_SETTINGS = ("LOG_LEVEL", "DATABASE_POOL_SIZE", "ALLOCATION_BATCH_SIZE", "MAIL_RATE_LIMIT",
                   "MAIL_CONNECTIONS", "MAIL_BATCH_SIZE",
                   "SMTP_TIMEOUT", "MAIL_RETRY_WINDOW_SECONDS", "MAIL_RETRY_BASE_SECONDS",
                   "SWEEP_INTERVAL_SECONDS", "SWEEP_PENDING_AFTER_SECONDS",
                   "MAIL_SENDING_TIMEOUT_SECONDS", "BROKER_RETRY_AFTER_SECONDS", "WORKER_NICENESS")


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


def postmaster_pid() -> int | None:
    """The PostgreSQL server's main process (its backends are its children)."""
    try:
        with POSTGRES.connect() as conn:
            data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        return int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    except Exception:  # noqa: BLE001 - not readable (another user's data dir): try /proc
        table = _process_table()
        for pid, (comm, ppid) in table.items():
            if comm == "postgres" and table.get(ppid, ("",))[0] != "postgres":
                return pid
    return None


# --------------------------------------------------------------------------- the product


def tuning_settings(env: dict[str, str]) -> dict[str, str]:
    """The tuning settings ``env`` sets, for the results."""
    return {k: env[k] for k in TUNING_SETTINGS if env.get(k)}


@dataclass
class StackSettings:
    """How many of the product's processes a run starts, and how (the command-line options)."""

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
        raise HarnessError(f"only {len(replies or [])} of {workers} workers answered "
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
    ``smaps_rollup`` walks the process's page tables (longer for a PostgreSQL backend mapping
    the shared buffers), so it is read less often than RSS."""
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
    once) every ``pss_every`` samples only: reading PSS walks every process's page tables, CPU
    taken from what is being measured."""

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
        with POSTGRES.connect() as conn:
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
