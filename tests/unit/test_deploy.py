"""The documented deployment (deploy/systemd and deploy/Procfile): every queue has a worker,
mail never shares a worker with allocation, every process is restarted, one beat."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest

from wellness_perks.jobs import QUEUES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _queues(command: str) -> set[str] | None:
    """The queues a ``celery worker`` command consumes (None: not a worker)."""
    args = shlex.split(command)
    if Path(args[0]).name != "celery":
        return None
    subcommand = args[args.index("-A") + 2]  # celery -A <app> <subcommand>
    if subcommand != "worker":
        return None
    assert "-Q" in args, f"a worker that consumes every queue: {command}"
    return set(args[args.index("-Q") + 1].split(","))


def _units() -> dict[str, configparser.SectionProxy]:
    units = {}
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.read(path)
        units[path.name] = parser["Service"]
    return units


def _procfile() -> dict[str, str]:
    lines = (DEPLOY / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(params=["systemd", "Procfile"])
def commands(request) -> list[str]:
    if request.param == "systemd":
        return [service["ExecStart"] for service in _units().values()]
    return list(_procfile().values())


def test_every_queue_has_a_worker_and_mail_has_its_own(commands):
    workers = [q for q in map(_queues, commands) if q is not None]
    assert set().union(*workers) == set(QUEUES)
    for queues in workers:
        assert queues == {"mail"} or "mail" not in queues, (
            "a hung SMTP server would hold this worker's other queues")


def test_one_beat_and_one_web(commands):
    assert sum(" worker beat" in c for c in commands) == 1
    assert sum("gunicorn" in c for c in commands) == 1


def test_every_unit_is_restarted_and_reads_the_environment_file():
    units = _units()
    assert len(units) == 5  # web, allocation (and periodic), mail, imports, beat
    for name, service in units.items():
        assert service["Restart"] == "always", name
        assert service["EnvironmentFile"] == "/etc/wellness-perks.env", name


def test_a_worker_name_is_unique_per_host():
    for service in _units().values():
        if _queues(service["ExecStart"]):
            assert re.search(r"-n \w+@%%h", service["ExecStart"])
