"""The targets ``make bench-scale`` holds the console pages to (issue 15): each page's slowest
read under 50 ms with 1,000,000 codes and 100,000 claims."""

from __future__ import annotations

from bench.scale import CONSOLE_PAGES, CONSOLE_READ_MS, console_targets


def _point(codes: int, claims: int, slowest: dict[str, float]) -> dict:
    pages = {page: {"slowest_read": {"read": f"{page} read", "median_ms": ms, "max_ms": ms * 2,
                                     "runs": 20},
                    "calls": {}, "pages": {}}
             for page, ms in slowest.items()}
    return {"codes_level": codes, "claims_before": claims, "console": {"pages": pages}}


def _verdicts(points) -> dict[str, tuple]:
    return {t["target"].split(":")[0]: (t["value"], t["result"])
            for t in console_targets(points)}


FAST = dict.fromkeys(CONSOLE_PAGES, 12.0)


def test_fast_reads_at_a_million_codes_and_100k_claims_pass_every_page():
    points = [_point(10_000, 0, FAST), _point(1_000_000, 0, FAST),
              _point(1_000_000, 100_000, FAST)]
    assert _verdicts(points) == {title: (12.0, "PASS") for title in CONSOLE_PAGES.values()}
    assert all("1,000,000 codes, 100,000 claims" in t["target"]
               for t in console_targets(points))


def test_each_page_fails_on_its_own_slowest_read():
    for page, title in CONSOLE_PAGES.items():
        slow = {**FAST, page: float(CONSOLE_READ_MS)}  # the bound is strict
        verdicts = _verdicts([_point(1_000_000, 100_000, slow)])
        assert verdicts.pop(title) == (50.0, "FAIL")
        assert {result for _value, result in verdicts.values()} == {"PASS"}


def test_the_largest_point_is_judged_not_a_slower_smaller_one():
    slow = dict.fromkeys(CONSOLE_PAGES, 80.0)
    verdicts = _verdicts([_point(10_000, 100_000, slow), _point(1_000_000, 100_000, FAST)])
    assert {result for _value, result in verdicts.values()} == {"PASS"}


def test_below_a_million_codes_or_100k_claims_the_reads_are_shown_but_not_judged():
    for codes, claims in ((100_000, 100_000), (1_000_000, 1_000), (10_000, 0)):
        slow = dict.fromkeys(CONSOLE_PAGES, 80.0)
        targets = console_targets([_point(codes, claims, slow)])
        assert [(t["value"], t["result"]) for t in targets] == [(80.0, "n/a")] * len(slow)
        assert all(t["note"] for t in targets)


def test_a_run_that_timed_no_page_has_no_value():
    targets = console_targets([{"codes_level": 1_000_000, "claims_before": 100_000}])
    assert [(t["value"], t["result"]) for t in targets] == [(None, "n/a")] * len(CONSOLE_PAGES)
