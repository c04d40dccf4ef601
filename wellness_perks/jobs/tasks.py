"""The Celery tasks: ids in, one service call, tried again in-process where the database was
briefly away.

Each is registered under its name in ``dispatch``, which is how the web side publishes them.
No task ever publishes a message with a countdown or an ETA: such a message is held in the
worker's memory, unacknowledged, until it is due, and a broker restart then takes the worker
down with it (kombu, on the dead connection). A mail's next attempt is a time on its row
(``next_attempt_at``) that the sweeper serves; a task that cannot reach the database tries
again here, a few times, and then leaves its rows to the sweeper.
"""

from __future__ import annotations

import functools
import logging
import time

from celery import shared_task
from celery.signals import worker_process_shutdown
from sqlalchemy.exc import OperationalError

from .. import dispatch
from ..db import get_session
from ..logs import log_event
from ..services import allocation, auth, import_jobs, invitations, mail, sweeper

# Waits before each further try of a task the database failed (a disconnect, a deadlock, a
# serialisation failure): about 15 s in all, then the task gives up and its rows wait in their
# waiting state for the sweeper. Every task is idempotent, so trying again is safe.
DATABASE_RETRY_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0)


def database_task(name: str):
    """A task tried again in-process, after ``DATABASE_RETRY_WAITS``, when the database fails
    it; in-process (eager) it is tried once: the request that queued it does not wait."""
    def decorate(run):
        @shared_task(name=name, bind=True)
        @functools.wraps(run)
        def task(self, *args):
            waits = () if self.request.is_eager else DATABASE_RETRY_WAITS
            for wait in (*waits, None):
                try:
                    return run(self, *args)
                except OperationalError as exc:
                    if wait is None:
                        raise
                    log_event("task.database_retry", logging.WARNING, task=name,
                              error=type(exc.orig).__name__, retry_in=wait)
                    get_session().rollback()
                    time.sleep(wait)
            raise AssertionError("unreachable")
        return task
    return decorate


@database_task(dispatch.ALLOCATE_PROGRAM)
def allocate_program(self, program_id: int) -> int:
    # Before the service reads the waiting claims: a claim committed from now on queues the
    # next task, one committed before is read by this one.
    dispatch.allocation_starting(program_id)
    return len(allocation.allocate_program(get_session(), program_id=program_id).allocated)


@database_task(dispatch.SEND_EMAIL)
def send_email(self, outbound_id: int) -> str:
    try:
        return mail.send(get_session(), outbound_id=outbound_id)
    except mail.MailRetryLater:
        return "queued"  # the row holds its next attempt's time; the sweeper serves it


@database_task(dispatch.SEND_EMAILS)
def send_emails(self, outbound_ids: list[int]) -> dict:
    # Mails to retry hold their next attempt's time on their rows; the sweeper serves them.
    return mail.send_batch(get_session(), outbound_ids=outbound_ids).counts()


@database_task(dispatch.REQUEST_SIGN_IN)
def request_sign_in(self, address: str) -> bool:
    # Whether the address is on a list is decided here, in the worker: the web request that
    # queued this did the same work for every address.
    return auth.request_sign_in(get_session(), email=address) is not None


@database_task(dispatch.IMPORT_UPLOAD)
def import_upload(self, job_id: int) -> str:
    return import_jobs.run_import_job(get_session(), job_id=job_id).state


@database_task(dispatch.SEND_INVITATIONS)
def send_invitations(self, program_id: int, kind: str, actor: str) -> int:
    # Started again (a retry here, or the manager's next press), it goes on where it stopped.
    return invitations.send(get_session(), program_id=program_id, kind=kind, actor=actor).queued


@database_task(dispatch.SWEEP)
def sweep(self) -> dict:
    return sweeper.sweep(get_session()).as_dict()


@worker_process_shutdown.connect
def _close_smtp_connections(**_kwargs) -> None:
    mail.close_pools()
