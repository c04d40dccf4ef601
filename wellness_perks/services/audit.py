"""Who did what, when, on what. Details never hold a code or a sign-in token."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from ..models import AuditEvent


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: int | None = None,
    program_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the session's unit of work (the caller commits)."""
    event = AuditEvent(
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        program_id=program_id,
        detail=detail_text(detail),
    )
    session.add(event)
    return event


def insert(
    connection: sa.Connection,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: int | None = None,
    program_id: int | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Write an audit event now, in the connection's transaction, with one INSERT: for hot paths
    that do not use the ORM unit of work."""
    connection.execute(_INSERT, {
        "at": at or datetime.now(UTC),
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "program_id": program_id,
        "detail": detail_text(detail),
    })


def detail_text(detail: dict[str, Any] | None) -> str | None:
    """How an event's detail is stored: JSON text, keys sorted."""
    return json.dumps(detail, sort_keys=True, default=str) if detail else None


_INSERT = sa.insert(AuditEvent.__table__)
