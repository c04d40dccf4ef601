"""Programs: creating them, finding them, and the quota and stock numbers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlparse

import sqlalchemy as sa
from sqlmodel import Session, select

from .. import dispatch
from ..db import write_transaction
from ..models import (
    DEFAULT_CODE_PATTERN,
    Claim,
    ClaimState,
    CountryQuota,
    Program,
    window_state,
)
from . import audit
from .errors import Conflict, InvalidInput, NotFound, ProgramNotFound
from .mail.mime import LINE_BREAK

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def get_program(session: Session, slug: str) -> Program:
    program = session.exec(select(Program).where(Program.slug == slug)).first()
    if program is None:
        raise ProgramNotFound(slug)
    return program


def list_programs(session: Session) -> list[Program]:
    """Every program, newest first: each row carries its own counters (quota, allocated, in
    stock), so the list costs one read however many codes and claims there are."""
    return list(session.exec(select(Program).order_by(Program.created_at.desc(),
                                                      Program.id.desc())))


def lock_program(session: Session, program_id: int) -> Program:
    """The program, read fresh and locked for the rest of the transaction: allocation, quota
    changes, voids and reissues of one program take turns on this lock.

    ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: every new claim (and its audit event) refers to
    the program, and PostgreSQL checks such a reference by taking ``FOR KEY SHARE`` on the
    program's row, which conflicts with ``FOR UPDATE`` but not with ``FOR NO KEY UPDATE``: new
    claims are recorded while an allocation batch holds the lock.
    """
    program = session.execute(_LOCK_PROGRAM, {"b_program": program_id}).scalar_one_or_none()
    if program is None:
        raise NotFound(f"no program with id {program_id}")
    return program


def create_program(
    session: Session,
    *,
    slug: str,
    name: str,
    quota: int,
    perk_months: int = 6,
    opens_at: datetime | None = None,
    closes_at: datetime | None = None,
    redeem_url: str | None = None,
    code_pattern: str | None = None,
    country_quotas: dict[str, int] | None = None,
    actor: str,
) -> Program:
    if not SLUG_RE.fullmatch(slug or ""):
        raise InvalidInput(
            "slug must be 2 to 64 lower-case letters, digits and dashes, starting with a letter "
            "or digit",
            field="slug",
        )
    if not (name or "").strip():
        raise InvalidInput("name must not be empty", field="name")
    # A name goes into mail subjects: a line break there would start headers of its own.
    if LINE_BREAK.search(name.strip()):
        raise InvalidInput("name must be one line: it contains a line break", field="name")
    if _CONTROL_CHARACTER.search(name.strip()):
        raise InvalidInput("name must be plain text: it contains a control character",
                           field="name")
    for field, value, limit in (("name", name, 200), ("redeem-url", redeem_url, 500),
                                ("code-format", code_pattern, 500)):
        if value is not None and len(value) > limit:
            raise InvalidInput(f"{field} is longer than {limit} characters", field=field)
    if quota < 0:
        raise InvalidInput("quota must be zero or more", field="quota")
    if perk_months < 1:
        raise InvalidInput("months must be at least 1", field="months")
    for field, value in (("opens", opens_at), ("closes", closes_at)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{field} must include a time zone (e.g. 2026-12-01T09:00+05:00)",
                               field=field)
    if opens_at and closes_at and closes_at <= opens_at:
        raise InvalidInput("the claim window closes before it opens", field="closes")
    if redeem_url is not None:
        parsed = urlparse(redeem_url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise InvalidInput("redeem URL must be an http(s) URL", field="redeem-url")
    pattern = code_pattern or DEFAULT_CODE_PATTERN
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidInput(f"code format is not a valid regular expression: {exc}",
                           field="code-format") from exc
    with write_transaction(session):
        if session.exec(select(Program.id).where(Program.slug == slug)).first() is not None:
            raise Conflict(f"a program with slug {slug!r} already exists")
        program = Program(
            slug=slug,
            name=name.strip(),
            quota=quota,
            perk_months=perk_months,
            opens_at=opens_at,
            closes_at=closes_at,
            redeem_url=redeem_url,
            code_pattern=pattern,
        )
        session.add(program)
        session.flush()
        for country, country_quota in (country_quotas or {}).items():
            session.add(CountryQuota(program_id=program.id, country=country,
                                     quota=_quota_number(country_quota, country)))
        audit.record(session, audit.event(
            actor=actor,
            action="program.created",
            object_type="program",
            object_id=program.id,
            program_id=program.id,
            detail={"slug": slug, "quota": quota, "opens_at": opens_at, "closes_at": closes_at,
                    "country_quotas": country_quotas or {}},
        ))
    return program


def _quota_number(value: int, what: str) -> int:
    if value < 0:
        raise InvalidInput(f"{what} quota must be zero or more", field="quota")
    return value


def set_quota(
    session: Session,
    *,
    program_id: int,
    quota: int | None = None,
    country_quotas: dict[str, int | None] | None = None,
    actor: str,
) -> Program:
    """Change a program's quota and country quotas (None removes a country's cap).

    A quota can't go below what is already allocated. Raising one serves the waitlist.
    """
    with write_transaction(session):
        program = lock_program(session, program_id)
        changes: dict = {}
        if quota is not None:
            _quota_number(quota, "the")
            if quota < program.allocated_count:
                raise InvalidInput(f"quota {quota} is below the {program.allocated_count} codes "
                                   "already allocated", field="quota")
            changes["quota"] = [program.quota, quota]
            program.quota = quota
        for country, country_quota in (country_quotas or {}).items():
            row = session.exec(
                select(CountryQuota).where(CountryQuota.program_id == program_id,
                                           CountryQuota.country == country)
                .execution_options(populate_existing=True)
            ).first()
            if country_quota is None:
                if row is not None:
                    changes[country] = [row.quota, None]
                    session.delete(row)
                continue
            _quota_number(country_quota, country)
            if row is None:
                allocated = session.execute(
                    sa.select(sa.func.count()).select_from(Claim)
                    .where(Claim.program_id == program_id, Claim.country == country,
                           Claim.state == ClaimState.allocated)
                ).scalar_one()
                row = CountryQuota(program_id=program_id, country=country, quota=country_quota,
                                   allocated_count=allocated)
                session.add(row)
                changes[country] = [None, country_quota]
            else:
                changes[country] = [row.quota, country_quota]
                row.quota = country_quota
            if country_quota < row.allocated_count:
                raise InvalidInput(f"{country} quota {country_quota} is below the "
                                   f"{row.allocated_count} codes already allocated there",
                                   field="country-quota")
        session.flush()
        audit.record(session, audit.event(actor=actor, action="program.quota_changed",
                                          object_type="program", object_id=program_id,
                                          program_id=program_id, detail=changes))
    dispatch.allocate_program(program_id)
    return program


def country_quotas(session: Session, program_id: int) -> dict[str, dict]:
    return {
        row.country: {"quota": row.quota, "allocated": row.allocated_count,
                      "remaining": max(row.quota - row.allocated_count, 0)}
        for row in session.exec(select(CountryQuota).where(CountryQuota.program_id == program_id)
                                .order_by(CountryQuota.country))
    }


def quota_summary(session: Session, program: Program) -> dict:
    """The numbers behind ``quota`` (and ``quota --json``), at a cost that does not grow with the
    codes or the claims: the quota, the allocations and the stock are the program's row, whose
    counters move in the transaction of every change (``verify`` checks them), read afresh
    rather than from ``program``, which may be stale. Only the claims not allocated are counted,
    by state: a range of ``ix_claim_program_state`` that never touches the allocated claims,
    the vast majority."""
    quota, allocated, in_stock = session.execute(_COUNTERS, {"b_program": program.id}).one()
    by_state = dict.fromkeys((s.value for s in ClaimState), 0)
    by_state[ClaimState.allocated.value] = allocated
    by_state.update(session.execute(_NOT_ALLOCATED_BY_STATE, {"b_program": program.id}).all())
    return {
        "program": program.slug,
        "name": program.name,
        "quota": quota,
        "allocated": allocated,
        "remaining": max(quota - allocated, 0),
        "in_stock": in_stock,
        "claims": by_state,
        "countries": country_quotas(session, program.id),
    }


def program_summaries(session: Session, *, now: datetime | None = None) -> list[dict]:
    """Every program's ``quota_summary`` numbers (but the country quotas), its window state
    and its claims by state, by slug: what ``list-programs`` prints (and the API will send).

    One query, at a cost that does not grow with the codes or the allocated claims: the
    counters are the programs' rows, and each program's claims not allocated are counted by
    state, each count a range of ``ix_claim_program_state``; no code is read."""
    now = now or datetime.now(UTC)
    listed = []
    for row in session.execute(_ALL_PROGRAMS).mappings():
        # "allocated" is the program's counter; the other states are counted
        by_state = {state: row[state] for state in (s.value for s in ClaimState)}
        listed.append({
            "program": row["slug"], "name": row["name"],
            "window": window_state(row["opens_at"], row["closes_at"], now).value,
            "opens_at": row["opens_at"].isoformat() if row["opens_at"] else None,
            "closes_at": row["closes_at"].isoformat() if row["closes_at"] else None,
            "quota": row["quota"], "allocated": row["allocated"],
            "remaining": max(row["quota"] - row["allocated"], 0),
            "in_stock": row["in_stock"], "claims": by_state,
            "claims_total": sum(by_state.values()),
        })
    return listed


_program, _claim = Program.__table__.c, Claim.__table__.c


def _claims_in(state: ClaimState) -> sa.Label:
    """The program's claims in ``state``: a range of ``ix_claim_program_state`` per program.
    The state is written into the statement, not bound, so that the planner knows from the
    statistics that few claims are in it (most are allocated)."""
    return (sa.select(sa.func.count()).select_from(Claim.__table__)
            .where(_claim.program_id == _program.id,
                   _claim.state == sa.literal(state.value, literal_execute=True))
            .correlate(Program.__table__).scalar_subquery().label(state.value))


_ALL_PROGRAMS = (
    sa.select(_program.slug, _program.name, _program.quota, _program.opens_at,
              _program.closes_at, _program.allocated_count.label("allocated"),
              _program.in_stock_count.label("in_stock"),
              *(_claims_in(s) for s in ClaimState if s != ClaimState.allocated))
    .order_by(_program.slug)
)
_COUNTERS = (sa.select(_program.quota, _program.allocated_count, _program.in_stock_count)
             .where(_program.id == sa.bindparam("b_program")))
_NOT_ALLOCATED_BY_STATE = (
    sa.select(_claim.state, sa.func.count())
    .where(_claim.program_id == sa.bindparam("b_program"),
           _claim.state.in_([s.value for s in ClaimState if s != ClaimState.allocated]))
    .group_by(_claim.state)
)
_LOCK_PROGRAM = (sa.select(Program).where(Program.id == sa.bindparam("b_program"))
                 .with_for_update(key_share=True)
                 .execution_options(populate_existing=True))
