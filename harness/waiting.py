"""Waiting for work done elsewhere: poll a condition, with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from harness.errors import HarnessError

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition", on_poll: Callable[[], None] | None = None) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something truthy, and return
    that; HarnessError once ``timeout`` s have passed. ``on_poll`` runs after each poll that
    came back empty (a progress line, say). An exception of the predicate ends the wait."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if on_poll:
            on_poll()
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
