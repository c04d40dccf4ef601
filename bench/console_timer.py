"""Time the console's pages in-process: each service call behind a page (each SQL statement it
runs timed on its own), and the whole page through Flask's test client as a signed-in viewer.

    python -m bench.console_timer [--repeat 20] SLUG

``bench/dashboard.py`` calls ``time_console`` on the database it fills; ``make bench-scale``
(``bench/scale.py``) runs this module at each point, in the environment it gives the product
(``DATABASE_URL`` and the rest, read by ``create_app()``), as it runs ``bench/cli_timer.py`` for
``quota``. Run so, it first rolls the hours up as the sweeper would (timed: no beat runs in the
scale run), makes a viewer of its own, then prints JSON and nothing else.

The pages (``PAGES``): the program dashboard, delivery health, the audit log and the eligibility
list search. A statement's time is from the driver's send to its last row; ``SET`` statements
(the planner and timeout settings a service makes) are left out. The first page view of each
address warms the template cache and is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

PAGES = ("dashboard", "delivery", "audit", "eligibility")
VIEWER_PASSWORD = "a bench password of some length"

# What each statement of the dashboard reads, by a fragment of its SQL (None: not a read).
DASHBOARD_READS = (
    ("plan_cache_mode", None),
    ("FROM countryquota", "country quotas"),
    ("FROM outboundemail", "code mails owed or failed"),
    ("FROM codebatch", "code batches"),
    ("max(claimhour.hour)", "last hour rolled up"),
    ("FROM claimhour", "hours rolled up"),
    ("date_trunc", "claims since the last hour rolled up"),
    ("GROUP BY claim.state", "claims not allocated, by state"),
    ("FROM program", "the program's counters"),
)


def summary(samples: list[float]) -> dict:
    return {"median_ms": round(statistics.median(samples) * 1000, 2),
            "max_ms": round(max(samples) * 1000, 2), "runs": len(samples)}


def _read_name(statement: str, index: int, names) -> str | None:
    """A statement's name in the results: from ``names`` when a fragment matches, else
    ``index`` (the statement's place among the call's distinct statements) and the table it
    reads first; None for a setting (``SET ...``)."""
    if statement.lstrip().upper().startswith(("SET ", "RESET ")):
        return None
    for fragment, name in names:
        if fragment in statement:
            return name
    table = re.search(r"\bFROM\s+\(?\s*([\w.]+)", statement)
    return f"read {index}" + (f" ({table.group(1)})" if table else "")


def time_call(engine, session, call: Callable, repeat: int, names=()) -> dict:
    """``call(session)`` ``repeat`` times, each followed by a rollback: its whole time, each
    statement's time by name (with the start of its SQL), and its last result (``result``, not
    for the JSON)."""
    import sqlalchemy as sa

    timings: dict[str, list[float]] = defaultdict(list)
    sent: dict[int, float] = {}
    # A statement is known by its SQL, the same in every run (the values are bound), so a read
    # made in some runs only (an expired object loaded again) does not shift the others' names.
    known: dict[str, str | None] = {}

    def before(_conn, cursor, statement, *_args):
        sent[id(cursor)] = time.perf_counter()

    def after(_conn, cursor, statement, *_args):
        took = time.perf_counter() - sent.pop(id(cursor))
        if statement not in known:
            reads = sum(1 for n in known.values() if n is not None)
            known[statement] = _read_name(statement, reads + 1, names)
        if known[statement] is not None:
            timings[known[statement]].append(took)

    whole: list[float] = []
    result = None
    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            result = call(session)
            whole.append(time.perf_counter() - started)
            session.rollback()
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)
    sql = {name: text for text, name in known.items() if name is not None}
    statements = {name: {**summary(samples), "sql": " ".join(sql[name].split())[:300]}
                  for name, samples in timings.items()}
    return {"service": summary(whole), "statements": statements, "result": result}


def sign_in_viewer(app, email: str, password: str = VIEWER_PASSWORD):
    """A test client signed in to the console as ``email`` (a viewer made beforehand)."""
    client = app.test_client()
    page = client.get("/manage/login")
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
    token = token or re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    response = client.post("/manage/login", data={
        "email": email, "password": password, "csrf_token": token.group(1)})
    if response.status_code != 302:
        raise RuntimeError(f"the viewer could not sign in: {response.status_code}")
    return client


def time_page(client, url: str, repeat: int) -> dict:
    """``GET url`` ``repeat`` + 1 times; the first (warming the template cache) dropped."""
    samples = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        response = client.get(url)
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}")
    return {**summary(samples[1:]), "bytes": len(response.data)}


def _calls(session, program, pages) -> dict[str, list[tuple[str, Callable, tuple]]]:
    """Each page's service calls (label, call, statement names) and its addresses."""
    import sqlalchemy as sa

    from wellness_perks.models import Creator, Eligibility
    from wellness_perks.services import audit, creators, dashboard, health, verify

    calls: dict[str, list] = {}
    urls: dict[str, list[str]] = {}
    base = f"/manage/programs/{program.slug}"
    if "dashboard" in pages:
        calls["dashboard"] = [("program_dashboard", lambda s: dashboard.program_dashboard(
            s, program=program), DASHBOARD_READS)]
        urls["dashboard"] = [base]
    if "delivery" in pages:
        calls["delivery"] = [
            *((f"undelivered_mails {show.value}",
               lambda s, show=show: verify.undelivered_mails(s, program_id=program.id,
                                                             show=show), ())
              for show in verify.Undelivered),
            ("health.check", lambda s: health.check(s), ())]
        urls["delivery"] = [f"{base}/delivery"]
    if "audit" in pages:
        calls["audit"] = [
            ("search, newest", lambda s: audit.search(s, audit.AuditFilter()), ()),
            ("search, the program's", lambda s: audit.search(
                s, audit.AuditFilter(program_id=program.id)), ())]
        urls["audit"] = ["/manage/audit", f"/manage/audit?program={program.slug}"]
    if "eligibility" in pages:
        # A prefix that finds some ten creators of the list, by email and by handle.
        email, handle = session.execute(
            sa.select(Creator.email, Creator.handle).join(
                Eligibility, Eligibility.creator_id == Creator.id)
            .where(Eligibility.program_id == program.id)
            .order_by(Creator.id.desc()).limit(1)).one_or_none() or ("none@", "@none")
        session.rollback()
        by_email, by_handle = email.split("@")[0][:-1], (handle or "@none")[:-1]
        calls["eligibility"] = [
            (f"search {query!r}" if query else "list",
             lambda s, query=query: creators.search_creators(s, program_id=program.id,
                                                              query=query), ())
            for query in ("", by_email, by_handle)]
        urls["eligibility"] = [f"{base}/creators", f"{base}/creators?q={by_email}",
                               f"{base}/creators?q={by_handle.replace('@', '%40')}"]
    return {page: {"calls": calls[page], "urls": urls[page]} for page in calls}


def time_console(app, *, slug: str, repeat: int, viewer: str,
                 pages: tuple[str, ...] = PAGES) -> dict:
    """Each of ``pages`` of program ``slug``: its service calls (``service``, ``statements``),
    its slowest statement (``slowest_read``: the largest median, and that statement's maximum)
    and its page views (``pages``, by address), as ``viewer`` (signed in with
    ``VIEWER_PASSWORD``). The dashboard's numbers go to ``dashboard.numbers``."""
    import sqlalchemy as sa

    from wellness_perks.db import new_session
    from wellness_perks.models import Program

    engine = app.extensions["db_engine"]
    out: dict = {}
    with app.app_context(), new_session() as session:
        program = session.execute(sa.select(Program).where(Program.slug == slug)).scalar_one()
        session.rollback()
        plan = _calls(session, program, pages)
        for page, what in plan.items():
            entry: dict = {"calls": {}}
            for label, call, names in what["calls"]:
                timed = time_call(engine, session, call, repeat, names)
                result = timed.pop("result")
                entry["calls"][label] = timed
                if label == "program_dashboard":
                    entry["numbers"] = {"claims": result.claims, "in_stock": result.in_stock,
                                        "expiring_soon": result.expiring_soon,
                                        "rate_per_hour": round(result.rate_per_hour, 1),
                                        "warnings": [w.code for w in result.warnings]}
            reads = [(f"{label}: {name}", s) for label, c in entry["calls"].items()
                     for name, s in c["statements"].items()]
            name, slowest = max(reads, key=lambda r: r[1]["median_ms"])
            entry["slowest_read"] = {"read": name, **slowest}
            out[page] = entry
    client = sign_in_viewer(app, viewer)
    for page, what in plan.items():
        out[page]["pages"] = {url: time_page(client, url, repeat) for url in what["urls"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.console_timer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slug")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--pages", default=",".join(PAGES),
                   help=f"which pages, comma-separated (default {','.join(PAGES)})")
    args = p.parse_args(argv)
    pages = tuple(x for x in args.pages.split(",") if x)

    from wellness_perks import create_app
    from wellness_perks.db import new_session
    from wellness_perks.services import auth, dashboard

    # The limiter is the served app's: this client signs in once a call, from one address.
    # Standard output is the JSON's alone: anything else printed meanwhile goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        app = create_app({"RATELIMIT_ENABLED": False})
        viewer = f"viewer-{secrets.token_hex(4)}@bench.example"
        with app.app_context(), new_session() as session:
            started = time.perf_counter()
            dashboard.roll_up(session)
            rollup_s = time.perf_counter() - started
            auth.create_manager(session, email=viewer, password=VIEWER_PASSWORD,
                                role="viewer", actor="bench")
        results = time_console(app, slug=args.slug, repeat=args.repeat, viewer=viewer,
                               pages=pages)
    json.dump({"rollup_s": round(rollup_s, 3), "repeat": args.repeat, "pages": results},
              sys.stdout, default=str)
    app.extensions["db_engine"].dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
