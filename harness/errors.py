"""The harness's one error."""

from __future__ import annotations


class HarnessError(RuntimeError):
    """The harness could not do what it was asked: a service missing, a process that exited,
    a command that failed, a deadline passed."""
