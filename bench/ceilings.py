"""The ceilings each figure of ours is compared with, measured on the same machine and services:

- HTTP: a minimal Flask endpoint doing one ``SELECT 1`` (``bench/ceiling_app.py``), under the
  product's gunicorn settings, hammered by the same load generator with the same connections;
- SQL: allocation done raw, one code per transaction (one ``UPDATE ... WHERE id = (SELECT ...
  FOR UPDATE SKIP LOCKED)`` in autocommit) by 8 client processes, on a table shaped like the
  product's ``code`` table with the same index;
- SMTP: smtplib over one persistent connection to the same SMTP sink, sending pre-built bytes
  of a message shaped like the product's redemption mail.
"""

from __future__ import annotations

import multiprocessing as mp
import smtplib
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from harness.ports import free_port
from harness.postgres import connect
from harness.stack import Stack, wait_http

from .common import POSTGRES, ProcessWatch, Progress, cpu_between, quantiles
from .load import LoadGenerator, build_request
from .smtp_sink import CEILING_DOMAIN

# --------------------------------------------------------------------------- HTTP


def http_ceiling(*, stack: Stack, gunicorn_args: list[str], connections: int,
                 load_processes: int, seconds: float, watch: ProcessWatch,
                 warmup: float = 1.5) -> dict:
    port = free_port()
    name = "ceiling-gunicorn"
    service = stack.start_gunicorn(port, *gunicorn_args, name=name,
                                   app="bench.ceiling_app:create_app()")
    load = None
    try:
        wait_http(service, f"http://127.0.0.1:{port}/ceiling")
        load = LoadGenerator("127.0.0.1", port, load_processes)
        watch.add("ceiling-web", service.pid)
        for pid in load.pids:
            watch.add("ceiling-load", pid)
        # The same request a claim is: a POST with a session-sized cookie and a form body.
        raw = build_request("POST", "/ceiling", f"127.0.0.1:{port}", "session=" + "x" * 220,
                            b"csrf_token=" + b"y" * 91)
        load.hammer(raw, 200, warmup, connections)  # every worker connected and warm
        progress = Progress("ceiling http")
        before = watch.cpu()
        result = load.hammer(raw, 200, seconds, connections, on_poll=lambda: progress.show(
            f"{load.counts()[0]:,} requests"))
        cpu = cpu_between(before, watch.cpu())
        ok = result["statuses"].get("200", 0)
        elapsed = result["last_done"] - result["first_sent"]
        rate = ok / elapsed if elapsed > 0 else None
        progress.done(f"{ok:,} requests in {elapsed:.1f} s: {rate:,.0f}/s")
        return {"requests_per_s": rate, "requests": ok, "seconds": elapsed,
                "statuses": result["statuses"], "latency_s": quantiles(result["latencies"]),
                "connections": connections, "load_processes": load_processes, "cpu": cpu}
    finally:
        if load:
            load.close()
        stack.stop(name)


# --------------------------------------------------------------------------- SQL

ALLOCATE_ONE = """
UPDATE code SET status = 'assigned', assigned_at = now()
WHERE id = (SELECT id FROM code WHERE program_id = 1 AND status = 'available'
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""


def _sql_client(url: str, start, seconds: float, results) -> None:
    conn = connect(url, autocommit=True)  # each statement its own transaction
    taken = 0
    start.wait()
    began = time.time()
    deadline = time.perf_counter() + seconds
    last = began
    while time.perf_counter() < deadline:
        if conn.execute(ALLOCATE_ONE).fetchone() is None:
            break
        taken += 1
        last = time.time()
    conn.close()
    results.put((taken, began, last))


def sql_ceiling(rows: int, clients: int = 8, max_seconds: float = 20.0) -> dict:
    url = POSTGRES.create_database("wp_bench_ceiling")
    try:
        with connect(url) as conn:
            conn.execute("""CREATE TABLE code (
                id bigserial PRIMARY KEY, program_id integer NOT NULL,
                value varchar(64) NOT NULL, status varchar(16) NOT NULL DEFAULT 'available',
                assigned_at timestamptz, UNIQUE (program_id, value))""")
            conn.execute("CREATE INDEX ix_code_pick ON code (program_id, status, id)")
            conn.execute("INSERT INTO code (program_id, value) SELECT 1, 'RAW-' || g "
                         "FROM generate_series(1, %s) AS g", (rows,))
            conn.execute("VACUUM ANALYZE code")
        ctx = mp.get_context("spawn")
        start = ctx.Event()
        results = ctx.Queue()
        procs = [ctx.Process(target=_sql_client, args=(url, start, max_seconds, results),
                             daemon=True) for _ in range(clients)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # every client connected and waiting
        start.set()
        outcomes = [results.get(timeout=max_seconds + 60) for _ in procs]
        for p in procs:
            p.join(10)
        taken = sum(o[0] for o in outcomes)
        elapsed = max(o[2] for o in outcomes) - min(o[1] for o in outcomes)
        with connect(url) as conn:
            assigned, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT id) FROM code WHERE status = 'assigned'"
            ).fetchone()
        return {"codes_per_s": taken / elapsed if elapsed > 0 else None, "codes": taken,
                "seconds": elapsed, "clients": clients, "rows": rows,
                "consistent": assigned == taken == distinct}
    finally:
        POSTGRES.drop_database(url)


# --------------------------------------------------------------------------- SMTP


def sample_message(i: int) -> bytes:
    """A message shaped like the product's redemption mail (text and HTML alternatives)."""
    code = f"RAW{i:07d}-ABCDEF12"
    text = ("Hello @creator000123,\n\nHere is your code for Mindful Minutes · 6 months:\n\n"
            f"    {code}\n\nRedeem it by 30 June 2027.\n\nHow to redeem:\n"
            f"  - Open https://app.example/redeem?code={code} (your code is filled in), or\n"
            "  1. Open the app and sign in or create an account.\n"
            "  2. Go to redeem a code and enter the code above.\n"
            "  3. Enjoy 6 months free. No card needed.\n\n"
            "You can see your code again at http://127.0.0.1:8000/programs/launch.\n"
            "Keep it to yourself: each code works once.\n\n"
            "Questions or trouble redeeming? Write to help@localhost.\n")
    html = ("<!doctype html><html><body style=\"font-family: sans-serif\">"
            "<p>Hello @creator000123,</p><p>Here is your code for Mindful Minutes · 6 months:"
            f"</p><p style=\"font-size: 1.4em; font-family: monospace\"><strong>{code}</strong>"
            "</p><p>Redeem it by <strong>30 June 2027</strong>.</p><h2>How to redeem</h2>"
            f"<p><a href=\"https://app.example/redeem?code={code}\">Redeem now</a></p><ol>"
            "<li>Open the app and sign in or create an account.</li><li>Go to redeem a code "
            "and enter the code above.</li><li>Enjoy 6 months free. No card needed.</li></ol>"
            "<p>You can see your code again at <a href=\"http://127.0.0.1:8000/programs/launch"
            "\">your perks page</a>.</p><p>Keep it to yourself: each code works once.</p>"
            "<p>Questions or trouble redeeming? Write to <a href=\"mailto:help@localhost\">"
            "help@localhost</a>.</p></body></html>\n")
    message = EmailMessage()
    message["Subject"] = "Your Mindful Minutes · 6 months code"
    message["From"] = "Wellness Perks <perks@bench.example>"
    message["To"] = f"c{i}@{CEILING_DOMAIN}"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="bench.example")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message.as_bytes(policy=SMTP)  # CRLF line ends, as smtplib's send_message sends


def smtp_ceiling(port: int, count: int, max_seconds: float = 20.0) -> dict:
    messages = [sample_message(i) for i in range(count)]
    progress = Progress("ceiling smtp")
    sent = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        started = time.perf_counter()
        deadline = started + max_seconds
        for i, raw in enumerate(messages):
            smtp.sendmail("perks@bench.example", [f"c{i}@{CEILING_DOMAIN}"], raw)
            sent += 1
            if time.perf_counter() > deadline:
                break
            if i % 200 == 0:
                progress.show(f"{sent:,} messages")
        elapsed = time.perf_counter() - started
    progress.done(f"{sent:,} messages in {elapsed:.1f} s: {sent / elapsed:,.0f}/s")
    return {"messages_per_s": sent / elapsed, "messages": sent, "seconds": elapsed,
            "message_bytes": len(messages[0])}
