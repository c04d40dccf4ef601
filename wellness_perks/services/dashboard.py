"""A program's dashboard: every number a manager reads at a glance, at a cost that does not grow
with the program's codes or claims.

- quota, allocations and stock: the program's counters (``programs.quota_summary``), and the
  claims not allocated counted by state on ``ix_claim_program_state``;
- stock per batch and what expires soon: each batch's own counter (``codebatch.in_stock_count``);
- of the allocated claims, those whose code mail is still owed (queued or being sent) or failed:
  the mails in those states, found on ``ix_outbound_status`` (a set that stays small: the outbox
  sends and forgets), the rest of the allocated claims are mailed;
- claims per hour and per day, and stock over time: the hours rolled up by the sweeper
  (``claimhour``, ``roll_up``), and the claims after the last rolled-up hour counted live on
  ``ix_claim_program_requested`` (an index range of at most an hour or two of claims).

Nothing here reads a program's codes, or its allocated claims, one by one
(``tests/unit/services/test_dashboard_plans.py`` checks each statement's plan on PostgreSQL and
SQLite with a launch's worth of rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from ..db import begin_write, planned_each_execution
from ..models import (
    Claim,
    ClaimHour,
    ClaimState,
    CodeBatch,
    MailKind,
    MailStatus,
    OutboundEmail,
    Program,
)
from .programs import quota_summary

HOUR = timedelta(hours=1)
HOURS_SHOWN = 48  # claims per hour: the last 48 hours, the current one included
DAYS_SHOWN = 14  # claims per day and stock over time: the last 14 days (UTC), today included
EXPIRY_DAYS = 30  # codes in stock whose batch expires within this many days are called out
RATE_HOURS = 3  # the current rate of claims: those of the last 3 hours (and this one so far)
# An hour is rolled up once it is this far in the past: a claim is dated when its transaction
# begins, and one that began before the hour ended has committed by then.
ROLLUP_MARGIN = timedelta(minutes=5)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class BatchStock:
    batch_id: int
    name: str
    expires_on: date | None
    code_count: int
    in_stock: int
    expired: bool
    expires_soon: bool  # within EXPIRY_DAYS (and not yet expired)


@dataclass(frozen=True)
class CountryRow:
    country: str
    quota: int
    allocated: int
    remaining: int


@dataclass(frozen=True)
class Alert:
    """Something the manager must act on, as a stable code and its numbers (words in
    templates/messages.html)."""

    code: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Dashboard:
    program_id: int
    slug: str
    name: str
    now: datetime
    quota: int
    allocated: int
    remaining: int
    in_stock: int
    # pending, allocated (all of them), of which mailed, mail_owed and mail_failed; waitlisted,
    # refused.
    claims: dict[str, int]
    batches: list[BatchStock]
    expiring_soon: int  # codes in stock in batches expiring within EXPIRY_DAYS
    expired: int  # codes in stock in batches already expired
    countries: list[CountryRow]
    per_hour: list[tuple[datetime, int]]  # HOURS_SHOWN hours, oldest first, this one last
    per_day: list[tuple[date, int]]  # DAYS_SHOWN days, oldest first, today last
    stock_over_time: list[tuple[datetime, int]]  # stock as each rolled-up hour found it, and now
    rate_per_hour: float  # claims an hour, over the last RATE_HOURS hours
    stock_runs_out_at: datetime | None  # at that rate, with the claims waiting served first
    quota_fills_first: bool  # the stock covers the remaining quota: it does not run out
    warnings: list[Alert]

    @property
    def waiting(self) -> int:
        return self.claims[ClaimState.pending.value] + self.claims[ClaimState.waitlisted.value]


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def program_dashboard(session: Session, *, program: Program,
                      now: datetime | None = None) -> Dashboard:
    # Each read planned for its own values and the tables as they are (PostgreSQL): a page
    # view is rare next to planning's cost, and a plan kept from a program's first minutes
    # could walk what has grown since.
    with planned_each_execution(session):
        return _program_dashboard(session, program, now or datetime.now(UTC))


def _program_dashboard(session: Session, program: Program, now: datetime) -> Dashboard:
    summary = quota_summary(session, program)
    q = session.execute
    params = {"b_program": program.id}
    dialect = session.get_bind().dialect.name

    claims = dict(summary["claims"])
    owed = dict(q(_MAIL_OWED_OR_FAILED, params).all())
    claims["mail_owed"] = owed.get(MailStatus.queued.value, 0) + owed.get(
        MailStatus.sending.value, 0)
    claims["mail_failed"] = owed.get(MailStatus.failed.value, 0)
    claims["mailed"] = max(summary["allocated"] - claims["mail_owed"] - claims["mail_failed"], 0)

    today = now.astimezone(UTC).date()
    soon = today + timedelta(days=EXPIRY_DAYS)
    batches = [
        BatchStock(batch_id, name, expires_on, code_count, in_stock,
                   expired=expires_on is not None and expires_on < today,
                   expires_soon=expires_on is not None and today <= expires_on <= soon)
        for batch_id, name, expires_on, code_count, in_stock in q(_BATCHES, params)]

    # The hours: those rolled up, then the claims after the last one, counted live.
    first_day = datetime.combine(today - timedelta(days=DAYS_SHOWN - 1), datetime.min.time(),
                                 tzinfo=UTC)
    this_hour = hour_floor(now)
    first_hour = min(first_day, this_hour - (HOURS_SHOWN - 1) * HOUR)
    last_rolled = _utc(q(_LAST_ROLLED, params).scalar_one())
    live_from = max(last_rolled + HOUR, first_hour) if last_rolled else first_hour
    counts: dict[datetime, int] = {}
    stock_points: list[tuple[datetime, int]] = []
    for hour, rolled, in_stock in q(_ROLLED_HOURS, {**params, "b_from": first_hour}):
        hour = _utc(hour)
        counts[hour] = rolled
        if in_stock is not None:
            stock_points.append((hour + HOUR, in_stock))
    counts.update(claims_by_hour(session, program_id=program.id, since=live_from,
                                 until=_FAR_FUTURE, dialect=dialect))
    stock_points.append((now, summary["in_stock"]))

    per_hour = [(this_hour - i * HOUR, counts.get(this_hour - i * HOUR, 0))
                for i in reversed(range(HOURS_SHOWN))]
    by_day: dict[date, int] = {}
    for hour, n in counts.items():
        by_day[hour.date()] = by_day.get(hour.date(), 0) + n
    per_day = [(today - timedelta(days=i), by_day.get(today - timedelta(days=i), 0))
               for i in reversed(range(DAYS_SHOWN))]

    rate_since = this_hour - RATE_HOURS * HOUR
    recent = sum(n for hour, n in counts.items() if hour >= rate_since)
    rate = recent / ((now - rate_since) / HOUR)

    remaining, in_stock = summary["remaining"], summary["in_stock"]
    waiting = claims[ClaimState.pending.value] + claims[ClaimState.waitlisted.value]
    quota_fills_first = in_stock >= remaining
    runs_out_at = None
    if not quota_fills_first and rate > 0:
        runs_out_at = now + timedelta(hours=max(in_stock - waiting, 0) / rate)

    warnings = []
    if in_stock < remaining:
        warnings.append(Alert("stock_below_quota", {"in_stock": in_stock,
                                                    "remaining": remaining,
                                                    "short": remaining - in_stock}))
    if in_stock < waiting:
        warnings.append(Alert("stock_below_waiting", {"in_stock": in_stock,
                                                      "waiting": waiting,
                                                      "short": waiting - in_stock}))
    expired = sum(b.in_stock for b in batches if b.expired)
    expiring_soon = sum(b.in_stock for b in batches if b.expires_soon)
    if expired:
        warnings.append(Alert("codes_expired_in_stock", {"count": expired}))
    if claims["mail_failed"]:
        warnings.append(Alert("code_mails_failed", {"count": claims["mail_failed"]}))

    return Dashboard(
        program_id=program.id, slug=program.slug, name=program.name, now=now,
        quota=summary["quota"], allocated=summary["allocated"], remaining=remaining,
        in_stock=in_stock, claims=claims, batches=batches, expiring_soon=expiring_soon,
        expired=expired,
        countries=[CountryRow(country, row["quota"], row["allocated"], row["remaining"])
                   for country, row in summary["countries"].items()],
        per_hour=per_hour, per_day=per_day, stock_over_time=stock_points,
        rate_per_hour=rate, stock_runs_out_at=runs_out_at,
        quota_fills_first=quota_fills_first, warnings=warnings,
    )


def claims_by_hour(session: Session, *, program_id: int, since: datetime, until: datetime,
                   dialect: str | None = None) -> dict[datetime, int]:
    """The program's claims requested in [since, until), counted per UTC hour: a range of
    ``ix_claim_program_requested``."""
    dialect = dialect or session.get_bind().dialect.name
    statement = _CLAIMS_BY_HOUR["postgresql" if dialect == "postgresql" else "sqlite"]
    rows = session.execute(statement, {"b_program": program_id, "b_since": since,
                                       "b_until": until})
    return {_hour_value(hour): n for hour, n in rows}


def roll_up(session: Session, *, now: datetime | None = None) -> list[int]:
    """Roll every program's complete hours since its last rolled-up hour into ``claimhour``,
    with the stock counter as found now on the last of them (written even with no claims, so
    it marks where the rollup ends). Run by the sweeper; idempotent: a program another sweep
    rolled up meanwhile is left as that sweep wrote it. Returns the ids of the programs rolled
    up."""
    now = now or datetime.now(UTC)
    until = hour_floor(now - ROLLUP_MARGIN)  # the hours before it are over
    dialect = session.get_bind().dialect.name
    due = session.execute(_LAST_ROLLED_PER_PROGRAM).all()
    session.commit()
    done = []
    for program_id, last in due:
        last = _utc(last)
        if last is not None and last + HOUR >= until:
            continue
        since = last + HOUR if last is not None else _EPOCH
        # Reads, then writes what it read: on SQLite the write lock is taken first, or a mail
        # batch renewing its lease meanwhile makes the insert fail (a WAL reader cannot become
        # a writer after another writer has committed).
        begin_write(session)
        counts = claims_by_hour(session, program_id=program_id, since=since, until=until,
                                dialect=dialect)
        in_stock = session.execute(sa.select(Program.in_stock_count)
                                   .where(Program.id == program_id)).scalar_one()
        counts.setdefault(until - HOUR, 0)
        rows = [{"program_id": program_id, "hour": hour, "claims": n,
                 "in_stock": in_stock if hour == until - HOUR else None}
                for hour, n in sorted(counts.items())]
        try:
            session.execute(sa.insert(ClaimHour.__table__), rows)
            session.commit()
        except sa.exc.IntegrityError:  # another sweep rolled these hours up first
            session.rollback()
            continue
        done.append(program_id)
    return done


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite's max() of a timestamp is its text
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _hour_value(value) -> datetime:
    return _utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


_claim, _outbound = Claim.__table__.c, OutboundEmail.__table__.c
_batch, _hour = CodeBatch.__table__.c, ClaimHour.__table__.c
_program = Program.__table__.c

# The code mails still owed or failed of the program's allocated claims (about the code each
# claim holds now). From the mails in those states (``ix_outbound_status``), which stay few,
# to their claims by key; never from the program's claims.
_MAIL_OWED_OR_FAILED = (
    sa.select(_outbound.status, sa.func.count())
    .select_from(OutboundEmail.__table__.join(
        Claim.__table__, sa.and_(_claim.id == _outbound.claim_id,
                                 _claim.code_id == _outbound.code_id)))
    .where(_outbound.status.in_([MailStatus.queued.value, MailStatus.sending.value,
                                 MailStatus.failed.value]),
           _outbound.kind.in_([MailKind.redemption.value, MailKind.reissue.value]),
           _claim.program_id == sa.bindparam("b_program"),
           _claim.state == ClaimState.allocated.value)
    .group_by(_outbound.status)
)
_BATCHES = (
    sa.select(_batch.id, _batch.name, _batch.expires_on, _batch.code_count,
              _batch.in_stock_count)
    .where(_batch.program_id == sa.bindparam("b_program"))
    .order_by(_batch.id)
)
_LAST_ROLLED = sa.select(sa.func.max(_hour.hour)).where(
    _hour.program_id == sa.bindparam("b_program"))
_ROLLED_HOURS = (
    sa.select(_hour.hour, _hour.claims, _hour.in_stock)
    .where(_hour.program_id == sa.bindparam("b_program"), _hour.hour >= sa.bindparam("b_from"))
    .order_by(_hour.hour)
)
# Per program (few), its last hour on the key: never a walk of every program's hours.
_LAST_ROLLED_PER_PROGRAM = sa.select(
    _program.id,
    sa.select(sa.func.max(_hour.hour)).where(_hour.program_id == _program.id)
    .correlate(Program.__table__).scalar_subquery(),
).order_by(_program.id)
# The hour a claim was requested in, in UTC: PostgreSQL truncates the UTC wall time (whatever
# the session's time zone), SQLite keeps UTC wall times as text.
_HOUR_OF = {
    "postgresql": sa.func.date_trunc(sa.literal_column("'hour'"),
                                     sa.func.timezone(sa.literal_column("'UTC'"),
                                                      _claim.requested_at)),
    "sqlite": sa.func.strftime(sa.literal_column("'%Y-%m-%d %H:00:00'"), _claim.requested_at),
}
_CLAIMS_BY_HOUR = {
    dialect: (sa.select(hour_of, sa.func.count())
              .where(_claim.program_id == sa.bindparam("b_program"),
                     _claim.requested_at >= sa.bindparam("b_since"),
                     _claim.requested_at < sa.bindparam("b_until"))
              .group_by(hour_of))
    for dialect, hour_of in _HOUR_OF.items()
}
