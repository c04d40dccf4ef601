"""The creator portal: their programs, and claiming a perk."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user

from ...db import get_session
from ...services import claims, privacy, programs
from ...services.errors import ClaimsPaused, ClaimWindowNotOpen, NotOnList, ProgramNotFound
from .. import limits
from ..security import creator_required
from .forms import ClaimForm, DeletionForm

bp = Blueprint("portal", __name__)


@bp.after_request
def _never_stored(response):
    """Portal pages show a creator's code and personal data: no cache may keep them (a shared
    computer's back button, a proxy)."""
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/")
@creator_required
def index():
    rows = claims.programs_for_creator(get_session(), creator_id=current_user.creator_id)
    return render_template("portal/index.html", rows=rows)


def _program_or_404(slug: str):
    try:
        return programs.get_program(get_session(), slug)
    except ProgramNotFound:
        abort(404)


@bp.route("/programs/<slug>")
@creator_required
def program(slug: str):
    session = get_session()
    prog = _program_or_404(slug)
    creator_id = current_user.creator_id
    claim = claims.get_claim(session, program_id=prog.id, creator_id=creator_id)
    eligible = claims.is_eligible(session, program_id=prog.id, creator_id=creator_id)
    if claim is None and not eligible:
        abort(404)  # programs a creator is not on the list of are none of their business
    code = batch = None
    if claim is not None:
        owned = claims.code_for_owner(session, claim)
        if owned:
            code, batch = owned
    return render_template(
        "portal/program.html",
        program=prog,
        claim=claim,
        code=code,
        batch=batch,
        position=claims.waitlist_position(session, claim) if claim else None,
        window=prog.window_state(datetime.now(UTC)),
        form=ClaimForm(),
    )


@bp.route("/programs/<slug>/claim", methods=["POST"])
@creator_required
@limits.claim_per_session
def claim(slug: str):
    # The form has no fields: CSRFProtect has checked its token before this view runs.
    try:
        claims.request_claim(get_session(), program=slug, creator_id=current_user.creator_id)
    except (ProgramNotFound, NotOnList):
        abort(404)  # as the program's page answers: a stranger's program is not found
    except (ClaimWindowNotOpen, ClaimsPaused) as exc:
        flash({"code": exc.code, **exc.params}, "error")
    return redirect(url_for("portal.program", slug=slug))


@bp.route("/me")
@creator_required
def my_data():
    stored = privacy.stored_data(get_session(), creator_id=current_user.creator_id)
    return render_template("portal/my_data.html", stored=stored, form=DeletionForm())


@bp.route("/me/delete", methods=["POST"])
@creator_required
def request_deletion():
    privacy.request_deletion(get_session(), creator_id=current_user.creator_id)
    flash("deletion_requested", "message")
    return redirect(url_for("portal.my_data"))
