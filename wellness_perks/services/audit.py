"""Who did what, when, on what. Details never hold a code or a sign-in token.

One row builder (``event``) and one writer (``record``): an event is written at once, in the
caller's transaction, so it commits or rolls back with the change it tells about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from ..models import AuditEvent
from .errors import InvalidInput


def event(*, actor: str, action: str, object_type: str, object_id: int | None = None,
          program_id: int | None = None, detail: dict[str, Any] | None = None,
          at: datetime | None = None) -> dict:
    """An audit event's row, for ``record``."""
    return {"at": at or datetime.now(UTC), "actor": actor, "action": action,
            "object_type": object_type, "object_id": object_id, "program_id": program_id,
            "detail": detail_text(detail)}


def record(where: Session | sa.Connection, *events: dict) -> None:
    """Write these events (rows from ``event``) now, in the transaction of ``where``."""
    if not events:
        return
    connection = where.connection() if isinstance(where, Session) else where
    connection.execute(_INSERT, list(events) if len(events) > 1 else events[0])


def reason_given(reason: str | None, *, doing: str, limit: int) -> str:
    """The reason an audited action is done for, stripped: required, and at most ``limit``
    characters (InvalidInput on the ``reason`` field otherwise). ``doing`` says what the action
    does, in the message (``"the code is revealed"``)."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(f"say why {doing} (the reason is audited)", field="reason",
                           code="reason_required")
    if len(reason) > limit:
        raise InvalidInput(f"reason is longer than {limit} characters", field="reason",
                           code="reason_too_long", limit=limit)
    return reason


def detail_text(detail: dict[str, Any] | None) -> str | None:
    """How an event's detail is stored: JSON text, keys sorted."""
    return json.dumps(detail, sort_keys=True, default=str) if detail else None


_INSERT = sa.insert(AuditEvent.__table__)


AUDIT_PAGE = 50


@dataclass(frozen=True)
class AuditFilter:
    """What the audit log is narrowed to (each one optional): ``until`` is exclusive."""

    actor: str | None = None
    action: str | None = None
    program_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditPage:
    events: list[sa.Row]  # the columns of AuditEvent
    next_before: tuple[datetime, int] | None  # the keyset (at, id) of the next page, if any


def search_statement(filters: AuditFilter, *, before: tuple[datetime, int] | None = None,
                     limit: int = AUDIT_PAGE) -> sa.Select:
    """One page of events, newest first, by keyset on (at, id): a page deep in the log costs
    what the first one does. ``at <= before`` leads so the walk is a range of ix_auditevent_at."""
    c = AuditEvent.__table__.c
    conditions = []
    if filters.actor:
        conditions.append(c.actor == filters.actor)
    if filters.action:
        conditions.append(c.action == filters.action)
    if filters.program_id is not None:
        conditions.append(c.program_id == filters.program_id)
    if filters.since is not None:
        conditions.append(c.at >= filters.since)
    if filters.until is not None:
        conditions.append(c.at < filters.until)
    if before is not None:
        at, event_id = before
        conditions.append(c.at <= at)
        conditions.append(sa.or_(c.at < at, c.id < event_id))
    return (sa.select(*AuditEvent.__table__.c).where(*conditions)
            .order_by(c.at.desc(), c.id.desc()).limit(limit + 1))


def search(session: Session, filters: AuditFilter, *,
           before: tuple[datetime, int] | None = None, limit: int = AUDIT_PAGE) -> AuditPage:
    """A page of the audit log (read only)."""
    events = list(session.execute(search_statement(filters, before=before, limit=limit)))
    session.commit()
    more = len(events) > limit
    events = events[:limit]
    return AuditPage(events=events,
                     next_before=(events[-1].at, events[-1].id) if more else None)
