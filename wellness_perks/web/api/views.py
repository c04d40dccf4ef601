"""The API's endpoints: thin, each one service call."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ...db import get_session
from ...services import programs
from ..security import token_role_required

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.after_request
def _never_stored(response):
    """Answers name programs and their numbers to a token's holder: no cache may keep them."""
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/programs")
@token_role_required("viewer")
def list_programs():
    """Every program's window, quota, allocations, stock and claims by state (what
    ``list-programs --json`` prints): no code, no creator."""
    return jsonify({"programs": programs.program_summaries(get_session())})
