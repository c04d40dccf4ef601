"""The project's installed commands (``.venv/bin``), and running one as an operator does."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
# What the harness runs of the project: `make test` and `make bench` install them into .venv.
PRODUCT_COMMANDS = ("wellness-perks", "gunicorn", "celery")


def commands_missing() -> str | None:
    """None when every command the harness runs is installed, else which are not."""
    missing = [str(BIN / name) for name in PRODUCT_COMMANDS if not (BIN / name).exists()]
    return f"{', '.join(missing)} missing" if missing else None


@dataclass
class CliResult:
    """A finished ``wellness-perks`` command: its output, wall time, peak RSS and CPU."""

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
    """``wellness-perks ARGS`` in the repository, with ``env`` as its whole environment.

    HarnessError (with the output) when it exits non-zero and ``check`` is set, and when it
    runs over ``timeout`` s (it is killed). Its resource use is the process's own (wait4).
    """
    argv = [str(BIN / "wellness-perks"), *args]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    box: dict[str, str] = {}

    def drain(name, stream):
        with stream:
            box[name] = stream.read()

    # Both pipes are drained while the command runs: a full pipe would stall it.
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
            proc.wait()
            raise HarnessError(f"wellness-perks {' '.join(args)} took over {timeout:g} s")
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(10)
    result = CliResult(argv, proc.returncode, box.get("out", ""), box.get("err", ""), seconds,
                       usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
    if check and result.returncode != 0:
        raise HarnessError(f"wellness-perks {' '.join(args)} exited with {result.returncode}:\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result
