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

import hashlib
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.broker import RedisServer
from harness.waiting import wait_for
from tests.helpers import POSTGRES, redemption_code, service_missing
from tests.integration.conftest import Stack, require_stack_services, running_stack
from tests.integration.test_launch_day import (
    REDEEM_URL,
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
    # a batch's lease, renewed every 2 s: long enough that a loaded machine renews it in time
    "MAIL_SENDING_TIMEOUT_SECONDS": "6",
    "SMTP_TIMEOUT": "3",
    "IMPORT_STALE_AFTER_SECONDS": "6",  # a running import's heartbeat: written every second
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


def test_redis_killed_and_restarted_while_mail_retries_wait(faults, tmp_path):
    """The SMTP server answers 451 to every message, so all 30 code mails wait for their
    retry; Redis is SIGKILLed and started again, empty, on its port. Every worker lives through
    it (a retry is a time on its row, never a message held by a worker: holding one, a worker
    exited on kombu's ``'NoneType' object has no attribute 'hostname'`` as its dead channel
    tried to give the message back). Once the SMTP server accepts, the sweeper hands out the
    retries and every mail is delivered once. Timing (printed): from the broker's restart to
    the last mail, a few seconds (a retry's wait, at most 4 s here, plus a sweep of 1 s)."""
    slug = "broker"
    emails = emails_for(slug, 30)
    set_up_program(faults, tmp_path, slug, quota=30, codes=30,
                   creators=[(e, "PK") for e in emails])
    browsers = sign_in(faults, slug, emails)
    faults.mail.refuse_all("451 4.3.0 try again later")
    claim_all(faults, slug, browsers.values())

    def retries_wait():
        rows = mail_rows(faults, slug)
        return len(rows) == 30 and all(
            m.attempts >= 1 and m.status in ("queued", "sending") for m in rows) and all(
            "451" in (m.last_error or "") for m in rows if m.status == "queued")

    wait_for(retries_wait, timeout=60, interval=0.2,
             what="every code mail refused once and waiting for its retry")
    workers = {w.name: w.pid for w in faults.workers()}

    _kill_and_restart_broker(faults)
    faults.mail.accept_all()
    seconds = wait_all_sent(faults, slug, 30, timeout=90)

    for worker in faults.workers():
        worker.ensure_running()
    assert {w.name: w.pid for w in faults.workers()} == workers  # none died, none replaced
    assert_each_code_mailed_once(faults, slug, emails)
    verify(faults, slug)
    print(f"\nbroker restarted while retries waited: last mail {seconds:.1f} s after")


# --------------------------------------------------------------------------- the database


def terminate_app_connections(st: Stack) -> int:
    """``pg_terminate_backend`` on every connection to the stack's database but this one."""
    with st.db() as conn:
        ended = conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
        conn.commit()
    return ended


def possibly_sent(st: Stack, slug: str) -> dict[str, bool]:
    """Message-ID -> whether its row is marked possibly sent, for the program's code mails."""
    with st.db() as conn:
        return {message_id: marked for message_id, marked in conn.execute(sa.text(
            "SELECT m.message_id, m.possibly_sent_at IS NOT NULL FROM outboundemail m "
            "JOIN claim ON claim.id = m.claim_id JOIN program ON program.id = claim.program_id "
            "WHERE program.slug = :slug"), {"slug": slug})}


def test_database_connections_terminated_mid_mail_batch(faults, tmp_path):
    """40 code mails in batches of 5 on two mail workers, the SMTP server taking 0.1 s a
    message (about 2 s of sending). Once 8 have arrived, and again once 16 have, every
    connection of the app to the database is ended (``pg_terminate_backend``), so messages the
    server has just taken are being recorded on a connection that dies. No message is sent
    twice: the worker keeps each outcome and records it on a new connection. Timing (printed):
    the rest of the batches goes out within a few seconds of the cut; the test allows 60."""
    slug = "dbcut"
    emails = emails_for(slug, 40)
    set_up_program(faults, tmp_path, slug, quota=40, codes=40,
                   creators=[(e, "PK") for e in emails])
    browsers = sign_in(faults, slug, emails)
    faults.mail.accept_delay = 0.1
    claim_all(faults, slug, browsers.values())

    ended = []
    for arrived in (8, 16):
        wait_for(lambda n=arrived: len(faults.mail.to_any(emails, "code")) >= n, timeout=60,
                 interval=0.02, what=f"{arrived} code mails")
        ended.append(terminate_app_connections(faults))
    cut = time.monotonic()
    wait_all_sent(faults, slug, 40, timeout=60)
    seconds = time.monotonic() - cut

    assert all(ended), ended  # the app's connections were there, and were ended
    assert_each_code_mailed_once(faults, slug, emails)
    assert not any(possibly_sent(faults, slug).values())
    verify(faults, slug)
    print(f"\ndatabase cut twice ({ended} connections): the rest {seconds:.1f} s after the cut")


# --------------------------------------------------------------------------- a mail worker


def _running_a_batch(worker) -> bool:
    text = worker.output()
    return text.count("wellness_perks.send_emails[") > 2 * text.count("succeeded in")


def test_mail_worker_killed_mid_batch(faults, tmp_path):
    """40 code mails in batches of 5, the SMTP server taking 0.1 s a message; once 8 have
    arrived, a mail worker in the middle of a batch is SIGKILLed (with its pool process). The
    other mail worker sends the rest of the victim's batch once its lease runs out (3 s here,
    20 s by default) and the sweeper (every second here) hands it out. At most the one
    message the victim had in flight arrives twice (same Message-ID), and its row is marked
    possibly sent. Timing (printed): the last mail a few seconds after the kill (lease plus a
    sweep); the test allows 60."""
    slug = "killed"
    emails = emails_for(slug, 40)
    set_up_program(faults, tmp_path, slug, quota=40, codes=40,
                   creators=[(e, "PK") for e in emails])
    browsers = sign_in(faults, slug, emails)
    faults.mail.accept_delay = 0.1
    claim_all(faults, slug, browsers.values())
    wait_for(lambda: len(faults.mail.to_any(emails, "code")) >= 8, timeout=60, interval=0.02,
             what="8 code mails")
    victim = wait_for(lambda: next((w for w in mail_workers(faults) if _running_a_batch(w)),
                                   None), timeout=30, interval=0.02,
                      what="a mail worker in the middle of a batch")
    victim.kill()
    killed = time.monotonic()
    wait_all_sent(faults, slug, 40, timeout=60)
    seconds = time.monotonic() - killed

    by_id = code_mails_by_message_id(faults, emails)
    repeated = {message_id: n for message_id, n in by_id.items() if n > 1}
    assert len(repeated) <= 1 and set(repeated.values()) <= {2}, repeated
    marked = possibly_sent(faults, slug)
    assert all(marked[message_id] for message_id in repeated)  # a repeat is always marked
    assert sum(marked.values()) <= 1  # and only the one message that was in flight
    rows = claims(faults, slug)
    assert {m["To"]: redemption_code(m) for m in faults.mail.to_any(emails, "code")} == {
        r.email: r.code for r in rows}
    verify(faults, slug)
    print(f"\nmail worker killed: the rest {seconds:.1f} s after; repeated {len(repeated)}, "
          f"marked possibly sent {sum(marked.values())}")


# --------------------------------------------------------------------------- the imports worker

IMPORT_ROWS = 200_000  # seconds of import: the worker is killed well inside it


def _lost_import_job(st: Stack, tmp_path, slug: str) -> int:
    """A program, a manager, and a large codes upload committed while the broker was down:
    its file waits in the upload folder and its job, queued, was never handed to a worker."""
    st.cli("create-program", "--slug", slug, "--name", f"Import {slug}", "--quota", "10",
           "--redeem-url", REDEEM_URL)
    st.cli("create-manager", f"{slug}@managers.example", "--password", "a long password 123")
    content = "".join(f"{slug.upper()}-{n:08d}\n" for n in range(IMPORT_ROWS)).encode()
    uploads = Path(st.env["INSTANCE_PATH"]) / "uploads"
    uploads.mkdir(mode=0o700, exist_ok=True)
    stored = secrets.token_hex(16)
    (uploads / stored).write_bytes(content)
    (uploads / stored).chmod(0o600)
    with st.db() as conn:
        job_id = conn.execute(sa.text(
            "INSERT INTO importjob (program_id, manager_id, kind, filename, stored_name, sha256, "
            "size_bytes, skip_invalid, state, rows_total, rows_done, imported, created_at, "
            "heartbeat_at, attempts) "
            "SELECT program.id, manager.id, 'codes', 'codes.txt', :stored, :sha, :size, false, "
            "'queued', :rows, 0, 0, now() - interval '1 minute', now() - interval '1 minute', 0 "
            "FROM program, manager WHERE program.slug = :slug AND manager.email = :manager "
            "RETURNING importjob.id"),
            {"stored": stored, "sha": hashlib.sha256(content).hexdigest(), "size": len(content),
             "rows": IMPORT_ROWS, "slug": slug, "manager": f"{slug}@managers.example"}
        ).scalar_one()
        conn.commit()
    return job_id


def _job(st: Stack, job_id: int):
    with st.db() as conn:
        return conn.execute(sa.text(
            "SELECT state, attempts, rows_done, imported, error FROM importjob WHERE id = :id"),
            {"id": job_id}).one()


def _codes_of(st: Stack, slug: str) -> tuple[int, int, int]:
    """(codes, batches, the stock counter) of the program."""
    with st.db() as conn:
        return conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM code WHERE code.program_id = program.id), "
            "(SELECT count(*) FROM codebatch WHERE codebatch.program_id = program.id), "
            "program.in_stock_count FROM program WHERE slug = :slug"), {"slug": slug}).one()


def test_imports_worker_killed_mid_import(faults, tmp_path):
    """A large import committed while the broker was down is handed out by the sweeper (its
    job queued past SWEEP_PENDING_AFTER_SECONDS); its worker is SIGKILLed half-way (progress
    written, codes flushed in its open transaction). Nothing of that run stays (PostgreSQL
    rolls the cut-off transaction back); once the job's heartbeat is IMPORT_STALE_AFTER_SECONDS
    old the sweeper runs it again, on a new worker, from the file's start: every code imported
    once, one batch, the stock counter right, the job done at its second attempt."""
    slug = "import-killed"
    job_id = _lost_import_job(faults, tmp_path, slug)
    importer = faults.start_worker("importer", 1, queues="imports")
    try:
        wait_for(lambda: _job(faults, job_id).rows_done > 0, timeout=60, interval=0.1,
                 what="the import to be running and writing its progress")
        state, attempts, rows_done, _imported, _error = _job(faults, job_id)
        assert (state, attempts) == ("running", 1) and rows_done < IMPORT_ROWS
        importer.kill()
        killed = time.monotonic()
        wait_for(lambda: _codes_of(faults, slug)[:2] == (0, 0), timeout=30, interval=0.2,
                 what="the killed run's transaction to be rolled back")
        faults.stop("importer")
        importer = faults.start_worker("importer-2", 1, queues="imports")
        wait_for(lambda: _job(faults, job_id).state in ("done", "failed"), timeout=180,
                 interval=0.5, what="the import to be run again to its end")
        seconds = time.monotonic() - killed
        assert _job(faults, job_id) == ("done", 2, IMPORT_ROWS, IMPORT_ROWS, None)
        assert _codes_of(faults, slug) == (IMPORT_ROWS, 1, IMPORT_ROWS)
        verify(faults, slug)
        print(f"\nimports worker killed: the job done {seconds:.1f} s after, at attempt 2")
    finally:
        faults.stop(importer.name)


# --------------------------------------------------------------------------- the SMTP server


def test_smtp_hanging_while_claims_arrive_allocation_unaffected(faults, tmp_path):
    """The SMTP server stops answering (it never answers RCPT; SMTP_TIMEOUT is 3 s here) while
    40 creators claim: the mail workers' batches hang on their timeouts, and allocation, on a
    worker of its own, decides every claim meanwhile; no code mail arrives. Timing (printed):
    the slowest claim from requested to decided, measured in the database (a fraction of a
    second on a quiet machine); the test only asks that all are decided while the server hangs.
    Once it answers again, every mail is delivered once."""
    slug = "hang"
    emails = emails_for(slug, 40)
    set_up_program(faults, tmp_path, slug, quota=40, codes=40,
                   creators=[(e, "PK") for e in emails])
    browsers = sign_in(faults, slug, emails)
    faults.mail.hang = True
    try:
        claim_all(faults, slug, browsers.values())
        wait_for(lambda: (rows := claims(faults, slug)) and len(rows) == 40
                 and all(r.state == "allocated" for r in rows), timeout=30, interval=0.1,
                 what="every claim allocated while the SMTP server hangs")
        assert faults.mail.to_any(emails) == []
        with faults.db() as conn:
            slowest = conn.execute(sa.text(
                "SELECT max(extract(epoch FROM claim.decided_at - claim.requested_at)) "
                "FROM claim JOIN program ON program.id = claim.program_id "
                "WHERE program.slug = :slug"), {"slug": slug}).scalar_one()
    finally:
        faults.mail.hang = False
    seconds = wait_all_sent(faults, slug, 40, timeout=90)

    assert_each_code_mailed_once(faults, slug, emails)
    verify(faults, slug)
    print(f"\nSMTP hanging: slowest allocation {float(slowest):.3f} s; every mail "
          f"{seconds:.1f} s after the server answered again")


def test_smtp_refusing_then_451_longer_than_the_old_retry_window(faults, tmp_path):
    """The SMTP server is down (connections refused), then answers 451 to every message, for
    longer than the old rule allowed: five attempts, then failed (with these settings, the
    waits of 2, 4, 4 and 4 s: about 14 s). Each mail is tried at least seven times here, and
    none is failed (the window is an hour); once the server accepts, all 20 are delivered once.
    Timing (printed): the last mail within a retry wait (4 s) and a sweep of the healing."""
    slug = "provider"
    emails = emails_for(slug, 20)
    set_up_program(faults, tmp_path, slug, quota=20, codes=20,
                   creators=[(e, "PK") for e in emails])
    browsers = sign_in(faults, slug, emails)
    port = faults.mail.port
    faults.mail.stop()
    try:
        claim_all(faults, slug, browsers.values())

        def tried(times: int, error: str):
            def enough():
                rows = mail_rows(faults, slug)
                return len(rows) == 20 and all(m.attempts >= times for m in rows) and all(
                    error in (m.last_error or "") for m in rows if m.status == "queued")
            return enough

        wait_for(tried(3, "Refused"), timeout=60, interval=0.2,
                 what="every code mail refused a connection three times")
    finally:
        faults.mail.start(port)
    faults.mail.refuse_all("451 4.3.0 try again later")
    wait_for(tried(7, "451"), timeout=90, interval=0.2,
             what="every code mail tried seven times, refused with 451")
    assert {m.status for m in mail_rows(faults, slug)} <= {"queued", "sending"}
    faults.mail.accept_all()
    seconds = wait_all_sent(faults, slug, 20, timeout=60)

    assert all(m.attempts >= 7 for m in mail_rows(faults, slug))
    assert_each_code_mailed_once(faults, slug, emails)
    verify(faults, slug)
    print(f"\nprovider incident: every mail {seconds:.1f} s after the server accepted")


# --------------------------------------------------------------------------- the database away

DATABASE_AWAY_SECONDS = 20


def _database_allows_connections(st: Stack, allowed: bool) -> None:
    """The stack's database takes new connections or refuses them all (``ALLOW_CONNECTIONS``,
    run as the server's admin); refusing, it also ends every connection it has."""
    name = st.database_url.rsplit("/", 1)[1]
    with POSTGRES.connect() as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
    if st.engine is not None:  # the test's own pool held connections that are gone now
        st.engine.dispose()


def test_database_refusing_connections_for_20_s(faults, tmp_path):
    """The database refuses every connection for 20 s (its connections ended, new ones
    refused) while 30 signed-in creators keep claiming: every claim is answered 503 and
    recorded nowhere, and the web, the workers and beat live through it. Once the database
    takes connections again, the same creators claim again: every claim is served, every code
    mailed once, verify clean. Timing (printed): from the database's return to the last mail,
    a few seconds; the test allows 60."""
    slug = "dbaway"
    emails = emails_for(slug, 30)
    set_up_program(faults, tmp_path, slug, quota=30, codes=30,
                   creators=[(e, "PK") for e in emails])
    browsers = sign_in(faults, slug, emails)
    processes = {w.name: w.pid for w in faults.workers()}

    answers: Counter = Counter()
    _database_allows_connections(faults, False)
    try:
        away_until = time.monotonic() + DATABASE_AWAY_SECONDS
        for browser in itertools.cycle(browsers.values()):
            if time.monotonic() >= away_until:
                break
            response = browser.http.post(faults.url(f"/programs/{slug}/claim"),
                                         data={"csrf_token": browser.csrf_token},
                                         allow_redirects=False, timeout=30)
            answers[response.status_code] += 1
    finally:
        _database_allows_connections(faults, True)
    back = time.monotonic()

    assert set(answers) == {503} and answers[503] >= len(browsers), answers
    assert claims(faults, slug) == []  # none half-recorded
    claim_all(faults, slug, browsers.values())
    wait_all_sent(faults, slug, 30, timeout=60)
    seconds = time.monotonic() - back

    for worker in faults.workers():
        worker.ensure_running()
    assert {w.name: w.pid for w in faults.workers()} == processes  # none died, none replaced
    assert faults.services["gunicorn"].running and faults.services["beat"].running
    assert_each_code_mailed_once(faults, slug, emails)
    verify(faults, slug)
    print(f"\ndatabase away {DATABASE_AWAY_SECONDS} s: {answers[503]} claims answered 503; "
          f"every claim served and mailed {seconds:.1f} s after it came back")
