"""Admins manage the other console accounts (``/manage/managers``): every route is admin only,
and every change is made, checked and audited by services/managers.py."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import flash, redirect, render_template, url_for
from flask_login import current_user

from ...db import get_session
from ...models import MANAGER_ROLES
from ...services import managers
from ...services.errors import DomainError, InvalidInput
from ..security import role_required
from .forms import ActionForm, ManagerRoleForm, NewManagerForm
from .views import bp


def _list_page(error: dict | None = None, status: int = 200):
    return render_template("console/managers.html", managers=managers.list_managers(
        get_session()), roles=MANAGER_ROLES, error=error,
        me=current_user.manager_id), status


@bp.route("/managers")
@role_required("admin")
def managers_page():
    return _list_page()


@bp.route("/managers/new", methods=["GET", "POST"])
@role_required("admin")
def new_manager():
    form = NewManagerForm()
    if form.validate_on_submit():
        try:
            manager, generated = managers.create(
                get_session(), email=form.email.data, role=form.role.data,
                password=form.password.data or None, actor=current_user.actor)
        except InvalidInput as exc:
            field = getattr(form, exc.field or "email", form.email)
            field.errors = [*field.errors, {"code": exc.code, **exc.params}]
        except DomainError as exc:
            form.email.errors = [*form.email.errors, {"code": exc.code, **exc.params}]
        else:
            if generated:
                return render_template("console/manager_created.html", email=manager.email,
                                       role=manager.role, password=generated)
            flash({"code": "manager_created", "email": manager.email})
            return redirect(url_for("console.managers_page"))
    return render_template("console/manager_new.html", form=form), (
        400 if form.errors else 200)


def _change(manager_id: int, form, change):
    """Run ``change`` (a service call) for one manager; back to the list, saying what went
    wrong and for whom when it did not."""
    target = managers.get_manager(get_session(), manager_id)  # 404 for an unknown id
    if not form.validate_on_submit():
        errors = [e for field_errors in form.errors.values() for e in field_errors]
        return _list_page({"code": errors[0] if errors else "bad_request",
                           "email": target.email}, 400)
    try:
        change()
    except DomainError as exc:
        return _list_page({"code": exc.code, "email": target.email, **exc.params},
                          exc.status_code)
    flash({"code": "manager_changed", "email": target.email})
    return redirect(url_for("console.managers_page"))


@bp.route("/managers/<int:manager_id>/role", methods=["POST"])
@role_required("admin")
def change_role(manager_id: int):
    form = ManagerRoleForm()
    return _change(manager_id, form, lambda: managers.change_role(
        get_session(), manager_id=manager_id, role=form.role.data, actor=current_user.actor))


@bp.route("/managers/<int:manager_id>/disable", methods=["POST"])
@role_required("admin")
def disable_manager(manager_id: int):
    return _change(manager_id, ActionForm(), lambda: managers.disable(
        get_session(), manager_id=manager_id, actor=current_user.actor, now=datetime.now(UTC)))


@bp.route("/managers/<int:manager_id>/enable", methods=["POST"])
@role_required("admin")
def enable_manager(manager_id: int):
    return _change(manager_id, ActionForm(), lambda: managers.enable(
        get_session(), manager_id=manager_id, actor=current_user.actor))


@bp.route("/managers/<int:manager_id>/reset-two-factor", methods=["POST"])
@role_required("admin")
def reset_two_factor(manager_id: int):
    return _change(manager_id, ActionForm(), lambda: managers.reset_two_factor(
        get_session(), manager_id=manager_id, actor=current_user.actor))
