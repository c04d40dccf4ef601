"""The console's sign-in and its first page."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import current_user

from ...db import get_session
from ...services import auth as auth_service
from ...services import programs
from .. import limits
from ..security import ManagerUser, begin_session, end_session, local_path, role_required
from .forms import ManagerSignInForm

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
