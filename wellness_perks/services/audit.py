"""Who did what, when, on what. Details never hold a code or a sign-in token.

One row builder (``event``) and one writer (``record``): an event is written at once, in the
caller's transaction, so it commits or rolls back with the change it tells about.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from ..models import AuditEvent


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


def detail_text(detail: dict[str, Any] | None) -> str | None:
    """How an event's detail is stored: JSON text, keys sorted."""
    return json.dumps(detail, sort_keys=True, default=str) if detail else None


_INSERT = sa.insert(AuditEvent.__table__)
