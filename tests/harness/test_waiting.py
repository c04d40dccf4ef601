"""Polling with a deadline: the first truthy value, or HarnessError naming what was awaited."""

from __future__ import annotations

import itertools

import pytest

from harness.errors import HarnessError
from harness.waiting import wait_for


def test_returns_the_first_truthy_value():
    polls = itertools.count()
    assert wait_for(lambda: next(polls) >= 3 and "done", timeout=5, interval=0) == "done"


def test_fails_at_the_deadline_naming_what_it_waited_for():
    with pytest.raises(HarnessError, match="timed out after 0.2 s waiting for the moon"):
        wait_for(lambda: None, timeout=0.2, interval=0.01, what="the moon")
