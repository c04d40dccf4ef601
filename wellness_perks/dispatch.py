"""Handing work to Celery, always after the rows it names are committed.

With no broker configured the Celery app is eager and the task runs here, in-process. When the
broker cannot take the message, the row stays in the database in its waiting state, so nothing is
lost: the sweeper finds it there. After a failed publish this process stops trying for
``BROKER_RETRY_AFTER_SECONDS`` (a circuit breaker), so a broker that hangs costs one slow request
per process, not one per request; the sweeper covers what was not sent meanwhile.

Each task is named once, here; ``jobs`` defines the tasks under these names and routes them to
their queues. Publishing goes through the Celery app's registry of the current Flask app
(``app.extensions["celery"]``), so this module never imports the tasks: the web process loads
no worker code.

Claims don't get a task each. ``schedule_allocation`` publishes an allocation task for the
program only if none is queued yet: a Redis key (``SET NX``, with a time to live) marks "queued",
and the task deletes it as it starts, *before* it reads the waiting claims. A claim committed
while the key exists is therefore read by the task that set it; one committed after the task
started finds the key gone and queues the next. The key only saves work: losing it (a Redis
restart) costs an extra task at most, and the sweeper covers the rest.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import current_app

from .logs import log_event

# The task names: the only place they are spelled.
ALLOCATE_PROGRAM = "wellness_perks.allocate_program"
SEND_EMAIL = "wellness_perks.send_email"
SEND_EMAILS = "wellness_perks.send_emails"
SWEEP = "wellness_perks.sweep"
REQUEST_SIGN_IN = "wellness_perks.request_sign_in"
IMPORT_UPLOAD = "wellness_perks.import_upload"
SEND_INVITATIONS = "wellness_perks.send_invitations"

SCHEDULED_KEY = "wellness-perks:allocation-queued:{}"
SCHEDULED_TTL_SECONDS = 30

_lock = threading.Lock()
_broker_down_until = 0.0
_redis_clients: dict[str, object] = {}


def schedule_allocation(program_id: int) -> None:
    """Make sure an allocation task for this program will run after this point."""
    if _eager() or _circuit_open(ALLOCATE_PROGRAM, program_id=program_id):
        _enqueue(ALLOCATE_PROGRAM, program_id, program_id=program_id)
        return
    client = _redis()
    key = SCHEDULED_KEY.format(program_id)
    if client is not None:
        try:
            if not client.set(key, "1", nx=True, ex=SCHEDULED_TTL_SECONDS):
                return  # a queued task, not yet started, will read this claim
        except Exception as exc:  # noqa: BLE001 - the broker's Redis is down
            _trip(ALLOCATE_PROGRAM, exc, program_id=program_id)
            return
    if not _enqueue(ALLOCATE_PROGRAM, program_id, program_id=program_id) and client:
        try:
            client.delete(key)
        except Exception:  # noqa: BLE001, S110 - the key expires by itself
            pass


def allocation_starting(program_id: int) -> None:
    """Called by the allocation task before the service reads claims: claims committed from
    now on queue a new task."""
    client = None if _eager() else _redis()
    if client is not None:
        try:
            client.delete(SCHEDULED_KEY.format(program_id))
        except Exception:  # noqa: BLE001, S110 - at worst a later claim waits for the sweeper
            pass


def allocate_program(program_id: int) -> None:
    _enqueue(ALLOCATE_PROGRAM, program_id, program_id=program_id)


def send_email(outbound_id: int) -> None:
    _enqueue(SEND_EMAIL, outbound_id, outbound_id=outbound_id)


def request_sign_in(address: str) -> bool:
    """A sign-in request for this normalised address, decided in a worker (mail queue); False
    when the broker could not take it (nothing is stored for the sweeper: the person asks
    again)."""
    return _enqueue(REQUEST_SIGN_IN, address)


def import_upload(job_id: int) -> bool:
    """Import a committed upload (its import job's row) on the ``imports`` queue; False when
    the broker could not take it (the job stays queued)."""
    return _enqueue(IMPORT_UPLOAD, job_id, job_id=job_id)


def send_invitations(program_id: int, kind: str, actor: str) -> bool:
    """Owe a program's invitations (``kind`` invitation) or reminders (``reminder``) on the
    ``imports`` queue; False when the broker could not take it (nothing was owed: the manager
    asks again)."""
    return _enqueue(SEND_INVITATIONS, program_id, kind, actor, program_id=program_id, kind=kind)


def send_emails(outbound_ids: list[int]) -> None:
    """The mails of one allocation batch, in tasks of ``MAIL_BATCH_SIZE``."""
    size = current_app.config["MAIL_BATCH_SIZE"]
    for start in range(0, len(outbound_ids), size):
        chunk = outbound_ids[start:start + size]
        _enqueue(SEND_EMAILS, chunk, first_outbound_id=chunk[0], count=len(chunk))


def _eager() -> bool:
    return not current_app.config["CELERY_BROKER_URL"]


def _redis():
    url = current_app.config["CELERY_BROKER_URL"]
    if not url.startswith(("redis://", "rediss://")):
        return None
    client = _redis_clients.get(url)
    if client is None:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        _redis_clients[url] = client
    return client


def _circuit_open(task_name: str, **log_fields) -> bool:
    if time.monotonic() < _broker_down_until:
        log_event("task.enqueue_skipped", logging.WARNING, task=task_name,
                  reason="broker unavailable", **log_fields)
        return True
    return False


def _trip(task_name: str, exc: Exception, **log_fields) -> None:
    global _broker_down_until
    with _lock:
        _broker_down_until = time.monotonic() + current_app.config["BROKER_RETRY_AFTER_SECONDS"]
    log_event("task.enqueue_failed", logging.WARNING, task=task_name,
              error=type(exc).__name__, **log_fields)


def _enqueue(task_name: str, *args, **log_fields) -> bool:
    """Publish, for now (never with a countdown or an ETA: a later attempt is a time on its
    row, served by the sweeper); False when the broker could not take it (the rows wait for
    the sweeper)."""
    if not _eager() and _circuit_open(task_name, **log_fields):
        return False
    task = current_app.extensions["celery"].tasks[task_name]
    try:
        task.apply_async(args=args)
    except Exception as exc:  # broker down: the row waits in the database for the sweeper
        _trip(task_name, exc, **log_fields)
        return False
    return True


def reset_circuit() -> None:
    """Forget a past broker failure (tests, and a process that knows the broker is back)."""
    global _broker_down_until
    _broker_down_until = 0.0
