"""Celery tasks: thin wrappers that take ids and call the app's services."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_process_shutdown
from sqlalchemy.exc import OperationalError

from wellness_perks import dispatch
from wellness_perks.db import get_session
from wellness_perks.services import allocation, mail, sweeper


def database_task(name: str):
    """A task retried with backoff when the database is briefly unreachable (or a deadlock or
    serialisation failure is reported): every task is idempotent, so a re-run is safe."""
    return shared_task(name=name, bind=True, autoretry_for=(OperationalError,),
                       retry_backoff=True, retry_backoff_max=60, max_retries=8)


@database_task("wellness_perks.allocate_claim")
def allocate_claim(self, claim_id: int) -> int:
    result = allocation.allocate_claim(get_session(), claim_id=claim_id)
    return len(result.allocated) if result else 0


@database_task("wellness_perks.allocate_program")
def allocate_program(self, program_id: int) -> int:
    return len(allocation.allocate_program(get_session(), program_id=program_id).allocated)


@database_task("wellness_perks.send_email")
def send_email(self, outbound_id: int) -> str:
    try:
        return mail.send(get_session(), outbound_id=outbound_id)
    except mail.MailRetryLater as later:
        if self.request.is_eager:
            return "queued"  # in-process: don't block the request; the row waits for its retry
        # Attempts are counted on the row; Celery's own limit is only a backstop.
        raise self.retry(countdown=later.countdown, max_retries=None) from None


@database_task("wellness_perks.send_emails")
def send_emails(self, outbound_ids: list[int]) -> dict:
    outcome = mail.send_batch(get_session(), outbound_ids=outbound_ids)
    if not self.request.is_eager:  # in-process, the rows wait for their retry (the sweeper)
        for outbound_id, countdown in outcome.retry.items():
            dispatch.send_email(outbound_id, countdown=countdown)
    return {"sent": len(outcome.sent), "retry": len(outcome.retry),
            "failed": len(outcome.failed), "cancelled": len(outcome.cancelled)}


@shared_task(name="wellness_perks.sweep", autoretry_for=(OperationalError,), max_retries=2)
def sweep() -> dict:
    return sweeper.sweep(get_session()).as_dict()


@worker_process_shutdown.connect
def _close_smtp_connections(**_kwargs) -> None:
    mail.close_pools()
