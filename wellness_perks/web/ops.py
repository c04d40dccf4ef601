"""Operations endpoints: ``GET /healthz``."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify

from ..db import engine

bp = Blueprint("ops", __name__)


@bp.route("/healthz")
def healthz():
    """200 when the database and (if configured) the broker answer; 503 naming what failed."""
    checks: dict[str, str] = {}
    try:
        with engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = f"error: {type(exc).__name__}"
    if current_app.config["CELERY_BROKER_URL"]:
        try:
            celery = current_app.extensions["celery"]
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["broker"] = f"error: {type(exc).__name__}"
    else:
        checks["broker"] = "not configured (tasks run in-process)"
    healthy = all(v == "ok" or v.startswith("not configured") for v in checks.values())
    return jsonify(status="ok" if healthy else "error", checks=checks), 200 if healthy else 503
