"""The benchmark's results file: a run never overwrites an earlier run's figures."""

from __future__ import annotations

import json

from bench.common import write_results


def _run(commit: str, figure: int) -> dict:
    return {"git": {"commit": commit}, "claims_per_second": figure}


def test_first_run_of_a_name_takes_the_plain_name(tmp_path):
    path = write_results("2026-12-02-2000", _run("c9bbb4ebe6aa", 1), directory=tmp_path)
    assert path == tmp_path / "2026-12-02-2000.json"
    assert json.loads(path.read_text())["claims_per_second"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["2026-12-02-2000.json"]  # no .tmp left


def test_later_runs_get_the_commit_then_a_number_and_keep_every_earlier_file(tmp_path):
    paths = [write_results("2026-12-02-2000", _run("c9bbb4ebe6aa", n), directory=tmp_path)
             for n in range(4)]
    assert [p.name for p in paths] == [
        "2026-12-02-2000.json",
        "2026-12-02-2000-c9bbb4e.json",
        "2026-12-02-2000-c9bbb4e-2.json",
        "2026-12-02-2000-c9bbb4e-3.json",
    ]
    assert [json.loads(p.read_text())["claims_per_second"] for p in paths] == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_a_run_outside_git_is_numbered(tmp_path):
    first = write_results("scale", {}, directory=tmp_path)
    second = write_results("scale", {}, directory=tmp_path)
    assert (first.name, second.name) == ("scale.json", "scale-2.json")
