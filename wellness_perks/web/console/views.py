"""The console's sign-in, its first page, and programs: created (admins), edited and opened,
paused, resumed and closed (managers)."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ...db import get_session
from ...services import auth as auth_service
from ...services import programs
from ...services.countries import parse_country_quotas
from ...services.errors import Conflict, InvalidInput, ProgramNotFound
from .. import limits
from ..security import ManagerUser, begin_session, end_session, local_path, role_required
from .forms import ClaimingForm, ManagerSignInForm, NewProgramForm, ProgramForm

bp = Blueprint("console", __name__, url_prefix="/manage")


@bp.after_request
def _never_stored(response):
    """Console pages show creators' personal data: no cache may keep them."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _landing(next_path: str | None):
    path = local_path(next_path)
    return redirect(path if path and path.startswith("/manage") else url_for("console.index"))


@bp.route("/login", methods=["GET", "POST"])
@limits.sign_in_per_ip
def login():
    if current_user.is_authenticated and current_user.kind == ManagerUser.kind:
        return _landing(request.args.get("next"))
    form = ManagerSignInForm()
    if request.method == "GET":
        form.next.data = local_path(request.args.get("next"))
    error = None
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        limits.password_locked_out(email)  # 429 while locked out: the password is not tried
        try:
            manager = auth_service.check_manager_password(
                get_session(), email=form.email.data, password=form.password.data)
        except auth_service.PasswordRejected as exc:
            limits.record_password_failure(email)
            error = exc.code
        else:
            limits.clear_password_failures(email)
            begin_session(ManagerUser.from_signed_in(manager))
            return _landing(form.next.data)
    status = 400 if form.errors or error else 200
    return render_template("console/login.html", form=form, error=error), status


@bp.route("/logout", methods=["POST"])
def logout():
    end_session()  # on every device: a copied cookie stops working too
    return redirect(url_for("console.login"))


@bp.route("/")
@role_required("viewer")
def index():
    return render_template("console/index.html", now=datetime.now(UTC),
                           programs=programs.list_programs(get_session()))


def _program_or_404(slug: str):
    try:
        return programs.get_program(get_session(), slug)
    except ProgramNotFound:
        abort(404)


@bp.route("/programs/new", methods=["GET", "POST"])
@role_required("admin")
def new_program():
    form = NewProgramForm()
    if form.validate_on_submit():
        try:
            settings = form.settings()
            program = programs.create_program(
                get_session(), slug=form.slug.data.strip(),
                country_quotas=parse_country_quotas(form.country_quotas.data),
                actor=current_user.actor, **settings)
        except (InvalidInput, Conflict) as exc:
            get_session().rollback()
            form.refused(exc)
        else:
            flash({"code": "program_created", "name": program.name}, "message")
            return redirect(url_for("console.edit_program", slug=program.slug))
    status = 400 if form.errors or form.form_errors else 200
    return render_template("console/program_form.html", form=form, program=None), status


@bp.route("/programs/<slug>/edit", methods=["GET", "POST"])
@role_required("manager")
def edit_program(slug: str):
    session = get_session()
    program = _program_or_404(slug)
    by_country = programs.country_quotas(session, program.id)
    form = ProgramForm() if request.method == "POST" else ProgramForm.of(program, by_country)
    if form.validate_on_submit():
        try:
            programs.update_program(
                session, program_id=program.id,
                country_quotas=parse_country_quotas(form.country_quotas.data),
                actor=current_user.actor, **form.settings())
        except (InvalidInput, Conflict) as exc:
            session.rollback()
            form.refused(exc)
        else:
            flash({"code": "program_saved", "name": program.name}, "message")
            return redirect(url_for("console.edit_program", slug=slug))
    status = 400 if form.errors or form.form_errors else 200
    return render_template("console/program_form.html", form=form, program=program,
                           country_quotas=by_country, now=datetime.now(UTC),
                           claiming=ClaimingForm()), status


# The claiming buttons of a program's edit page: each one service call.
CLAIMING_ACTIONS = {"open": programs.open_claims, "pause": programs.pause_claims,
                    "resume": programs.resume_claims, "close": programs.close_claims}


@bp.route("/programs/<slug>/open", methods=["POST"], defaults={"action": "open"})
@bp.route("/programs/<slug>/pause", methods=["POST"], defaults={"action": "pause"})
@bp.route("/programs/<slug>/resume", methods=["POST"], defaults={"action": "resume"})
@bp.route("/programs/<slug>/close", methods=["POST"], defaults={"action": "close"})
@role_required("manager")
def claiming(slug: str, action: str):
    # The form has no fields: CSRFProtect has checked its token before this view runs.
    program = _program_or_404(slug)
    try:
        CLAIMING_ACTIONS[action](get_session(), program_id=program.id, actor=current_user.actor)
    except Conflict as exc:
        get_session().rollback()
        flash({**exc.params, "code": exc.code, "fallback": str(exc)}, "error")
    else:
        flash({"code": f"claims_{action}_done", "name": program.name}, "message")
    return redirect(url_for("console.edit_program", slug=slug))
