"""Handing work to Celery, always after the rows it names are committed.

With no broker configured the Celery app is eager and the task runs here, in-process. When the
broker cannot take the message, the row stays in the database in its waiting state, so nothing is
lost: the sweeper finds it there. After a failed publish this process stops trying for
``BROKER_RETRY_AFTER_SECONDS`` (a circuit breaker), so a broker that hangs costs one slow request
per process, not one per request; the sweeper covers what was not sent meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import current_app

from .logs import log_event

_lock = threading.Lock()
_broker_down_until = 0.0


def allocate_claim(claim_id: int) -> None:
    _enqueue("allocate_claim", claim_id, claim_id=claim_id)


def allocate_program(program_id: int) -> None:
    _enqueue("allocate_program", program_id, program_id=program_id)


def send_email(outbound_id: int) -> None:
    _enqueue("send_email", outbound_id, outbound_id=outbound_id)


def _enqueue(task_name: str, *args: int, **log_fields: int) -> None:
    global _broker_down_until
    from worker import tasks  # the worker package imports the app, not the other way round

    if time.monotonic() < _broker_down_until:
        log_event("task.enqueue_skipped", logging.WARNING, task=task_name,
                  reason="broker unavailable", **log_fields)
        return
    try:
        getattr(tasks, task_name).apply_async(args=args)
    except Exception as exc:  # broker down: the row waits in the database for the sweeper
        with _lock:
            _broker_down_until = (time.monotonic()
                                  + current_app.config["BROKER_RETRY_AFTER_SECONDS"])
        log_event("task.enqueue_failed", logging.WARNING, task=task_name,
                  error=type(exc).__name__, **log_fields)


def reset_circuit() -> None:
    """Forget a past broker failure (tests, and a process that knows the broker is back)."""
    global _broker_down_until
    _broker_down_until = 0.0
