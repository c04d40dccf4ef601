"""Programs: creating them, finding them, and the quota and stock numbers."""

from __future__ import annotations

import functools
import re
import zoneinfo
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
    WindowState,
    window_state,
)
from . import audit
from .emails import normalise_email
from .errors import Conflict, InvalidInput, NotFound, ProgramNotFound
from .mail.mime import LINE_BREAK

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ClaimingConflict(Conflict):
    """Claiming can't move that way from where it is (``code``: ``program_closed``,
    ``program_paused``); ``name`` is the program's."""

    def __init__(self, program: Program, code: str) -> None:
        reason = {"program_closed": "its claim window has closed (set a new closing time to "
                                    "reopen it)",
                  "program_paused": "claiming is paused (resume it first)"}[code]
        super().__init__(f"program {program.slug}: {reason}", name=program.name)
        self.code = code


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
    time_zone: str | None = None,
    redeem_url: str | None = None,
    support_email: str | None = None,
    code_pattern: str | None = None,
    country_quotas: dict[str, int] | None = None,
    actor: str,
) -> Program:
    """A new program. ``opens_at`` and ``closes_at`` are instants (with a zone), or, when
    ``time_zone`` (an IANA name) is given, may be local times in that zone."""
    if not SLUG_RE.fullmatch(slug or ""):
        raise InvalidInput(
            "slug must be 2 to 64 lower-case letters, digits and dashes, starting with a letter "
            "or digit",
            field="slug",
        )
    if code_pattern is not None and len(code_pattern) > 500:
        raise InvalidInput("code-format is longer than 500 characters", field="code-format")
    settings = _checked_settings(name=name, perk_months=perk_months, opens_at=opens_at,
                                 closes_at=closes_at, time_zone=time_zone,
                                 redeem_url=redeem_url, support_email=support_email)
    if quota < 0:
        raise InvalidInput("quota must be zero or more", field="quota")
    pattern = code_pattern or DEFAULT_CODE_PATTERN
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidInput(f"code format is not a valid regular expression: {exc}",
                           field="code-format") from exc
    with write_transaction(session):
        if session.exec(select(Program.id).where(Program.slug == slug)).first() is not None:
            raise Conflict(f"a program with slug {slug!r} already exists", field="slug")
        program = Program(slug=slug, quota=quota, code_pattern=pattern, **settings)
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
            detail={"slug": slug, "quota": quota, "opens_at": program.opens_at,
                    "closes_at": program.closes_at, "time_zone": program.time_zone,
                    "country_quotas": country_quotas or {}},
        ))
    return program


# What a program's edit changes, besides its quotas (audited as ``program.updated``).
SETTINGS = ("name", "perk_months", "opens_at", "closes_at", "time_zone", "redeem_url",
            "support_email")


def _checked_settings(*, name: str, perk_months: int, opens_at: datetime | None,
                      closes_at: datetime | None, time_zone: str | None,
                      redeem_url: str | None, support_email: str | None) -> dict:
    """The settings a program is created or edited with, checked and normalised (the name
    trimmed, the window in UTC, the support address canonical); InvalidInput names the field."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("name must not be empty", field="name")
    # A name goes into mail subjects: a line break there would start headers of its own.
    if LINE_BREAK.search(name):
        raise InvalidInput("name must be one line: it contains a line break", field="name")
    if _CONTROL_CHARACTER.search(name):
        raise InvalidInput("name must be plain text: it contains a control character",
                           field="name")
    for field, value, limit in (("name", name, 200), ("redeem-url", redeem_url, 500)):
        if value is not None and len(value) > limit:
            raise InvalidInput(f"{field} is longer than {limit} characters", field=field)
    if perk_months < 1:
        raise InvalidInput("months must be at least 1", field="months")
    zone = None if time_zone is None else check_time_zone(time_zone)
    opens_at = _instant(opens_at, zone, "opens")
    closes_at = _instant(closes_at, zone, "closes")
    if opens_at and closes_at and closes_at <= opens_at:
        raise InvalidInput("the claim window closes before it opens", field="closes")
    redeem_url = redeem_url or None
    if redeem_url is not None:
        parsed = urlparse(redeem_url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise InvalidInput("redeem URL must be an http(s) URL", field="redeem-url")
        if "{code}" not in redeem_url:
            raise InvalidInput("redeem URL must contain {code}, where the code goes",
                               field="redeem-url")
    if support_email is not None and support_email.strip():
        try:
            support_email = normalise_email(support_email)
        except InvalidInput as exc:
            raise InvalidInput(f"support contact: {exc}", field="support-email") from exc
    else:
        support_email = None
    return {"name": name, "perk_months": perk_months, "opens_at": opens_at,
            "closes_at": closes_at, "time_zone": zone or "UTC", "redeem_url": redeem_url,
            "support_email": support_email}


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone this system knows (``Asia/Karachi``)."""
    name = (name or "").strip()
    if name not in _time_zones():
        raise InvalidInput(f"{name[:64]!r} is not an IANA time zone (e.g. Asia/Karachi)",
                           field="time-zone")
    return name


def _instant(value: datetime | None, zone: str | None, field: str) -> datetime | None:
    """An instant in UTC: ``value`` as it is if it has a zone, else read as a local time in
    ``zone``. A local time the zone skips (clocks going forward) or has twice (clocks going
    back) is refused rather than guessed."""
    if value is None:
        return None
    if value.tzinfo is not None:
        return value.astimezone(UTC)
    if zone is None:
        raise InvalidInput(f"{field} must include a time zone (e.g. 2026-12-01T09:00+05:00)",
                           field=field)
    tz = zoneinfo.ZoneInfo(zone)
    candidates = {value.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)}
    real = {c for c in candidates
            if c.astimezone(tz).replace(tzinfo=None) == value}
    shown = value.strftime("%Y-%m-%d %H:%M")
    if not real:
        raise InvalidInput(f"{field}: {shown} does not happen in {zone} (the clocks skip it)",
                           field=field)
    if len(real) > 1:
        raise InvalidInput(f"{field}: {shown} happens twice in {zone} (the clocks go back): "
                           "choose another time", field=field)
    return real.pop()


def update_program(
    session: Session,
    *,
    program_id: int,
    name: str,
    quota: int,
    country_quotas: dict[str, int],
    perk_months: int,
    opens_at: datetime | None,
    closes_at: datetime | None,
    time_zone: str,
    redeem_url: str | None,
    support_email: str | None,
    actor: str,
) -> Program:
    """Edit a program: its settings, its quota and its country quotas (``country_quotas`` is
    the whole set: a country left out loses its cap). The quotas follow ``set_quota``'s rules
    (never below what is allocated). Local times are read in ``time_zone``. What changed is
    audited, before and after (``program.updated``; ``program.quota_changed`` for the
    quotas); nothing changed, nothing recorded."""
    settings = _checked_settings(name=name, perk_months=perk_months, opens_at=opens_at,
                                 closes_at=closes_at, time_zone=time_zone,
                                 redeem_url=redeem_url, support_email=support_email)
    with write_transaction(session):
        program = lock_program(session, program_id)
        current = {row.country: row.quota for row in session.exec(
            select(CountryQuota).where(CountryQuota.program_id == program_id)
            .execution_options(populate_existing=True))}
        by_country: dict[str, int | None] = {
            country: value for country, value in country_quotas.items()
            if current.get(country) != value}
        by_country |= {country: None for country in current if country not in country_quotas}
        quota_changes = _change_quotas(session, program,
                                       quota if quota != program.quota else None, by_country)
        changes = {field: [getattr(program, field), value]
                   for field, value in settings.items() if getattr(program, field) != value}
        for field, (_, value) in changes.items():
            setattr(program, field, value)
        session.flush()
        if changes:
            audit.record(session, audit.event(actor=actor, action="program.updated",
                                              object_type="program", object_id=program_id,
                                              program_id=program_id, detail=changes))
        if quota_changes:
            audit.record(session, audit.event(actor=actor, action="program.quota_changed",
                                              object_type="program", object_id=program_id,
                                              program_id=program_id, detail=quota_changes))
    if quota_changes:
        dispatch.allocate_program(program_id)
    return program


def open_claims(session: Session, *, program_id: int, actor: str,
                now: datetime | None = None) -> Program:
    """Open the claim window now: a window opening later opens now; one already open stays
    as it is. A closed window is reopened on the edit page (a new closing time), a paused
    one by resuming."""
    now = now or datetime.now(UTC)
    with write_transaction(session):
        program = lock_program(session, program_id)
        state = program.window_state(now)
        if state == WindowState.closed:
            raise ClaimingConflict(program, "program_closed")
        if state == WindowState.paused:
            raise ClaimingConflict(program, "program_paused")
        if state == WindowState.not_open:
            _record_claiming(session, program, actor, "program.claims_opened",
                             opens_at=now)
    return program


def pause_claims(session: Session, *, program_id: int, actor: str,
                 now: datetime | None = None) -> Program:
    """Pause claiming: new claims are refused (``claims_paused``) until it resumes; the
    claims already waiting are still served. Pausing a paused program changes nothing."""
    now = now or datetime.now(UTC)
    with write_transaction(session):
        program = lock_program(session, program_id)
        state = program.window_state(now)
        if state == WindowState.closed:
            raise ClaimingConflict(program, "program_closed")
        if state != WindowState.paused:
            _record_claiming(session, program, actor, "program.claims_paused",
                             claims_paused_at=now)
    return program


def resume_claims(session: Session, *, program_id: int, actor: str) -> Program:
    """Resume claiming after a pause (a program not paused stays as it is)."""
    with write_transaction(session):
        program = lock_program(session, program_id)
        if program.claims_paused_at is not None:
            _record_claiming(session, program, actor, "program.claims_resumed",
                             claims_paused_at=None)
    return program


def close_claims(session: Session, *, program_id: int, actor: str,
                 now: datetime | None = None) -> Program:
    """Close the claim window now (claims from now on are refused with ``window_closed``);
    a pause ends with it. A window not open yet closes without having opened."""
    now = now or datetime.now(UTC)
    with write_transaction(session):
        program = lock_program(session, program_id)
        if program.window_state(now) != WindowState.closed:
            changes: dict = {"closes_at": now, "claims_paused_at": None}
            if program.opens_at is not None and program.opens_at > now:
                changes["opens_at"] = now
            _record_claiming(session, program, actor, "program.claims_closed", **changes)
    return program


def _record_claiming(session: Session, program: Program, actor: str, action: str,
                     **values) -> None:
    """Set ``values`` on the (locked) program and audit them, before and after."""
    detail = {field: [getattr(program, field), value] for field, value in values.items()
              if getattr(program, field) != value}
    for field, value in values.items():
        setattr(program, field, value)
    session.flush()
    audit.record(session, audit.event(actor=actor, action=action, object_type="program",
                                      object_id=program.id, program_id=program.id,
                                      detail=detail))


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
        changes = _change_quotas(session, program, quota, country_quotas or {})
        audit.record(session, audit.event(actor=actor, action="program.quota_changed",
                                          object_type="program", object_id=program_id,
                                          program_id=program_id, detail=changes))
    dispatch.allocate_program(program_id)
    return program


def _change_quotas(session: Session, program: Program, quota: int | None,
                   country_quotas: dict[str, int | None]) -> dict:
    """Apply quota changes to a locked program (None: unchanged; a country's None removes its
    cap); what changed, before and after. A quota can't go below what is already allocated."""
    program_id = program.id
    changes: dict = {}
    if quota is not None:
        _quota_number(quota, "the")
        if quota < program.allocated_count:
            raise InvalidInput(f"quota {quota} is below the {program.allocated_count} codes "
                               "already allocated", field="quota")
        changes["quota"] = [program.quota, quota]
        program.quota = quota
    for country, country_quota in country_quotas.items():
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
    return changes


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
            "window": window_state(row["opens_at"], row["closes_at"], now,
                                   row["claims_paused_at"]).value,
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
              _program.closes_at, _program.claims_paused_at,
              _program.allocated_count.label("allocated"),
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


def slugs_by_id(session: Session) -> dict[int, str]:
    """Each program's slug by its id (a page naming programs by id reads them once)."""
    return dict(session.execute(sa.select(Program.id, Program.slug)).all())
