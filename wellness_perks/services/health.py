"""Health: whether the system is doing the work it owes, told truthfully and within a second.

``check`` is what ``GET /healthz`` and ``wellness-perks health`` report; ``measure`` is what
``GET /metrics`` exposes. The status is one of:

- ``error``: the database does not answer. Nothing can be recorded: the one case a load
  balancer should take this node out (``/healthz`` answers 503);
- ``degraded``: the node takes claims (they wait in the database) but work owed is not being
  done or may not be: the broker does not answer; a queue has no live worker consuming it; a
  claim has been pending, or a mail due, for longer than ``HEALTH_GRACE_SECONDS``; a mail's send
  attempt outlived its lease by that long. Failed mails are counted, not degrading: they need
  an operator (``resend-failed``), not a restart; so are the mails marked possibly sent (an
  attempt cut off mid-send: the creator may hold two copies), per program;
- ``ok``: none of that.

Every number comes from an index range bounded by the work outstanding (pending claims, mails
not sent), or from a program's counters; never from a scan of the codes, the claims decided or
the mails sent, but for the mails marked possibly sent (``_POSSIBLY_SENT``: the mark has no
index yet, which needs a migration). The broker and the workers are asked with short timeouts
(``broker``): a broker or a worker that hangs makes its check fail, not the answer wait.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session

from .. import broker
from ..models import Claim, ClaimState, MailStatus, OutboundEmail, Program


class Status(enum.StrEnum):
    ok = "ok"
    degraded = "degraded"
    error = "error"
    not_configured = "not_configured"  # no broker: tasks run in-process


_RANK = {Status.ok: 0, Status.not_configured: 0, Status.degraded: 1, Status.error: 2}


def worst(*statuses: Status) -> Status:
    found = max(statuses, key=_RANK.__getitem__, default=Status.ok)
    return Status.ok if found == Status.not_configured else found


@dataclass
class Health:
    status: Status
    checks: dict[str, dict] = field(default_factory=dict)
    grace_seconds: int = 0

    def as_dict(self) -> dict:
        return {"status": self.status.value, "grace_seconds": self.grace_seconds,
                "checks": self.checks}

    def lines(self) -> list[str]:
        """One line per check, for the command line: ``name: status key=value ...``."""
        out = [f"health: {self.status}"]
        for name, check in self.checks.items():
            details = " ".join(f"{k}={_word(v)}" for k, v in check.items() if k != "status")
            out.append(f"{name}: {check['status']}" + (f" {details}" if details else ""))
        return out


def _word(value) -> str:
    if isinstance(value, dict):
        return ";".join(f"{k}:{_word(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


# --------------------------------------------------------------------------- database figures

_program, _claim, _mail = Program.__table__.c, Claim.__table__.c, OutboundEmail.__table__.c


def _claims_in(state: ClaimState) -> sa.ScalarSelect:
    # Literal states, not parameters: a prepared generic plan still ranges over
    # ix_claim_program_state (program_id, state, id) for each program.
    return (sa.select(sa.func.count()).select_from(Claim.__table__)
            .where(_claim.program_id == _program.id, _claim.state == sa.literal_column(
                f"'{state.value}'")).correlate(Program.__table__).scalar_subquery())


# The first pending claim of each program in claim order (one index entry, one row).
_FIRST_PENDING = (sa.select(_claim.requested_at)
                  .where(_claim.program_id == _program.id,
                         _claim.state == sa.literal_column(f"'{ClaimState.pending.value}'"))
                  .order_by(_claim.id).limit(1).correlate(Program.__table__).scalar_subquery())

_PROGRAMS = sa.select(
    _program.id, _program.slug, _program.quota, _program.allocated_count,
    _program.in_stock_count, _claims_in(ClaimState.pending).label("pending"),
    _claims_in(ClaimState.waitlisted).label("waitlisted"),
    _claims_in(ClaimState.refused).label("refused"), _FIRST_PENDING.label("first_pending"),
).order_by(_program.id)

_PENDING = sa.select(_program.id, _claims_in(ClaimState.pending).label("pending"),
                     _FIRST_PENDING.label("first_pending"))

_NOT_SENT = tuple(s.value for s in MailStatus if s != MailStatus.sent)
_MAILS_BY_STATUS = (sa.select(_mail.status, sa.func.count())
                    .where(_mail.status.in_([sa.literal(s, literal_execute=True)
                                             for s in _NOT_SENT]))
                    .group_by(_mail.status))
_QUEUED = sa.literal_column(f"'{MailStatus.queued.value}'")
_SENDING = sa.literal_column(f"'{MailStatus.sending.value}'")
# ix_outbound_status (status, next_attempt_at): a retry's due time is its first entry; a mail
# never attempted (no next attempt) is due since it was made, read over those rows only.
_FIRST_RETRY_DUE = (sa.select(_mail.next_attempt_at)
                    .where(_mail.status == _QUEUED, _mail.next_attempt_at.is_not(None))
                    .order_by(_mail.next_attempt_at).limit(1))
_FIRST_NEW_DUE = sa.select(sa.func.min(_mail.created_at)).where(
    _mail.status == _QUEUED, _mail.next_attempt_at.is_(None))
_FIRST_LEASE = sa.select(sa.func.min(_mail.sending_started_at)).where(_mail.status == _SENDING)
# Code mails marked possibly sent, by program (a sign-in mail has no claim: not counted). The
# mark stays once the mail is sent again, as a failed mail stays counted until resent.
_POSSIBLY_SENT = (sa.select(_program.slug, sa.func.count())
                  .select_from(OutboundEmail.__table__
                               .join(Claim.__table__, _claim.id == _mail.claim_id)
                               .join(Program.__table__, _program.id == _claim.program_id))
                  .where(_mail.possibly_sent_at.is_not(None))
                  .group_by(_program.slug).order_by(_program.slug))


def _bounded(session: Session) -> None:
    """A database that hangs makes the check fail within the second, not wait."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL statement_timeout = 500"))


def _age(now: datetime, since: datetime | None) -> float:
    return 0.0 if since is None else max((now - since).total_seconds(), 0.0)


@dataclass
class OwedFigures:
    pending: int
    oldest_pending_seconds: float
    mails: dict[str, int]
    oldest_due_mail_seconds: float
    oldest_lease_seconds: float
    possibly_sent: dict[str, int]  # program slug -> its mails marked possibly sent (if any)


def _owed(session: Session, now: datetime) -> OwedFigures:
    pending, first_pending = 0, None
    for _id, count, first in session.execute(_PENDING):
        pending += count
        if first is not None and (first_pending is None or first < first_pending):
            first_pending = first
    mails = dict.fromkeys(_NOT_SENT, 0) | dict(session.execute(_MAILS_BY_STATUS).all())
    due = [d for d in (session.execute(_FIRST_RETRY_DUE).scalar(),
                       session.execute(_FIRST_NEW_DUE).scalar()) if d is not None]
    return OwedFigures(pending=pending, oldest_pending_seconds=_age(now, first_pending),
                       mails=mails, oldest_due_mail_seconds=_age(now, min(due, default=None)),
                       oldest_lease_seconds=_age(now, session.execute(_FIRST_LEASE).scalar()),
                       possibly_sent=dict(session.execute(_POSSIBLY_SENT).all()))


# --------------------------------------------------------------------------- the checks


def check_database(session: Session) -> Health:
    """Whether this node can record claims: its database answers. What a load balancer (and
    anybody who is not an operator) is told; it asks nothing of the broker or the workers, so
    however often it is called it costs one round trip."""
    try:
        _bounded(session)
        session.execute(sa.text("SELECT 1"))
        database = {"status": Status.ok}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        database = {"status": Status.error, "error": type(exc).__name__}
    finally:
        session.rollback()
    return Health(status=database["status"], checks={"database": database},
                  grace_seconds=current_app.config["HEALTH_GRACE_SECONDS"])


def check(session: Session, *, now: datetime | None = None) -> Health:
    """The database, the broker, the workers of each queue, and the work owed."""
    config = current_app.config
    grace = config["HEALTH_GRACE_SECONDS"]
    lease = config["MAIL_SENDING_TIMEOUT_SECONDS"]
    now = now or datetime.now(UTC)
    checks: dict[str, dict] = {}

    owed = None
    try:
        _bounded(session)
        owed = _owed(session, now)
        checks["database"] = {"status": Status.ok}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = {"status": Status.error, "error": type(exc).__name__}
    finally:
        session.rollback()

    checks["broker"], checks["queues"] = _broker_and_queues()

    if owed is None:
        checks["claims"] = {"status": Status.error, "error": "database"}
        checks["mails"] = {"status": Status.error, "error": "database"}
    else:
        checks["claims"] = {
            "status": Status.degraded if owed.oldest_pending_seconds > grace else Status.ok,
            "pending": owed.pending,
            "oldest_pending_seconds": round(owed.oldest_pending_seconds, 1)}
        late = (owed.oldest_due_mail_seconds > grace
                or (owed.mails[MailStatus.sending] and owed.oldest_lease_seconds > lease + grace))
        checks["mails"] = {
            "status": Status.degraded if late else Status.ok,
            **{state: owed.mails[state] for state in (MailStatus.queued, MailStatus.sending,
                                                      MailStatus.failed)},
            "oldest_due_seconds": round(owed.oldest_due_mail_seconds, 1),
            "oldest_sending_seconds": round(owed.oldest_lease_seconds, 1),
            "possibly_sent": owed.possibly_sent}

    status = worst(*(c["status"] for c in checks.values()))
    if checks["database"]["status"] == Status.error:
        status = Status.error
    elif status == Status.error:
        status = Status.degraded  # only the database makes the node unable to take claims
    return Health(status=status, checks=checks, grace_seconds=grace)


def _broker_and_queues() -> tuple[dict, dict]:
    if not broker.configured():
        note = {"status": Status.not_configured}
        return note, dict(note)
    queues = broker.queue_names()
    try:
        broker.ping()
        depths = broker.queue_depths(queues)
    except broker.BrokerUnavailable as exc:
        return ({"status": Status.error, "error": str(exc)},
                {"status": Status.degraded, "error": "broker"})
    try:
        consumed = broker.consumers()
    except broker.BrokerUnavailable as exc:
        return ({"status": Status.error, "error": str(exc)},
                {"status": Status.degraded, "error": "broker"})
    per_queue = {q: {"workers": consumed.get(q, []), **({"depth": depths[q]} if q in depths
                                                        else {})} for q in queues}
    unserved = [q for q in queues if not consumed.get(q)]
    queues_check: dict = {"status": Status.degraded if unserved else Status.ok}
    if unserved:
        queues_check["without_worker"] = unserved
    queues_check.update(per_queue)
    return {"status": Status.ok}, queues_check


# --------------------------------------------------------------------------- metrics


@dataclass
class Measurements:
    """What ``/metrics`` exposes, read at scrape time."""

    programs: list[dict]
    mails: dict[str, int | None]
    possibly_sent: dict[str, int]  # program slug -> its mails marked possibly sent
    oldest_pending_seconds: float
    oldest_due_mail_seconds: float
    queue_depths: dict[str, int]
    queue_workers: dict[str, int]
    task_failures: dict[str, int]
    status: Status


def measure(session: Session, *, now: datetime | None = None) -> Measurements:
    """Claims by state and program (allocations and stock from the program's counters), mails
    by state (all but ``sent``, whose count would grow with every mail ever sent) and those
    marked possibly sent by program, the oldest
    pending claim and due mail, queue depths and their workers, and task failures."""
    now = now or datetime.now(UTC)
    health = check(session, now=now)
    programs: list[dict] = []
    try:
        _bounded(session)
        for row in session.execute(_PROGRAMS):
            programs.append({
                "program": row.slug, "quota": row.quota, "in_stock": row.in_stock_count,
                "claims": {ClaimState.pending.value: row.pending,
                           ClaimState.waitlisted.value: row.waitlisted,
                           ClaimState.refused.value: row.refused,
                           ClaimState.allocated.value: row.allocated_count}})
        owed = _owed(session, now)
        mails, possibly_sent = dict(owed.mails), dict(owed.possibly_sent)
        oldest_pending, oldest_due = owed.oldest_pending_seconds, owed.oldest_due_mail_seconds
    except Exception:  # noqa: BLE001 - the status says the database is down
        mails, possibly_sent, oldest_pending, oldest_due = {}, {}, 0.0, 0.0
    finally:
        session.rollback()
    queues = health.checks["queues"]
    depths = {q: v["depth"] for q, v in queues.items()
              if isinstance(v, dict) and "depth" in v}
    workers = {q: len(v["workers"]) for q, v in queues.items()
               if isinstance(v, dict) and "workers" in v}
    try:
        failures = broker.task_failures()
    except broker.BrokerUnavailable:
        failures = {}
    return Measurements(programs=programs, mails=mails, possibly_sent=possibly_sent,
                        oldest_pending_seconds=oldest_pending,
                        oldest_due_mail_seconds=oldest_due, queue_depths=depths,
                        queue_workers=workers, task_failures=failures, status=health.status)
