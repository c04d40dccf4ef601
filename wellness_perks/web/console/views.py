"""The console's sign-in, its list of programs and each program's dashboard."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import current_user

from ...db import get_session
from ...services import auth as auth_service
from ...services import dashboard, programs
from .. import limits
from ..security import ManagerUser, begin_session, end_session, local_path, role_required
from . import charts
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


@bp.route("/programs/<slug>")
@role_required("viewer")
def program_dashboard(slug: str):
    session = get_session()
    numbers = dashboard.program_dashboard(session, program=programs.get_program(session, slug))
    return render_template("console/dashboard.html", d=numbers, charts=_charts(numbers))


def _charts(d: dashboard.Dashboard) -> dict:
    """The dashboard's series drawn as SVG (the page shows the same numbers in tables)."""
    return {
        "per_hour": charts.bar_chart(
            [(f"{hour:%d %b %H:00}", n) for hour, n in d.per_hour], chart_id="chart-hours",
            title=f"Claims per hour, last {len(d.per_hour)} hours (UTC)",
            desc=f"{sum(n for _h, n in d.per_hour):,} claims in all; the busiest hour had "
                 f"{max((n for _h, n in d.per_hour), default=0):,}.", label_every=12),
        "per_day": charts.bar_chart(
            [(f"{day:%d %b}", n) for day, n in d.per_day], chart_id="chart-days",
            title=f"Claims per day, last {len(d.per_day)} days (UTC)",
            desc=f"{sum(n for _d, n in d.per_day):,} claims in all; today so far "
                 f"{d.per_day[-1][1] if d.per_day else 0:,}.", label_every=2),
        "stock": charts.line_chart(
            [(at.timestamp(), n, f"{at:%d %b %H:%M}") for at, n in d.stock_over_time],
            chart_id="chart-stock", title="Codes in stock over time (UTC)",
            desc=f"{d.in_stock:,} codes in stock now"
                 + (f"; {d.stock_over_time[0][1]:,} on {d.stock_over_time[0][0]:%d %b %H:%M}."
                    if len(d.stock_over_time) > 1 else ".")),
    }
