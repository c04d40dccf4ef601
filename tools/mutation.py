"""`make mutation`: mutmut over the rule-bearing service modules, one module at a time.

    python tools/mutation.py [--max-children N] MODULE...   # run each, then print the scores
    python tools/mutation.py --fresh MODULE...              # try every mutant again
    python tools/mutation.py --retry MODULE...              # try the survivors again (new tests)
    python tools/mutation.py --report MODULE...             # print the scores of the last runs
    python tools/mutation.py --survivors MODULE...          # list each surviving mutant's name

Each module is mutated alone and tried against the tests that cover it (MODULES below), on
SQLite only ([tool.mutmut] in pyproject.toml), each run in a process of its own: mutmut keeps
its state in module globals and in the imported copy of the package. Results stay in mutants/
(git-ignored); `mutmut show NAME` prints one mutant's diff. docs/testing.md has the scores and
the reasons for every survivor kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = "wellness_perks/services"
UNIT = "tests/unit/services"

# SQLite only: the PostgreSQL twin of each test runs the same rule code at twice the time.
SQLITE = ["-k", "not postgresql"]
# ... but for the corruptions SQLite cannot stage (a UNIQUE it cannot drop without rebuilding
# the table): a code held by two claims, a code assigned twice, two claims by one creator.
VERIFY_SELECTION = ["-k", "not postgresql or (held and two) or (assigned and twice) "
                          "or (two and creator)"]

# ... and for the outbox's bookkeeping on PostgreSQL (one statement records a message and checks
# the next: a path SQLite, with no UPDATE in a WITH, never takes).
QUEUE_SELECTION = ["-k", "not postgresql or also_checks or writes_a_batch or taken_back"]

# ... and for a sign-in whose connection the server cut (SQLite has no server to cut it).
AUTH_SELECTION = ["-k", "not postgresql or connection_being_cut"]

# module -> (the file mutated, the tests that cover its rules: pytest arguments)
MODULES: dict[str, tuple[str, list[str]]] = {
    "verify": (f"{SERVICES}/verify.py", [f"{UNIT}/test_verify.py", *VERIFY_SELECTION]),
    "allocation": (f"{SERVICES}/allocation.py",
                   [f"{UNIT}/test_allocation.py", f"{UNIT}/test_allocation_properties.py",
                    *SQLITE]),
    "queue": (f"{SERVICES}/mail/queue.py",
              [f"{UNIT}/mail/test_queue.py", f"{UNIT}/mail/test_resend.py",
               f"{UNIT}/test_invitations.py", *QUEUE_SELECTION]),
    "auth": (f"{SERVICES}/auth.py",
             [f"{UNIT}/test_auth.py", f"{UNIT}/test_managers.py", "tests/unit/web/test_auth.py",
              "tests/unit/web/test_sessions.py", "tests/unit/web/console/test_sign_in.py",
              *AUTH_SELECTION]),
    "sweeper": (f"{SERVICES}/sweeper.py", [f"{UNIT}/test_sweeper.py", *SQLITE]),
    "claims": (f"{SERVICES}/claims.py", [f"{UNIT}/test_claims.py", *SQLITE]),
    "codes": (f"{SERVICES}/codes.py", [f"{UNIT}/test_codes.py", *SQLITE]),
    "imports": (f"{SERVICES}/imports.py", [f"{UNIT}/test_imports.py", *SQLITE]),
}

KILLED = {1, 3}          # a test failed (3: pytest's internal error, a kill too)
SURVIVED = {0}
TIMEOUT = {24, -24, 36, 152, 255}  # the mutant hung: it changed behaviour, counted as killed
NO_TESTS = {5, 33}


def mutant_glob(module: str) -> str:
    path, _ = MODULES[module]
    return path.removesuffix(".py").replace("/", ".") + ".*"


def run_one(module: str, max_children: int, names: list[str]) -> None:
    """In this process: mutmut with only this module mutated and only its tests selected.

    Without names, mutmut tries the mutants it has no result for (all of them on a first run;
    a changed function's mutants after an edit); named mutants are tried again whatever their
    result."""
    from mutmut import __main__ as mutmut_main
    from mutmut.configuration import config

    path, tests = MODULES[module]
    cfg = config()
    cfg.only_mutate = [path]
    cfg.pytest_add_cli_args_test_selection = list(tests)
    # mutmut keeps one stats file (which tests reach which function, under which selection):
    # each module keeps its own, or running another module in between would start it over.
    stats, own = ROOT / "mutants" / "mutmut-stats.json", ROOT / "mutants" / f"stats.{module}.json"
    # A module's file is copied plain (and newer than its source) while another module runs:
    # mutmut would take that copy for this module's mutants. Such a copy goes, to be made again.
    copy = ROOT / "mutants" / path
    if copy.exists() and "_mutmut_mutated" not in copy.read_text():
        copy.unlink()
    if own.exists():
        shutil.copy(own, stats)
    else:
        stats.unlink(missing_ok=True)
    try:
        mutmut_main._run(names, max_children)
    finally:
        if stats.exists():
            shutil.copy(stats, own)


def results(module: str) -> dict[str, int | None]:
    meta = ROOT / "mutants" / (MODULES[module][0] + ".meta")
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def score_line(module: str, seconds: float | None = None) -> str:
    codes = list(results(module).values())
    if not codes:
        return f"{module:<11} not run"
    killed = sum(c in KILLED for c in codes)
    timeout = sum(c in TIMEOUT for c in codes)
    survived = sum(c in SURVIVED for c in codes)
    no_tests = sum(c in NO_TESTS for c in codes)
    untried = sum(c is None for c in codes)
    other = len(codes) - killed - timeout - survived - no_tests - untried
    tried = len(codes) - untried
    score = 100.0 * (killed + timeout) / tried if tried else 0.0
    line = (f"{module:<11} {score:6.1f}%  {tried:4d} mutants tried: {killed} killed, "
            f"{timeout} timed out, {survived} survived, {no_tests} without tests, {other} other")
    if untried:
        line += f"; {untried} of {len(codes)} not tried yet"
    if seconds is not None:
        line += f"  ({seconds / 60:.1f} min)"
    return line


def survivors(module: str) -> list[str]:
    return sorted(k for k, c in results(module).items()
                  if c not in KILLED and c not in TIMEOUT)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES),
                        help=f"any of: {' '.join(MODULES)} (default: all)")
    parser.add_argument("--max-children", type=int, default=1,
                        help="mutants tried at once (default 1: a shared machine)")
    parser.add_argument("--fresh", action="store_true", help="try every mutant again")
    parser.add_argument("--retry", action="store_true", help="try the survivors again")
    parser.add_argument("--only", nargs="+", metavar="GLOB", default=[],
                        help="try again only the mutants whose names match, e.g. "
                             "'*.xǁ_Ledgerǁ*' (one module, named before --only)")
    parser.add_argument("--report", action="store_true", help="only print the last scores")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument("--one", nargs="*", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {' '.join(unknown)}; known: {' '.join(MODULES)}")

    if args.one is not None:
        (module,) = args.modules
        run_one(module, args.max_children, args.one)
        return 0
    if args.survivors:
        for module in args.modules:
            for name in survivors(module):
                print(name)
        return 0

    seconds: dict[str, float] = {}
    if not args.report:
        for module in args.modules:
            names = (args.only if args.only else [mutant_glob(module)] if args.fresh
                     else survivors(module) if args.retry else [])
            if args.retry and not names:
                continue
            started = time.monotonic()
            done = subprocess.run([sys.executable, __file__, module,
                                   "--max-children", str(args.max_children), "--one", *names],
                                  cwd=ROOT)
            seconds[module] = time.monotonic() - started
            if done.returncode != 0:
                print(f"mutmut failed on {module} (exit {done.returncode})", file=sys.stderr)
                return done.returncode
    print("\nmutation score per module (killed or timed out / mutants tried):")
    for module in args.modules:
        print("  " + score_line(module, seconds.get(module)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
