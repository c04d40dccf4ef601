"""The sweeper: finds work whose task was lost and hands it out again.

Run every ``SWEEP_INTERVAL_SECONDS`` by Celery beat (``celery -A worker beat``) and by hand with
``wellness-perks sweep``. It reads the database and enqueues: every task it enqueues is
idempotent, so sweeping a claim or a queued mail that is in fact still in flight costs a no-op.
A mail in ``sending`` is different: an attempt is only taken for interrupted after
``MAIL_SENDING_TIMEOUT_SECONDS``, which must stay well above ``SMTP_TIMEOUT``, or a slow but
live attempt could be repeated.

- claims pending longer than ``SWEEP_PENDING_AFTER_SECONDS`` (their message was lost, the broker
  was down when they were made, or their worker died) -> allocate their program;
- programs with waitlisted claims and both room and stock (a trigger was missed) -> allocate;
- mails queued and due (their retry message was lost) -> send;
- mails stuck in ``sending`` longer than ``MAIL_SENDING_TIMEOUT_SECONDS`` (their worker died
  mid-attempt) -> back to queued, the interruption recorded, then send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session

from .. import dispatch
from ..logs import log_event
from ..models import (
    Claim,
    ClaimState,
    Code,
    CodeStatus,
    MailProblem,
    MailStatus,
    OutboundEmail,
    Program,
)

SWEEP_BATCH = 5000  # pragma: no mutate (a bound on one sweep's work; the next sweep takes the rest)


@dataclass
class SweepReport:
    programs: list[int] = field(default_factory=list)
    mails: list[int] = field(default_factory=list)
    interrupted_mails: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"programs": self.programs, "mails": self.mails,
                "interrupted_mails": self.interrupted_mails}


def sweep(session: Session, *, now: datetime | None = None) -> SweepReport:
    config = current_app.config
    now = now or datetime.now(UTC)
    report = SweepReport()
    pending_before = now - timedelta(seconds=config["SWEEP_PENDING_AFTER_SECONDS"])
    stuck_before = now - timedelta(seconds=config["MAIL_SENDING_TIMEOUT_SECONDS"])
    q = session.execute

    stale = set(q(sa.select(Claim.program_id).where(Claim.state == ClaimState.pending,
                                                    Claim.requested_at < pending_before)
                  .distinct()).scalars())
    in_stock = (sa.select(Code.id).where(Code.program_id == Program.id,
                                         Code.status == CodeStatus.available)
                .correlate(Program).exists())
    waiting = (sa.select(Claim.id).where(Claim.program_id == Program.id,
                                         Claim.state == ClaimState.waitlisted)
               .correlate(Program).exists())
    servable = set(q(sa.select(Program.id).where(Program.allocated_count < Program.quota,
                                                 in_stock, waiting)).scalars())
    report.programs = sorted(stale | servable)

    interrupted = list(q(sa.select(OutboundEmail.id).where(
        OutboundEmail.status == MailStatus.sending,
        OutboundEmail.sending_started_at < stuck_before).limit(SWEEP_BATCH)).scalars())
    session.commit()
    if interrupted:
        q(sa.update(OutboundEmail)
          .where(OutboundEmail.id.in_(interrupted), OutboundEmail.status == MailStatus.sending,
                 OutboundEmail.sending_started_at < stuck_before)
          .values(status=MailStatus.queued, next_attempt_at=now,
                  last_error=MailProblem.interrupted)
          .execution_options(synchronize_session=False))
        session.commit()
        report.interrupted_mails = interrupted
    report.mails = list(q(sa.select(OutboundEmail.id).where(
        OutboundEmail.status == MailStatus.queued,
        sa.or_(OutboundEmail.next_attempt_at <= now,
               sa.and_(OutboundEmail.next_attempt_at.is_(None),
                       OutboundEmail.created_at < pending_before)))
        .order_by(OutboundEmail.id).limit(SWEEP_BATCH)).scalars())
    session.commit()

    for program_id in report.programs:
        dispatch.allocate_program(program_id)
    for outbound_id in report.mails:
        dispatch.send_email(outbound_id)
    # pragma: no mutate start (the log line only)
    if report.programs or report.mails or report.interrupted_mails:
        log_event("sweep.done", programs=len(report.programs), mails=len(report.mails),
                  interrupted_mails=len(report.interrupted_mails))
    # pragma: no mutate end
    return report
