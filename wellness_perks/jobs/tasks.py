"""The Celery tasks: ids in, one service call, retried where the database was briefly away.

Each is registered under its name in ``dispatch``, which is how the web side publishes them.
"""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_process_shutdown
from sqlalchemy.exc import OperationalError

from .. import dispatch
from ..db import get_session
from ..services import allocation, auth, mail, sweeper


def database_task(name: str):
    """A task retried with backoff when the database is briefly unreachable (or a deadlock or
    serialisation failure is reported): every task is idempotent, so a re-run is safe."""
    return shared_task(name=name, bind=True, autoretry_for=(OperationalError,),
                       retry_backoff=True, retry_backoff_max=60, max_retries=8)


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
    except mail.MailRetryLater as later:
        if self.request.is_eager:
            return "queued"  # in-process: don't block the request; the row waits for its retry
        # Attempts are counted on the row; Celery's own limit is only a backstop.
        raise self.retry(countdown=later.countdown, max_retries=None) from None


@database_task(dispatch.SEND_EMAILS)
def send_emails(self, outbound_ids: list[int]) -> dict:
    outcome = mail.send_batch(get_session(), outbound_ids=outbound_ids)
    if not self.request.is_eager:  # in-process, the rows wait for their retry (the sweeper)
        for outbound_id, countdown in outcome.retry.items():
            dispatch.send_email(outbound_id, countdown=countdown)
    return outcome.counts()


@database_task(dispatch.REQUEST_SIGN_IN)
def request_sign_in(self, address: str) -> bool:
    # Whether the address is on a list is decided here, in the worker: the web request that
    # queued this did the same work for every address.
    return auth.request_sign_in(get_session(), email=address) is not None


@shared_task(name=dispatch.SWEEP, autoretry_for=(OperationalError,), max_retries=2)
def sweep() -> dict:
    return sweeper.sweep(get_session()).as_dict()


@worker_process_shutdown.connect
def _close_smtp_connections(**_kwargs) -> None:
    mail.close_pools()
