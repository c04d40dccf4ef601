"""A harness service: stopped with everything it forked, its output its own, its exit reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.process import Service
from harness.waiting import wait_for

FORKS_A_CHILD = ("import subprocess, time; child = subprocess.Popen(['sleep', '60']); "
                 "print(child.pid, flush=True); time.sleep(60)")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _python(tmp_path: Path, name: str, code: str) -> Service:
    return Service(name, [sys.executable, "-c", code], dict(os.environ), tmp_path / f"{name}.log")


def test_stop_ends_the_processes_the_service_forked(tmp_path):
    service = _python(tmp_path, "parent", FORKS_A_CHILD).start()
    child = int(wait_for(lambda: service.output().strip(), timeout=20, what="the child's pid"))
    assert _alive(child)
    service.stop(timeout=5)
    assert not service.running
    wait_for(lambda: not _alive(child), timeout=10, what="the child to be gone")


def test_kill_ends_the_whole_group_at_once(tmp_path):
    service = _python(tmp_path, "parent", FORKS_A_CHILD).start()
    child = int(wait_for(lambda: service.output().strip(), timeout=20, what="the child's pid"))
    service.kill()
    assert service.proc.returncode == -9
    wait_for(lambda: not _alive(child), timeout=10, what="the child to be gone")


def test_a_service_started_again_reads_only_its_own_output(tmp_path):
    first = _python(tmp_path, "job", "print('first ready')").start()
    wait_for(lambda: first.proc.poll() is not None, timeout=20, what="the first run to end")
    first.stop()
    second = _python(tmp_path, "job", "print('second')").start()
    wait_for(lambda: second.proc.poll() is not None, timeout=20, what="the second run to end")
    second.stop()
    assert second.output() == "second\n"


def test_an_exited_service_is_reported_with_its_output(tmp_path):
    service = _python(tmp_path, "broken", "import sys; print('no such setting'); sys.exit(3)")
    service.start()
    wait_for(lambda: service.proc.poll() is not None, timeout=20, what="it to exit")
    with pytest.raises(HarnessError, match=r"broken exited with status 3(.|\n)*no such setting"):
        service.ensure_running()
    service.stop()
