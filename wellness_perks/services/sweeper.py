"""The sweeper: finds work whose task was lost and hands it out again.

Run every ``SWEEP_INTERVAL_SECONDS`` by Celery beat (``celery -A worker beat``) and by hand with
``wellness-perks sweep``. It reads the database and enqueues: every task it enqueues is
idempotent, so sweeping a claim or a queued mail that is in fact still in flight costs a no-op.
A mail in ``sending`` is different: it is held by a batch whose lease a live worker renews
every third of ``MAIL_SENDING_TIMEOUT_SECONDS``, so it is taken back only once that lease has
run out (its worker died, or lost the database for that long).

- claims pending longer than ``SWEEP_PENDING_AFTER_SECONDS`` (their message was lost, the broker
  was down when they were made, or their worker died) -> allocate their program;
- programs with waitlisted claims and both room and stock (a trigger was missed) -> allocate;
- mails queued and due: a retry whose time has come (retries are times on the rows, never
  messages held by a worker), or a mail whose message was lost -> send, in batches;
- mails in ``sending`` whose lease ran out (their worker died mid-batch) -> back to queued,
  the interruption recorded, then send; the one message of each batch that may have been in
  flight is marked possibly sent (``possibly_sent_at``).
- import jobs queued whose message was lost (``SWEEP_PENDING_AFTER_SECONDS`` since they were
  last handed out) -> import; running ones whose heartbeat is ``IMPORT_STALE_AFTER_SECONDS``
  old (their worker died) -> queued again and import, from the file's start, or failed
  (``import_interrupted``) once started ``IMPORT_MAX_ATTEMPTS`` times
  (``import_jobs.recover_stuck_jobs``);
- every program's claims of the hours now over -> rolled up per hour (``dashboard.roll_up``),
  which the dashboard reads instead of counting the program's claims.
"""

from __future__ import annotations

import logging
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
from . import dashboard, import_jobs

SWEEP_BATCH = 5000  # pragma: no mutate (a bound on one sweep's work; the next sweep takes the rest)


@dataclass
class SweepReport:
    programs: list[int] = field(default_factory=list)
    mails: list[int] = field(default_factory=list)
    interrupted_mails: list[int] = field(default_factory=list)
    possibly_sent: list[int] = field(default_factory=list)  # of the interrupted mails
    rolled_up: list[int] = field(default_factory=list)  # programs whose hours were rolled up
    imports: list[int] = field(default_factory=list)  # import jobs handed out (again)
    interrupted_imports: list[int] = field(default_factory=list)  # running, their worker gone
    failed_imports: list[int] = field(default_factory=list)  # of those, given up

    def as_dict(self) -> dict:
        return {"programs": self.programs, "mails": self.mails,
                "interrupted_mails": self.interrupted_mails,
                "possibly_sent": self.possibly_sent, "imports": self.imports,
                "interrupted_imports": self.interrupted_imports,
                "failed_imports": self.failed_imports}


def _in_flight(interrupted: list[tuple[int, datetime]]) -> list[int]:
    """Of the messages taken back, those that may have been in flight when their worker
    stopped: the first left of each batch. A batch's messages share their lease (taken, and
    renewed, at one time for all the batch holds) and go out in id order, each recorded
    before the next goes; so of a batch's messages still in ``sending``, the one with the
    smallest id may have reached the SMTP server, and the others were never handed to it."""
    first: dict[datetime, int] = {}
    for outbound_id, lease in interrupted:
        first[lease] = min(outbound_id, first.get(lease, outbound_id))
    return sorted(first.values())


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

    interrupted = q(sa.select(OutboundEmail.id, OutboundEmail.sending_started_at).where(
        OutboundEmail.status == MailStatus.sending,
        OutboundEmail.sending_started_at < stuck_before)
        .order_by(OutboundEmail.id).limit(SWEEP_BATCH)).all()
    session.commit()
    if interrupted:
        report.interrupted_mails = [outbound_id for outbound_id, _lease in interrupted]
        report.possibly_sent = _in_flight(interrupted)
        taken_back = (sa.update(OutboundEmail)
                      .where(OutboundEmail.status == MailStatus.sending,
                             OutboundEmail.sending_started_at < stuck_before)
                      .values(status=MailStatus.queued, next_attempt_at=now,
                              last_error=MailProblem.interrupted)
                      .execution_options(synchronize_session=False))
        q(taken_back.where(OutboundEmail.id.in_(report.possibly_sent))
          .values(possibly_sent_at=now))
        q(taken_back.where(OutboundEmail.id.in_(report.interrupted_mails)))
        session.commit()
        for outbound_id in report.possibly_sent:
            log_event("mail.possibly_sent", logging.WARNING, outbound_id=outbound_id)
    report.mails = list(q(sa.select(OutboundEmail.id).where(
        OutboundEmail.status == MailStatus.queued,
        sa.or_(OutboundEmail.next_attempt_at <= now,
               sa.and_(OutboundEmail.next_attempt_at.is_(None),
                       OutboundEmail.created_at < pending_before)))
        .order_by(OutboundEmail.id).limit(SWEEP_BATCH)).scalars())
    session.commit()
    recovered = import_jobs.recover_stuck_jobs(session, now=now)
    report.imports = recovered.dispatch
    report.interrupted_imports = recovered.interrupted
    report.failed_imports = recovered.failed

    for program_id in report.programs:
        dispatch.allocate_program(program_id)
    if report.mails:
        dispatch.send_emails(report.mails)
    for job_id in report.imports:
        dispatch.import_upload(job_id)
    report.rolled_up = dashboard.roll_up(session, now=now)
    # pragma: no mutate start (the log line only)
    if report.programs or report.mails or report.interrupted_mails or report.imports \
            or report.failed_imports:
        log_event("sweep.done", programs=len(report.programs), mails=len(report.mails),
                  interrupted_mails=len(report.interrupted_mails), imports=len(report.imports),
                  failed_imports=len(report.failed_imports))
    # pragma: no mutate end
    return report
