"""Time a ``wellness-perks`` command in-process, without the interpreter's start-up:

    python -m bench.cli_timer --repeat 5 -- quota SLUG --json

It calls the console script's entry point (``wellness_perks.cli:main``, what the installed
``wellness-perks`` runs) ``--repeat`` times in one process, with the environment it is given,
and prints JSON: for each run the command's wall time and the time spent in SQL statements
(every statement any SQLAlchemy engine executes, timed from cursor execute to its return),
and the last run's output. The first run pays for imports; callers use the later ones.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    sql = {"seconds": 0.0, "statements": 0}

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        sql["seconds"] += time.perf_counter() - conn.info["bench_started"].pop()
        sql["statements"] += 1

    from wellness_perks import main as cli_main  # the `wellness-perks` console script

    runs = []
    output = ""
    for _ in range(args.repeat):
        sql.update(seconds=0.0, statements=0)
        buffer = io.StringIO()
        started = time.perf_counter()
        code = 0
        with contextlib.redirect_stdout(buffer):
            try:
                cli_main(command, standalone_mode=False)
            except SystemExit as exc:
                code = exc.code or 0
        runs.append({"wall_s": time.perf_counter() - started, "sql_s": sql["seconds"],
                     "statements": sql["statements"], "exit": code})
        output = buffer.getvalue()
    json.dump({"runs": runs, "output": output}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
