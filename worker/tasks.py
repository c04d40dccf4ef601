"""Celery tasks: thin wrappers that take ids and call the app's services."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from wellness_perks.db import get_session
from wellness_perks.services import allocation, mail


@shared_task(
    name="wellness_perks.allocate_claim",
    bind=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
)
def allocate_claim(self, claim_id: int) -> str | None:
    result = allocation.allocate(get_session(), claim_id=claim_id)
    return result.state if result else None


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
