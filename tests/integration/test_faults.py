"""Faults of the real stack, each with real processes: the broker killed and restarted, the
database cutting the app's connections, a worker killed mid mail batch, an SMTP server that
refuses, answers 451 or hangs.

One stack serves the module, deployed as the README shows: gunicorn, an allocation worker
(``-Q allocation,periodic``), two mail workers (``-Q mail``), beat running the sweeper every
second, a private ``redis-server`` as the broker (so it can be SIGKILLed), a fresh PostgreSQL
database and an aiosmtpd server. Leases and retries are short here (settings below) so each
fault is over in seconds; the docstring of each test states the timing it shows. Every test
ends with ``wellness-perks verify`` clean and every code mail received exactly once, counted by
Message-ID at the SMTP server (the one exception, a worker killed mid-send, says why).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from harness.broker import RedisServer
from harness.waiting import wait_for
from tests.helpers import redemption_code, service_missing
from tests.integration.conftest import Stack, require_stack_services, running_stack
from tests.integration.test_launch_day import (
    claim_all,
    claims,
    emails_for,
    mail_rows,
    set_up_program,
    settled,
    sign_in,
    verify,
)

pytestmark = pytest.mark.integration

# Short leases and retries, so each fault is over in seconds (the defaults are in the README).
SETTINGS = {
    "SWEEP_INTERVAL_SECONDS": "1",
    "SWEEP_PENDING_AFTER_SECONDS": "3",
    "MAIL_RETRY_BASE_SECONDS": "2",
    "MAIL_RETRY_MAX_DELAY_SECONDS": "4",
    "MAIL_RETRY_WINDOW_SECONDS": "3600",
    "MAIL_BATCH_SIZE": "5",  # many batches: each worker runs one and holds the next
}
MAIL_WORKERS = 2
_names = (f"m{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def faults_stack(mail_catcher, tmp_path_factory) -> Iterator[Stack]:
    require_stack_services(redis=False)  # the broker is a private redis-server
    if why := RedisServer.why_unavailable():
        service_missing("Redis", f"{why} (a private broker is started)")
    tmp = tmp_path_factory.mktemp("faults")
    broker = RedisServer(tmp / "redis").start()
    try:
        with running_stack(mail_catcher, tmp, broker_url=broker.url(0), web_workers=2,
                           settings=SETTINGS) as st:
            st.broker = broker
            assert "newest schema" in st.cli("init-db").stdout
            st.start_worker("allocation", 1, queues="allocation,periodic")
            st.start_beat()
            yield st
    finally:
        broker.kill()


def mail_workers(st: Stack):
    return [w for w in st.workers() if w.name != "allocation"]


@pytest.fixture
def faults(faults_stack: Stack) -> Iterator[Stack]:
    """The module's stack as each test expects it: broker up, the allocation worker and two
    mail workers, SMTP accepting at once."""
    st = faults_stack
    if not st.broker.running:
        st.broker.start()
    st.mail.accept_all()
    st.mail.accept_delay = 0.0
    for _ in range(MAIL_WORKERS - len(mail_workers(st))):
        st.start_worker(next(_names), 1, queues="mail")
    for name in ("gunicorn", "beat", "allocation"):
        st.services[name].ensure_running()
    yield st
    st.close_browsers()


def code_mails_by_message_id(st: Stack, emails) -> Counter:
    """How many times the SMTP server received each code mail, by Message-ID."""
    return Counter(m["Message-ID"] for m in st.mail.to_any(emails, "code"))


def assert_each_code_mailed_once(st: Stack, slug: str, emails) -> None:
    """Every allocated creator's code mail received exactly once (by Message-ID), carrying
    their code; nothing to anyone else."""
    rows = claims(st, slug)
    allocated = {r.email: r.code for r in rows if r.state == "allocated"}
    messages = st.mail.to_any(emails, "code")
    by_id = Counter(m["Message-ID"] for m in messages)
    assert sorted(by_id.values()) == [1] * len(allocated), {
        k: v for k, v in by_id.items() if v != 1}
    assert {m["To"]: redemption_code(m) for m in messages} == allocated


def wait_all_sent(st: Stack, slug: str, count: int, timeout: float) -> float:
    """Until every claim is decided and every code mail sent; the seconds it took."""
    started = time.monotonic()
    wait_for(lambda: settled(st, slug, count), timeout=timeout, interval=0.25,
             what=f"every claim of {slug} decided and every code mail sent")
    return time.monotonic() - started


# --------------------------------------------------------------------------- the broker


def _kill_and_restart_broker(st: Stack) -> None:
    """SIGKILL the broker (every message it held is gone), wait until every worker has noticed,
    and start it again, empty, on its port."""
    logged = {w.name: w.output().count("Connection to broker lost") for w in st.workers()}
    st.broker.kill()
    wait_for(lambda: all(w.output().count("Connection to broker lost") > logged[w.name]
                         for w in st.workers()), timeout=30, interval=0.2,
             what="every worker to notice the broker is gone")
    st.broker.start()


@pytest.mark.parametrize("pending", ["retries", "batches"])
def test_redis_killed_and_restarted_workers_live_on(faults, tmp_path, pending):
    """Redis is SIGKILLed and started again, empty, while mail is owed: ``retries``, with the
    SMTP server answering 451 to every message, so all 30 code mails wait for their retry;
    ``batches``, with the SMTP server taking 0.1 s a message, so mail batches are running.
    Every worker lives through it (a retry is a time on its row, never a message held by a
    worker: holding one, a worker exited on kombu's ``'NoneType' object has no attribute
    'hostname'`` as its dead channel tried to give the message back). Then every mail is
    delivered once. Timing (printed): from the broker's restart to the last mail, a few
    seconds (a retry's wait, at most 4 s here, plus a sweep interval of 1 s)."""
    slug = f"broker-{pending}"
    emails = emails_for(slug, 30)
    set_up_program(faults, tmp_path, slug, quota=30, codes=30,
                   creators=[(e, "PK") for e in emails])
    browsers = sign_in(faults, slug, emails)
    if pending == "retries":
        faults.mail.refuse_all("451 4.3.0 try again later")
    else:
        faults.mail.accept_delay = 0.1
    claim_all(faults, slug, browsers.values())

    def retries_pending():
        rows = mail_rows(faults, slug)
        return len(rows) == 30 and all(
            m.attempts >= 1 and m.status in ("queued", "sending") for m in rows) and all(
            "451" in (m.last_error or "") for m in rows if m.status == "queued")

    if pending == "retries":
        wait_for(retries_pending, timeout=60, interval=0.2,
                 what="every code mail refused once and waiting for its retry")
    else:
        wait_for(lambda: len(faults.mail.to_any(emails, "code")) >= 4, timeout=60,
                 interval=0.05, what="the first code mails")
    workers = {w.name: w.pid for w in faults.workers()}

    _kill_and_restart_broker(faults)
    faults.mail.accept_all()
    seconds = wait_all_sent(faults, slug, 30, timeout=90)

    for worker in faults.workers():
        worker.ensure_running()
    assert {w.name: w.pid for w in faults.workers()} == workers  # none died, none replaced
    assert_each_code_mailed_once(faults, slug, emails)
    verify(faults, slug)
    print(f"\nbroker restarted with {pending} pending: last mail {seconds:.1f} s after")
