"""Celery tasks: thin wrappers that take ids and call the app's services."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from wellness_perks.db import get_session
from wellness_perks.services import allocation, mail, sweeper


@shared_task(
    name="wellness_perks.allocate_claim",
    bind=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
)
def allocate_claim(self, claim_id: int) -> int:
    result = allocation.allocate_claim(get_session(), claim_id=claim_id)
    return len(result.allocated) if result else 0


@shared_task(
    name="wellness_perks.allocate_program",
    bind=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
)
def allocate_program(self, program_id: int) -> int:
    return len(allocation.allocate_program(get_session(), program_id=program_id).allocated)


@shared_task(
    name="wellness_perks.send_email",
    bind=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
)
def send_email(self, outbound_id: int) -> str:
    try:
        return mail.send(get_session(), outbound_id=outbound_id)
    except mail.MailRetryLater as later:
        if self.request.is_eager:
            return "queued"  # in-process: don't block the request; the row waits for its retry
        # Attempts are counted on the row; Celery's own limit is only a backstop.
        raise self.retry(countdown=later.countdown, max_retries=None) from None


@shared_task(name="wellness_perks.sweep", autoretry_for=(OperationalError,), max_retries=2)
def sweep() -> dict:
    return sweeper.sweep(get_session()).as_dict()
