"""Launch day: the allocation engine's acceptance tests, end to end with real processes.

One stack serves the whole module: a fresh PostgreSQL database, gunicorn (3 sync workers), two
Celery worker processes (``celery -A worker worker -c 1 -n wN@%h``), a private ``redis-server``
as the broker (so a test may kill it and the shared Redis is never touched), and an aiosmtpd
server. Each scenario has its own program and its own creators, so they don't see each other;
the ``launch`` fixture puts the stack back in shape (broker up, two workers, SMTP accepting)
before each one. Creators sign in with links minted as the app mints them and claim through the
real endpoint; the operator's steps go through the installed ``wellness-perks`` CLI. Every
scenario waits (with deadlines) for the work to settle and ends with ``wellness-perks verify``.

1. the launch rush: 300 creators at once, 250 codes, FCFS, one mail each;
2. a country quota;
3. the waitlist served by new stock, then by a raised quota, in claim order;
4. a worker SIGKILLed mid-work, a new worker and the sweeper finish the job;
5. the broker down while creators claim: claims stored, served after it is back and swept;
6. the SMTP server refusing for a while: mails retried with backoff, delivered once.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
import sqlalchemy as sa

from harness.broker import RedisServer
from harness.codes import code_in_clear
from harness.waiting import wait_for
from tests.helpers import redemption_code, service_missing, text_body
from tests.integration.conftest import SignedIn, Stack, require_stack_services, running_stack

pytestmark = pytest.mark.integration

REDEEM_URL = "https://app.example/redeem?code={code}"
POSITION_RE = re.compile(r"You are number <strong>(\d+)</strong> on the waitlist")
RECEIVED_RE = re.compile(r"Task wellness_perks\.(\w+)\[[0-9a-f-]+\] received")
COUNTRIES = ("PK", "IN", "BR", "NG", "US", "GB")
CLAIM_TIMEOUT = 60  # seconds for one claim POST when hundreds queue at gunicorn at once
# Work the sweeper treats as lost: every pending claim, and mails whose batch lease ran out
# (MAIL_SENDING_TIMEOUT_SECONDS, the workers' own: a live worker renews its lease every third of
# it, so a shorter lease here would take back batches still being sent).
SWEEP_NOW = {"SWEEP_PENDING_AFTER_SECONDS": "0"}

_worker_names = (f"w{n}" for n in itertools.count(1))


# --------------------------------------------------------------------------- the stack

WORKER_NICENESS = 5


def worker_pids(st: Stack) -> list[int]:
    """The Celery worker processes and the pool processes each has forked."""
    parents = [worker.proc.pid for worker in st.workers()]
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) in parents:
                children.append(int(entry))
    assert len(children) >= len(parents), (parents, children)
    return parents + children


@pytest.fixture(scope="module")
def launch_stack(mail_catcher, tmp_path_factory):
    require_stack_services(redis=False)  # the broker is a private redis-server
    if why := RedisServer.why_unavailable():
        service_missing("Redis", f"{why} (a private broker is started)")
    tmp = tmp_path_factory.mktemp("launch")
    broker = RedisServer(tmp / "redis").start()
    try:
        # As deployed: beat runs the sweeper (here every 2 s, taking 5 s of pending for lost),
        # which serves what a web process did not publish while its broker circuit was open.
        # Workers at a lower CPU priority than the web, as on a machine the two share.
        settings = {"SWEEP_INTERVAL_SECONDS": "2", "SWEEP_PENDING_AFTER_SECONDS": "5",
                    "WORKER_NICENESS": str(WORKER_NICENESS)}
        with running_stack(mail_catcher, tmp, broker_url=broker.url(0), web_workers=3,
                           settings=settings,
                           workers=[(next(_worker_names), 1), (next(_worker_names), 1)]) as st:
            st.broker = broker
            assert "newest schema" in st.cli("init-db").stdout
            st.start_beat()
            yield st
    finally:
        broker.kill()


@pytest.fixture
def launch(launch_stack: Stack) -> Iterator[Stack]:
    """The module's stack, as each scenario expects it: broker up, two workers, SMTP accepting
    at once (whatever the scenario before it did to them)."""
    st = launch_stack
    if not st.broker.running:
        st.broker.start()
    st.mail.accept_all()
    st.mail.accept_delay = 0.0
    for _ in range(2 - len(st.workers())):
        st.start_worker(next(_worker_names))
    st.services["gunicorn"].ensure_running()
    st.services["beat"].ensure_running()
    yield st
    st.close_browsers()


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class ClaimRow:
    id: int
    email: str
    country: str
    state: str
    reason: str | None
    code: str | None


def set_up_program(st: Stack, tmp_path, slug: str, *, quota: int,
                   creators: list[tuple[str, str]], codes: int,
                   country_quotas: Iterable[str] = ()) -> list[str]:
    """Program, eligibility list (email, country) and a batch of codes, through the CLI."""
    creators_csv = tmp_path / f"{slug}-creators.csv"
    creators_csv.write_text("handle,email,country\n" + "".join(
        f"@{email.split('@')[0]},{email},{country}\n" for email, country in creators))
    options = [f"--country-quota={cq}" for cq in country_quotas]
    st.cli("create-program", "--slug", slug, "--name", f"Launch {slug}", "--quota", str(quota),
           "--redeem-url", REDEEM_URL, *options)
    out = st.cli("import-creators", slug, str(creators_csv)).stdout
    assert f"imported {len(creators)}, duplicate 0, invalid 0" in out, out
    return import_codes(st, tmp_path, slug, codes) if codes else []


def import_codes(st: Stack, tmp_path, slug: str, count: int) -> list[str]:
    values = [f"{slug.upper()}-{secrets.token_hex(4).upper()}" for _ in range(count)]
    path = tmp_path / f"{slug}-codes-{secrets.token_hex(2)}.txt"
    path.write_text("".join(f"{v}\n" for v in values))
    out = st.cli("import-codes", slug, str(path), "--no-expiry").stdout
    assert f"imported {count}, duplicate 0, invalid 0" in out, out
    return values


def emails_for(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:03d}@example.com" for i in range(count)]


def sign_in(st: Stack, slug: str, emails: list[str]) -> dict[str, SignedIn]:
    return st.sign_in(emails, path=f"/programs/{slug}")


def claim_all(st: Stack, slug: str, browsers: Iterable[SignedIn],
              meanwhile: tuple[int, Callable[[], object]] | None = None) -> dict[str, float]:
    """Every creator POSTs the claim form at the same moment (one thread each, released by a
    barrier). Each must be answered 302 back to the program page; returns seconds per claim.

    ``meanwhile=(n, action)``: ``action()`` runs as soon as ``n`` claims have been answered,
    while the others are still on their way.
    """
    browsers = list(browsers)
    barrier = threading.Barrier(len(browsers))
    results: dict[str, tuple[int, str, float] | BaseException] = {}
    answered = itertools.count(1)
    lock = threading.Lock()

    def one(browser: SignedIn) -> None:
        try:
            barrier.wait(timeout=30)
            started = time.monotonic()
            response = browser.http.post(st.url(f"/programs/{slug}/claim"),
                                         data={"csrf_token": browser.csrf_token},
                                         allow_redirects=False, timeout=CLAIM_TIMEOUT)
            results[browser.email] = (response.status_code,
                                      urljoin(st.base_url, response.headers.get("Location", "")),
                                      time.monotonic() - started)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[browser.email] = exc
        if meanwhile is not None:
            with lock:
                if next(answered) == meanwhile[0]:
                    meanwhile[1]()

    threads = [threading.Thread(target=one, args=(b,), daemon=True) for b in browsers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLAIM_TIMEOUT + 40)
    assert not any(t.is_alive() for t in threads), "a claim request hung"
    failed = {email: r for email, r in results.items()
              if not isinstance(r, tuple) or r[:2] != (302, st.url(f"/programs/{slug}"))}
    assert not failed, f"{len(failed)} claims not answered 302: {list(failed.items())[:5]}"
    return {email: r[2] for email, r in results.items()}


def claims(st: Stack, slug: str) -> list[ClaimRow]:
    """The program's claims in claim order (claim id), with each one's code."""
    keys = st.env["CODE_ENCRYPTION_KEY"]
    with st.db() as conn:
        return [ClaimRow(*row[:5], code_in_clear(keys, row[5]) if row[5] else None)
                for row in conn.execute(sa.text(
            "SELECT claim.id, creator.email, claim.country, claim.state, claim.reason, "
            "code.value_encrypted "
            "FROM claim JOIN program ON program.id = claim.program_id "
            "JOIN creator ON creator.id = claim.creator_id "
            "LEFT JOIN code ON code.id = claim.code_id "
            "WHERE program.slug = :slug ORDER BY claim.id"), {"slug": slug})]


def mail_rows(st: Stack, slug: str) -> list[sa.Row]:
    """The program's owed code mails: (id, to_email, kind, status, attempts, last_error)."""
    with st.db() as conn:
        return list(conn.execute(sa.text(
            "SELECT m.id, m.to_email, m.kind, m.status, m.attempts, m.last_error "
            "FROM outboundemail m JOIN claim ON claim.id = m.claim_id "
            "JOIN program ON program.id = claim.program_id "
            "WHERE program.slug = :slug ORDER BY m.id"), {"slug": slug}))


def settled(st: Stack, slug: str, expected_claims: int) -> list[ClaimRow] | None:
    """The claims, once all were made and decided and every code mail owed is sent."""
    rows = claims(st, slug)
    if len(rows) != expected_claims or any(r.state == "pending" for r in rows):
        return None
    mails = mail_rows(st, slug)
    allocated = sum(r.state == "allocated" for r in rows)
    if len(mails) != allocated or any(m.status != "sent" for m in mails):
        return None
    return rows


def wait_settled(st: Stack, slug: str, expected_claims: int, timeout: float = 60,
                 allocated: int | None = None) -> list[ClaimRow]:
    def done():
        rows = settled(st, slug, expected_claims)
        if rows and (allocated is None or sum(r.state == "allocated" for r in rows) == allocated):
            return rows
        return None

    return wait_for(done, timeout=timeout, interval=0.25,
                    what=f"the claims of {slug} to be decided and their mails sent")


def assert_fcfs(rows: list[ClaimRow], allocated: int) -> None:
    """First come, first served: the first ``allocated`` claims by claim id hold a code, the
    rest wait; no code is held twice."""
    states = [r.state for r in rows]
    assert states == ["allocated"] * allocated + ["waitlisted"] * (len(rows) - allocated), (
        "not FCFS by claim id: " + "".join("A" if s == "allocated" else "w" for s in states))
    codes = [r.code for r in rows if r.state == "allocated"]
    assert None not in codes and len(set(codes)) == len(codes)
    assert all(r.code is None for r in rows if r.state == "waitlisted")


def assert_code_mails(st: Stack, rows: list[ClaimRow], exactly_once: bool = True) -> None:
    """One mail per allocated creator carrying the code the database gave them; none to the
    others. (Only a send cut off by SIGKILL may legitimately repeat: see the worker test.)"""
    received: dict[str, list] = {r.email: [] for r in rows}
    for message in st.mail.to_any(received, "code"):
        received[message["To"]].append(message)
    for row in rows:
        got = received[row.email]
        if row.state != "allocated":
            assert got == [], f"{row.email} ({row.state}) was mailed a code"
            continue
        assert got, f"no code mail to {row.email}"
        if exactly_once:
            assert len(got) == 1, f"{len(got)} code mails to {row.email}"
        assert {redemption_code(m) for m in got} == {row.code}
        assert REDEEM_URL.format(code=row.code) in text_body(got[0])


def waitlist_positions(st: Stack, slug: str, browsers: dict[str, SignedIn],
                       rows: list[ClaimRow]) -> list[int]:
    """The position each waitlisted creator sees on the program page, in claim order."""
    positions = []
    for row in rows:
        if row.state != "waitlisted":
            continue
        page = browsers[row.email].http.get(st.url(f"/programs/{slug}"), timeout=30)
        assert page.status_code == 200
        match = POSITION_RE.search(page.text)
        assert match, f"no waitlist position on the page of {row.email}"
        positions.append(int(match.group(1)))
    return positions


def verify(st: Stack, slug: str) -> None:
    result = st.cli("verify", slug, "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], report["violations"][:10]


def received_tasks(st: Stack) -> dict[str, int]:
    return {w.name: len(RECEIVED_RE.findall(w.output())) for w in st.workers()}


# --------------------------------------------------------------------------- 1. launch rush


def test_launch_rush_300_creators_250_codes_two_workers(launch, tmp_path):
    slug = "rush"
    emails = emails_for("rush", 300)
    set_up_program(launch, tmp_path, slug, quota=250, codes=250,
                   creators=[(e, COUNTRIES[i % len(COUNTRIES)]) for i, e in enumerate(emails)])
    browsers = sign_in(launch, slug, emails)
    assert len(launch.workers()) == 2
    tasks_before = received_tasks(launch)

    seconds = claim_all(launch, slug, browsers.values())
    rows = wait_settled(launch, slug, 300, timeout=90)

    assert Counter(r.state for r in rows) == {"allocated": 250, "waitlisted": 50}
    assert_fcfs(rows, 250)  # the 50 waitlisted are the 50 latest claims
    assert waitlist_positions(launch, slug, browsers, rows) == list(range(1, 51))
    assert_code_mails(launch, rows)
    assert len(launch.mail.to_any(emails, "code")) == 250
    summary = launch.quota(slug)
    assert (summary["allocated"], summary["remaining"], summary["in_stock"]) == (250, 0, 0)
    assert summary["claims"] == {"pending": 0, "allocated": 250, "waitlisted": 50, "refused": 0}
    # Both worker processes took part, they and their pool processes at WORKER_NICENESS.
    pids = worker_pids(launch)
    assert {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == dict.fromkeys(
        pids, WORKER_NICENESS)
    for worker in launch.workers():  # each leads its session; so does its scheduling group
        autogroup = Path(f"/proc/{worker.proc.pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text().split()[-2:] == ["nice", str(WORKER_NICENESS)]
    tasks_after = received_tasks(launch)
    assert all(tasks_after[name] > tasks_before.get(name, 0) for name in tasks_after), tasks_after
    verify(launch, slug)
    print(f"\nrush: slowest claim {max(seconds.values()):.2f}s, "
          f"median {sorted(seconds.values())[150]:.2f}s; tasks received {tasks_after}")


# --------------------------------------------------------------------------- 2. country quota


def test_country_quota_caps_one_country_only(launch, tmp_path):
    slug = "countries"
    pk = emails_for("pk", 30)
    others = emails_for("intl", 30)
    creators = [(e, "PK") for e in pk] + [(e, COUNTRIES[1 + i % 5]) for i, e in enumerate(others)]
    set_up_program(launch, tmp_path, slug, quota=100, codes=100, creators=creators,
                   country_quotas=["PK=10"])
    browsers = sign_in(launch, slug, pk + others)
    # Claims arrive interleaved, in a random order.
    order = list(browsers.values())
    secrets.SystemRandom().shuffle(order)

    claim_all(launch, slug, order)
    rows = wait_settled(launch, slug, 60)

    pk_rows = [r for r in rows if r.country == "PK"]
    other_rows = [r for r in rows if r.country != "PK"]
    assert sum(r.state == "allocated" for r in pk_rows) == 10
    assert_fcfs(pk_rows, 10)  # the first ten PK claims by claim id
    assert {(r.state, r.reason) for r in pk_rows[10:]} == {("waitlisted", "country_quota_reached")}
    assert {r.state for r in other_rows} == {"allocated"}
    codes = [r.code for r in rows if r.code]
    assert len(codes) == len(set(codes)) == 40
    assert_code_mails(launch, rows)
    summary = launch.quota(slug)
    assert summary["countries"] == {"PK": {"quota": 10, "allocated": 10, "remaining": 0}}
    assert summary["claims"] == {"pending": 0, "allocated": 40, "waitlisted": 20, "refused": 0}
    verify(launch, slug)


# --------------------------------------------------------------------------- 3. waitlist served


def test_waitlist_served_in_claim_order_by_new_stock_then_raised_quota(launch, tmp_path):
    slug = "restock"
    emails = emails_for("restock", 25)
    first_batch = set_up_program(launch, tmp_path, slug, quota=20, codes=10,
                                 creators=[(e, "PK") for e in emails])
    browsers = sign_in(launch, slug, emails)
    claim_all(launch, slug, browsers.values())

    # Stock runs out first: ten allocated, fifteen waiting in claim order.
    rows = wait_settled(launch, slug, 25)
    assert_fcfs(rows, 10)
    assert {r.reason for r in rows[10:]} == {"out_of_stock"}
    assert {r.code for r in rows[:10]} == set(first_batch)
    assert waitlist_positions(launch, slug, browsers, rows) == list(range(1, 16))

    # A new batch of 15 codes: the quota (20) lets ten more through, the next ten in line.
    second_batch = import_codes(launch, tmp_path, slug, 15)
    rows = wait_settled(launch, slug, 25, allocated=20)
    assert_fcfs(rows, 20)
    assert {r.code for r in rows[10:20]} <= set(second_batch)
    assert waitlist_positions(launch, slug, browsers, rows) == list(range(1, 6))
    summary = launch.quota(slug)
    assert (summary["allocated"], summary["remaining"], summary["in_stock"]) == (20, 0, 5)

    # The quota is the limit now: raising it by three serves the next three in line.
    launch.cli("set-quota", slug, "--quota", "23")
    rows = wait_settled(launch, slug, 25, allocated=23)
    assert_fcfs(rows, 23)
    assert waitlist_positions(launch, slug, browsers, rows) == [1, 2]
    summary = launch.quota(slug)
    assert (summary["allocated"], summary["remaining"], summary["in_stock"]) == (23, 0, 2)
    assert_code_mails(launch, rows)
    verify(launch, slug)


# --------------------------------------------------------------------------- 4. worker killed


def test_worker_killed_mid_work_new_worker_and_sweep_finish(launch, tmp_path):
    slug = "killed"
    emails = emails_for("killed", 160)
    set_up_program(launch, tmp_path, slug, quota=150, codes=150,
                   creators=[(e, COUNTRIES[i % len(COUNTRIES)]) for i, e in enumerate(emails)])
    browsers = sign_in(launch, slug, emails)
    # A slow mail server (50 ms a message): sending 150 mails keeps both workers busy for
    # seconds, so the kill below lands while allocations or mails are in flight.
    launch.mail.accept_delay = 0.05

    claim_all(launch, slug, browsers.values())
    wait_for(lambda: len(launch.mail.to_any(emails, "code")) >= 15, timeout=60,
             what="the first code mails")
    victim = launch.workers()[0]
    in_flight = Counter(m.status for m in mail_rows(launch, slug))
    victim.kill()  # SIGKILL to its process group: the worker and its pool child
    assert not victim.running
    replacement = launch.start_worker(next(_worker_names))

    def finished():
        # What was lost with the victim (the messages it had taken, the mail it was sending)
        # is found by the sweeper; re-sweeping work still in flight is a no-op.
        launch.cli("sweep", env=SWEEP_NOW)
        return settled(launch, slug, 160)

    rows = wait_for(finished, timeout=120, interval=1.5,
                    what="every claim decided and every mail sent after the sweep")

    assert_fcfs(rows, 150)
    assert_code_mails(launch, rows, exactly_once=False)
    # Only an SMTP conversation cut off by the kill can have an unknown outcome, and the victim
    # (-c 1) had at most one: that mail alone may arrive twice, with the same Message-ID.
    by_recipient: dict[str, list] = {}
    for message in launch.mail.to_any(emails, "code"):
        by_recipient.setdefault(message["To"], []).append(message)
    repeated = {to: msgs for to, msgs in by_recipient.items() if len(msgs) > 1}
    assert len(repeated) <= 1 and all(len(msgs) == 2 for msgs in repeated.values()), {
        to: len(msgs) for to, msgs in repeated.items()}
    for msgs in repeated.values():
        assert len({m["Message-ID"] for m in msgs}) == 1
    attempts = {m.to_email: m.attempts for m in mail_rows(launch, slug)}
    assert all(attempts[to] == 2 for to in repeated)
    replacement.ensure_running()
    verify(launch, slug)
    print(f"\nkilled {victim.name} with mails {dict(in_flight)}; "
          f"repeated deliveries: {len(repeated)}; retried rows: "
          f"{sum(a > 1 for a in attempts.values())}")


# --------------------------------------------------------------------------- 5. broker down


def test_broker_down_claims_stored_then_served_after_sweep(launch, tmp_path):
    slug = "outage"
    emails = emails_for("outage", 45)
    set_up_program(launch, tmp_path, slug, quota=45, codes=45,
                   creators=[(e, COUNTRIES[i % len(COUNTRIES)]) for i, e in enumerate(emails)])
    browsers = sign_in(launch, slug, emails)
    before, rush, down, back = emails[:10], emails[10:30], emails[30:40], emails[40:]

    claim_all(launch, slug, [browsers[e] for e in before])
    wait_settled(launch, slug, 10, allocated=10)

    # The broker dies in the middle of a rush (once 5 of its 20 claims are answered).
    seconds = claim_all(launch, slug, [browsers[e] for e in rush],
                        meanwhile=(5, launch.broker.kill))
    assert not launch.broker.running
    # Then, with the broker certainly down, ten more.
    # Degraded, not down: the node still takes claims (a load balancer keeps it).
    health = requests.get(launch.url("/healthz"), timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["checks"]["broker"]["status"] == "error"
    # A broker that is down costs a claim a failed publish, not a hang: claim_all fails any
    # claim not answered 302 within CLAIM_TIMEOUT (how fast is the benchmark's business).
    seconds |= claim_all(launch, slug, [browsers[e] for e in down])
    assert len(seconds) == 30
    # Every claim is stored: those made while the broker was gone wait, pending, for the sweeper
    # (some of the rush's may have been served before it died).
    rows = {r.email: r for r in claims(launch, slug)}
    assert len(rows) == 40
    assert {rows[e].state for e in rush} <= {"pending", "allocated"}
    assert Counter(rows[e].state for e in down) == {"pending": 10}

    launch.broker.start()  # same port, empty: every message published before is gone

    def swept(count):
        # Beat's job, done here on demand: processes that saw the broker fail skip publishing
        # for BROKER_RETRY_AFTER_SECONDS (a circuit breaker) and leave their rows to the sweeper.
        def done():
            launch.cli("sweep", env=SWEEP_NOW)
            return settled(launch, slug, count)
        return wait_for(done, timeout=90, interval=1.5,
                        what=f"{count} claims decided and mailed after sweeping")

    assert sum(r.state == "allocated" for r in swept(40)) == 40
    # Claims made once the broker is back are served (published, or swept).
    claim_all(launch, slug, [browsers[e] for e in back])
    rows = swept(45)

    assert_fcfs(rows, 45)
    assert_code_mails(launch, rows)
    assert requests.get(launch.url("/healthz"), timeout=30).status_code == 200
    verify(launch, slug)
    print(f"\nbroker down: slowest claim {max(seconds.values()):.2f}s")


# --------------------------------------------------------------------------- 6. SMTP refusing


def test_smtp_refusing_for_a_while_mails_retried_and_delivered_once(launch, tmp_path):
    slug = "smtp-down"
    emails = emails_for("smtpdown", 12)
    set_up_program(launch, tmp_path, slug, quota=12, codes=12,
                   creators=[(e, "IN") for e in emails])
    browsers = sign_in(launch, slug, emails)
    refused_before = launch.mail.refused
    launch.mail.refuse_all("451 4.3.0 try again later")

    claim_all(launch, slug, browsers.values())

    def refused_twice_each():
        rows = mail_rows(launch, slug)
        return len(rows) == 12 and all(
            m.status in ("queued", "sending") and m.attempts >= 2 for m in rows)

    # Backoff with MAIL_RETRY_BASE_SECONDS=1: attempts at about 0, 1, 3 seconds.
    wait_for(refused_twice_each, timeout=30, interval=0.1,
             what="every code mail to be refused at least twice, none sent")
    assert all("451" in (m.last_error or "") for m in mail_rows(launch, slug)
               if m.status == "queued")
    assert launch.mail.to_any(emails) == []
    launch.mail.accept_all()

    rows = wait_settled(launch, slug, 12, allocated=12, timeout=60)
    assert_code_mails(launch, rows)  # exactly one each
    mails = mail_rows(launch, slug)
    assert {(m.status, m.last_error) for m in mails} == {("sent", None)}
    # Refused at least once (the attempt in flight when the server relented may have gone through).
    assert all(m.attempts >= 2 for m in mails), [m.attempts for m in mails]
    assert launch.mail.refused - refused_before == sum(m.attempts - 1 for m in mails)
    verify(launch, slug)
