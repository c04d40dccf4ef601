"""Handing work to Celery, always after the rows it names are committed.

With no broker configured the Celery app is eager and the task runs here, in-process. When the
broker cannot take the message, the row stays in the database in its waiting state, so nothing is
lost: the sweeper (or the next attempt) finds it there.
"""

from __future__ import annotations

import logging

from .logs import log_event


def allocate_claim(claim_id: int) -> None:
    _enqueue("allocate_claim", claim_id, claim_id=claim_id)


def allocate_program(program_id: int) -> None:
    _enqueue("allocate_program", program_id, program_id=program_id)


def send_email(outbound_id: int) -> None:
    _enqueue("send_email", outbound_id, outbound_id=outbound_id)


def _enqueue(task_name: str, *args: int, **log_fields: int) -> None:
    from worker import tasks  # the worker package imports the app, not the other way round

    task = getattr(tasks, task_name)
    try:
        task.apply_async(args=args)
    except Exception as exc:  # broker down: the row waits in the database
        log_event("task.enqueue_failed", logging.WARNING, task=task_name,
                  error=type(exc).__name__, **log_fields)
