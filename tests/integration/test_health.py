"""Health and metrics against the real processes: gunicorn, Celery workers on Redis, PostgreSQL.

A worker consumes only ``allocation`` and ``periodic``: ``mail`` has no worker, so the system is
degraded (``/healthz`` 200 with the queue named, ``wellness-perks health`` exit 1) and a mail
task waits in the queue's depth; once a mail worker runs, all is ok; a mail worker that hangs
(SIGSTOP) answers nobody and its queue counts as unserved again. A task that fails for good in
a worker process is counted in what the web process's ``/metrics`` shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.commands import BIN, ROOT
from harness.waiting import wait_for
from tests.integration.conftest import (
    Stack,
    _claim_redis_database,
    _release_redis,
    require_stack_services,
    running_stack,
)

pytestmark = pytest.mark.integration

HTTP_TIMEOUT = 30


@pytest.fixture(scope="module")
def health_stack(mail_catcher, tmp_path_factory) -> Iterator[Stack]:
    """The stack with one worker, on the allocation, periodic and imports queues only."""
    require_stack_services()
    broker_url, redis_client = _claim_redis_database()
    try:
        with running_stack(mail_catcher, tmp_path_factory.mktemp("health"),
                           broker_url=broker_url) as st:
            st.cli("init-db")
            st.start_worker("allocation", 1, queues="allocation,periodic,imports")
            yield st
    finally:
        _release_redis(redis_client)


def health(st: Stack) -> tuple[int, dict]:
    result = st.cli("health", "--json", check=False)
    return result.returncode, result.json()


def metrics(st: Stack) -> dict[str, float]:
    response = requests.get(st.url("/metrics"), timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def celery_call(st: Stack, task: str, args: list) -> None:
    """``celery -A worker call TASK --args ARGS``, as an operator would publish one."""
    subprocess.run([str(BIN / "celery"), "-A", "worker", "call", task, "--args",
                    json.dumps(args)], cwd=ROOT, env=st.env, stdin=subprocess.DEVNULL,
                   capture_output=True, text=True, timeout=60, check=True)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process frozen (SIGSTOP) as a hung worker is: alive, answering nothing."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_queue_without_a_live_worker_is_degraded(health_stack):
    st = health_stack
    def allocation_workers():
        return health(st)[1]["checks"]["queues"].get("allocation", {}).get("workers")

    [allocation_worker] = wait_for(allocation_workers, timeout=60, interval=0.5,
                                   what="the allocation worker to answer health")
    assert allocation_worker.startswith("allocation@")

    # A mail task published with no mail worker: it waits in the queue.
    celery_call(st, "wellness_perks.send_emails", [[987654]])
    code, report = health(st)
    assert code == 1
    assert report["status"] == "degraded"
    queues = report["checks"]["queues"]
    assert queues["status"] == "degraded"
    assert queues["without_worker"] == ["mail"]
    assert queues["allocation"] == {"workers": [allocation_worker], "depth": 0}
    assert queues["periodic"]["workers"] == [allocation_worker]
    assert queues["mail"] == {"workers": [], "depth": 1}
    assert report["checks"]["broker"] == {"status": "ok"}
    assert report["checks"]["database"] == {"status": "ok"}

    page = requests.get(st.url("/healthz"), timeout=HTTP_TIMEOUT)  # from this machine
    assert page.status_code == 200
    assert page.json()["checks"]["queues"]["without_worker"] == ["mail"]
    proxied = requests.get(st.url("/healthz"), headers={"X-Forwarded-For": "203.0.113.9"},
                           timeout=HTTP_TIMEOUT)
    assert (proxied.status_code, proxied.json()) == (200, {"status": "ok"})  # takes claims
    assert requests.get(st.url("/metrics"), headers={"X-Forwarded-For": "203.0.113.9"},
                        timeout=HTTP_TIMEOUT).status_code == 401
    samples = metrics(st)
    assert samples['wellness_perks_queue_workers{queue="mail"}'] == 0
    assert samples['wellness_perks_queue_workers{queue="allocation"}'] == 1
    assert samples['wellness_perks_queue_depth{queue="mail"}'] == 1
    assert samples['wellness_perks_health{status="degraded"}'] == 1

    # A mail worker: every queue served, the waiting task taken.
    mail_worker = st.start_worker("mail", 1, queues="mail")
    def ok():
        code, report = health(st)
        return report if code == 0 else None

    report = wait_for(ok, timeout=60, interval=0.5, what="health to be ok with a mail worker")
    assert report["status"] == "ok"
    assert report["checks"]["queues"]["mail"]["workers"][0].startswith("mail@")
    assert report["checks"]["queues"]["mail"]["depth"] == 0
    assert requests.get(st.url("/healthz"), timeout=HTTP_TIMEOUT).json()["status"] == "ok"

    # The mail worker hangs: it answers nobody, so its queue has no live worker.
    with stopped(mail_worker.pid):
        code, report = health(st)
        assert code == 1
        assert report["checks"]["queues"]["without_worker"] == ["mail"]
        page = requests.get(st.url("/healthz"), timeout=HTTP_TIMEOUT)
        assert page.status_code == 200 and page.json()["status"] == "degraded"
    wait_for(ok, timeout=60, interval=0.5, what="health to be ok once the mail worker runs again")


def test_task_failures_in_worker_processes_show_in_the_webs_metrics(health_stack):
    st = health_stack
    sample = 'wellness_perks_task_failures_total{task="wellness_perks.sweep"}'
    before = metrics(st).get(sample, 0)
    celery_call(st, "wellness_perks.sweep", [1])  # sweep takes no argument: it fails for good
    wait_for(lambda: metrics(st).get(sample, 0) == before + 1, timeout=60, interval=0.5,
             what="the failed sweep to be counted")
