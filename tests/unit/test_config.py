"""Settings read from the environment: a wrong value stops the process with what and where."""

from __future__ import annotations

import re

import pytest

from config import Config


@pytest.mark.parametrize(("raw", "message"), [
    ("ten", "WORKER_NICENESS must be a whole number, got 'ten'"),
    ("-5", "WORKER_NICENESS must be from 0 (as the web) to 19 (lowest priority), got -5"),
    ("20", "WORKER_NICENESS must be from 0 (as the web) to 19 (lowest priority), got 20"),
])
def test_a_worker_niceness_out_of_range_is_refused(monkeypatch, tmp_path, raw, message):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("WORKER_NICENESS", raw)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        Config()


def test_worker_niceness_defaults_to_the_webs(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("WORKER_NICENESS", raising=False)
    assert Config().WORKER_NICENESS == 0
    monkeypatch.setenv("WORKER_NICENESS", "10")
    assert Config().WORKER_NICENESS == 10
