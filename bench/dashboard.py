"""The program dashboard at a launch's scale, timed by hand (no test runs it).

    .venv/bin/python -m bench.dashboard [--codes 1000000] [--claims 100000] [--repeat 20]

A fresh PostgreSQL database (``BENCH_PG_ADMIN_URL``, default the local server as postgres),
migrated, and filled in SQL as imports and allocation leave it: one program with ``--codes``
codes in 10 batches (3 of them expiring within 30 days) and ``--claims`` claims over the last
14 days (90 % allocated, each holding a code, with its assignment and its mail, of which 0.2 %
queued and 0.2 % failed; the rest waitlisted, refused or pending), the counters set to match,
and a second program with its own codes and claims. The sweeper's rollup then rolls the hours
up (timed: the first rollup walks every hour once), and the database is vacuumed and analysed
as autovacuum would have it.

Then, ``--repeat`` times: ``dashboard.program_dashboard`` (each SQL statement timed on its own,
from the driver's send to its last row) and the whole page, ``GET /manage/programs/<slug>`` as
a signed-in viewer through Flask's test client (the view, the service, the template, the SVG):
``bench/console_timer.py``'s timing, which ``make bench-scale`` runs at each of its points too.
Median and maximum of each go to the terminal and to ``bench/results/<day>-dashboard.json``.
The database is dropped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime

import sqlalchemy as sa
from cryptography.fernet import Fernet

from harness.postgres import PostgresServer

from .common import say, today, write_results
from .console_timer import VIEWER_PASSWORD, time_console

ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _fill(codes: int, claims: int) -> list[str]:
    allocated = claims * 9 // 10
    waitlisted, refused = claims // 20, claims // 50
    per_batch = codes // 10
    return [
        "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
        f"in_stock_count, code_pattern, created_at) VALUES (1, 'launch', 'Launch', 6, "
        f"{allocated + 50_000}, {allocated}, {codes - allocated}, '.*', now() - interval "
        "'15 days'), (2, 'other', 'Other', 6, 10000, 0, 10000, '.*', now())",
        "INSERT INTO countryquota (program_id, country, quota, allocated_count) VALUES "
        f"(1, 'PK', {allocated}, {allocated - allocated // 3}), (1, 'IN', {allocated}, "
        f"{allocated // 3})",
        "INSERT INTO codebatch (id, program_id, name, code_count, expires_on, created_at) "
        f"SELECT g, 1, 'batch ' || g, {per_batch}, CASE WHEN g >= 8 THEN current_date + 20 "
        "ELSE current_date + 365 END, now() FROM generate_series(1, 10) g "
        "UNION ALL SELECT 11, 2, 'other', 10000, NULL, now()",
        "INSERT INTO code (id, program_id, batch_id, value_encrypted, key_id, fingerprint, "
        f"status, assigned_at) SELECT g, 1, 1 + (g - 1) / {per_batch}, "
        "convert_to('gAAAAAB-token-' || g || repeat('x', 100), 'UTF8'), 'k1', "
        "sha256(convert_to('C-' || g, 'UTF8')), "
        f"CASE WHEN g <= {allocated} THEN 'assigned' ELSE 'available' END, "
        f"CASE WHEN g <= {allocated} THEN now() END FROM generate_series(1, {codes}) g",
        "INSERT INTO code (id, program_id, batch_id, value_encrypted, key_id, fingerprint, "
        f"status) SELECT {codes} + g, 2, 11, convert_to('t' || g, 'UTF8'), 'k1', "
        "sha256(convert_to('D-' || g, 'UTF8')), 'available' FROM generate_series(1, 10000) g",
        "UPDATE codebatch SET in_stock_count = (SELECT count(*) FROM code "
        "WHERE code.batch_id = codebatch.id AND code.status = 'available')",
        "INSERT INTO creator (id, email, handle, country, locale, login_nonce, "
        "session_version, created_at) SELECT g, 'c' || g || '@example.com', '@c' || g, "
        "CASE WHEN g % 3 = 0 THEN 'IN' ELSE 'PK' END, 'en', 0, 0, now() "
        f"FROM generate_series(1, {claims + 5000}) g",
        # Claims over 14 days, denser towards now (a launch's first hours are its busiest).
        "INSERT INTO claim (id, program_id, creator_id, country, state, reason, code_id, "
        "requested_at, decided_at) SELECT g, 1, g, CASE WHEN g % 3 = 0 THEN 'IN' ELSE 'PK' "
        f"END, CASE WHEN g <= {allocated} THEN 'allocated' WHEN g <= "
        f"{allocated + waitlisted} THEN 'waitlisted' WHEN g <= "
        f"{allocated + waitlisted + refused} THEN 'refused' ELSE 'pending' END, "
        f"CASE WHEN g > {allocated} AND g <= {allocated + waitlisted} THEN 'out_of_stock' "
        f"WHEN g > {allocated + waitlisted} AND g <= {allocated + waitlisted + refused} "
        f"THEN 'not_eligible' END, CASE WHEN g <= {allocated} THEN g END, "
        f"now() - interval '14 days' * power(1 - g::float / {claims + 1}, 2), now() "
        f"FROM generate_series(1, {claims}) g",
        "INSERT INTO claim (id, program_id, creator_id, country, state, reason, requested_at) "
        f"SELECT {claims} + g, 2, {claims} + g, 'PK', 'refused', 'not_eligible', now() "
        "FROM generate_series(1, 5000) g",
        "INSERT INTO codeassignment (code_id, claim_id, program_id, assigned_at) "
        f"SELECT g, g, 1, now() FROM generate_series(1, {allocated}) g",
        "INSERT INTO outboundemail (kind, to_email, creator_id, claim_id, code_id, program_id, "
        "locale, status, attempts, last_error, created_at, sent_at) SELECT 'redemption', "
        "'c' || g || '@example.com', g, g, g, 1, 'en', CASE WHEN g % 500 = 0 THEN 'failed' "
        "WHEN g % 500 = 1 THEN 'queued' ELSE 'sent' END, 1, CASE WHEN g % 500 = 0 THEN "
        "'550 mailbox unavailable' END, now(), CASE WHEN g % 500 > 1 THEN now() END "
        f"FROM generate_series(1, {allocated}) g",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codes", type=int, default=1_000_000)
    p.add_argument("--claims", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)

    from wellness_perks import create_app
    from wellness_perks.db import new_session
    from wellness_perks.migrate import upgrade
    from wellness_perks.services import auth, dashboard

    server = PostgresServer(ADMIN_URL, prefix="wp_dashboard")
    why = server.why_unavailable()
    if why:
        raise SystemExit(f"PostgreSQL is not available: {why}")
    url = server.create_database()
    results: dict = {"codes": args.codes, "claims": args.claims, "repeat": args.repeat,
                     "at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        upgrade(url)
        engine = sa.create_engine(url)
        started = time.perf_counter()
        with engine.begin() as conn:
            for statement in _fill(args.codes, args.claims):
                conn.exec_driver_sql(statement.replace("%", "%%"))
        results["fill_s"] = round(time.perf_counter() - started, 1)
        say(f"filled {args.codes:,} codes and {args.claims:,} claims in {results['fill_s']} s")

        app = create_app({
            "DATABASE_URL": url, "SECRET_KEY": "bench-secret-key-of-at-least-32-bytes",
            "CODE_ENCRYPTION_KEY": Fernet.generate_key().decode(), "BASE_URL": "http://localhost",
            "CELERY_BROKER_URL": "", "RATELIMIT_ENABLED": False,
            "INSTANCE_PATH": tempfile.mkdtemp(prefix="wp-bench-dashboard-"),
        })
        with app.app_context(), new_session() as session:
            started = time.perf_counter()
            rolled = dashboard.roll_up(session)
            results["first_rollup_s"] = round(time.perf_counter() - started, 2)
            auth.create_manager(session, email="viewer@bench.example", password=VIEWER_PASSWORD,
                                role="viewer", actor="bench")
        say(f"first rollup of {len(rolled)} programs' hours: {results['first_rollup_s']} s")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")

        console = time_console(app, slug="launch", repeat=args.repeat,
                               viewer="viewer@bench.example", pages=("dashboard",))["dashboard"]
        timed = console["calls"]["program_dashboard"]
        results["numbers"] = console["numbers"]
        results["statements"] = timed["statements"]
        results["service"] = timed["service"]
        (page,) = console["pages"].values()
        results["page_bytes"] = page.pop("bytes")
        results["page"] = page
        engine.dispose()
        app.extensions["db_engine"].dispose()
    finally:
        server.drop_database(url)

    say(f"numbers: {results['numbers']}")
    for name, figures in sorted(results["statements"].items()):
        say(f"  {name:40} median {figures['median_ms']:7.2f} ms   max {figures['max_ms']:7.2f} ms")
    say(f"  {'program_dashboard() in all':40} median {results['service']['median_ms']:7.2f} ms"
        f"   max {results['service']['max_ms']:7.2f} ms")
    say(f"  {'GET /manage/programs/<slug>':40} median {results['page']['median_ms']:7.2f} ms"
        f"   max {results['page']['max_ms']:7.2f} ms   ({results['page_bytes']:,} bytes)")
    path = write_results(f"{today()}-dashboard", results)
    say(f"written to {path}")


if __name__ == "__main__":
    main()
