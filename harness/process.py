"""A long-running process of ours (a server, a worker), and the end of its output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from harness.commands import ROOT
from harness.errors import HarnessError

TAIL_LINES = 60  # of a process's output, in an error or a failed test's report


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of the file at ``path``."""
    if not path.exists():
        return "(no output file)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty)"


@dataclass
class Service:
    """A process in a session (so a process group) of its own, so that stopping it reaches
    every process it forked, with its stdout and stderr in ``log_path``.

    The file is written afresh at each start: what is read from it (a readiness line) is this
    process's own output, never that of an earlier process of the same name.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = ROOT
    proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = None

    def start(self) -> Service:
        self._log = self.log_path.open("wb")
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
        """HarnessError, with the end of its output, if the process has exited."""
        if self.proc is None:
            raise HarnessError(f"{self.name} was never started")
        if self.proc.poll() is not None:
            raise HarnessError(f"{self.name} exited with status {self.proc.returncode}; its "
                               f"output ({self.log_path}):\n{tail(self.log_path)}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the main process, a graceful stop (gunicorn finishes the requests in hand,
        a Celery worker its tasks), and up to ``timeout`` s to exit; then SIGKILL to the whole
        group, which is ours alone, whether or not the main process went by itself: whatever it
        left behind goes too. A main process still there 10 s after SIGKILL is an error
        (``subprocess.TimeoutExpired``), not something to walk away from."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
            self._kill_group()
            self.proc.wait(10)
        finally:
            self._close_log()

    def kill(self) -> None:
        """SIGKILL to the whole group at once (a Celery worker and its pool children): no warm
        shutdown, no message given back, transactions cut off mid-way."""
        if self.proc is None:
            return
        try:
            self._kill_group()
            self.proc.wait(10)
        finally:
            self._close_log()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
