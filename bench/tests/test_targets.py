"""The launch-day targets the bench holds a run to (README "Performance")."""

from __future__ import annotations

import argparse

from bench.launch import CPU_PER_CLAIM_MS, evaluate_targets


def _results(last_mail: float, repeated: int, cpu_seconds: dict, checks_ok: bool = True):
    return {"launch": {"mail": {"last_mail_after_s": last_mail, "repeated": repeated},
                       "cpu": {"seconds": cpu_seconds}},
            "checks": [{"check": "verify passes", "ok": checks_ok, "detail": ""}]}


def _verdicts(results, n=20_000) -> dict[str, tuple]:
    args = argparse.Namespace(n=n, q=n, concurrency=64, capacity=True)
    return {t["target"]: (t["value"], t["result"]) for t in evaluate_targets(results, args)}


def test_a_good_launch_passes_every_target():
    verdicts = _verdicts(_results(50.3, 0, {"web": 40.0, "worker": 30.0, "postgres": 20.0,
                                             "smtp": 10.0, "other": 500.0}))
    assert verdicts == {
        "last redemption mail after first claim (s)": (50.3, "PASS"),
        "invariant violations": (0, "PASS"),
        "creators mailed more than once": (0, "PASS"),
        "all-in CPU per claim (ms)": (5.0, "PASS"),  # other processes' CPU is not ours
    }


def test_each_target_fails_on_its_own():
    cpu = {"web": 60.0, "worker": 40.0, "postgres": 20.0}  # 6 ms a claim
    verdicts = _verdicts(_results(61.0, 2, cpu, checks_ok=False))
    assert {name: result for name, (_value, result) in verdicts.items()} == dict.fromkeys(
        verdicts, "FAIL")
    assert verdicts["all-in CPU per claim (ms)"][0] > CPU_PER_CLAIM_MS


def test_time_and_cpu_targets_apply_to_launch_day_only():
    verdicts = _verdicts(_results(5.0, 0, {"web": 1.0}), n=2_000)
    assert verdicts["last redemption mail after first claim (s)"][1] == "n/a"
    assert verdicts["all-in CPU per claim (ms)"][1] == "n/a"
    assert verdicts["invariant violations"][1] == "PASS"


def _killed(results, possibly_sent: int):
    results["fault"] = {"worker_killed": "worker1", "after_s": 5.0}
    results["launch"]["mail"]["possibly_sent"] = possibly_sent
    return results


def test_with_a_worker_killed_a_repeat_passes_only_if_it_was_in_flight_and_marked():
    cpu = {"web": 40.0}
    args = argparse.Namespace(n=2_000, q=2_000, concurrency=64, capacity=False,
                              celery_concurrency=2)

    def verdict(repeated, marked):
        results = _killed(_results(30.0, repeated, cpu), marked)
        return {t["target"]: t["result"] for t in evaluate_targets(results, args)}[
            "creators mailed more than once"]

    assert verdict(0, 0) == "PASS"
    assert verdict(2, 2) == "PASS"  # one in flight per pool process, each marked
    assert verdict(1, 0) == "FAIL"  # a repeat nobody was told of
    assert verdict(3, 3) == "FAIL"  # more than were in flight
