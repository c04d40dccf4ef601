"""Admins make and revoke the API tokens of scripts (``/manage/api-tokens``): every route is
admin only, and every change is made, checked and audited by services/api_tokens.py. A new
token is shown once, on the page that answers its form (no cache keeps console pages)."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import flash, redirect, render_template, url_for
from flask_login import current_user

from ...db import get_session
from ...services import api_tokens
from ...services.errors import DomainError, InvalidInput
from ..security import role_required
from .forms import ActionForm, NewApiTokenForm
from .views import bp


def _list_page(error: dict | None = None, status: int = 200):
    return render_template("console/api_tokens.html", now=datetime.now(UTC),
                           tokens=api_tokens.list_tokens(get_session()), error=error), status


@bp.route("/api-tokens")
@role_required("admin")
def api_tokens_page():
    return _list_page()


@bp.route("/api-tokens/new", methods=["GET", "POST"])
@role_required("admin")
def new_api_token():
    form = NewApiTokenForm()
    if form.validate_on_submit():
        try:
            created = api_tokens.create(
                get_session(), name=form.name.data, role=form.role.data,
                expires_in_days=form.expires_in_days(), created_by=current_user.manager_id,
                actor=current_user.actor)
        except InvalidInput as exc:
            field = getattr(form, exc.field or "name", form.name)
            field.errors = [*field.errors, {"code": exc.code, **exc.params}]
        except DomainError as exc:
            form.name.errors = [*form.name.errors, {"code": exc.code, **exc.params}]
        else:
            return render_template("console/api_token_created.html", token=created.token,
                                   row=created.row)
    return render_template("console/api_token_new.html", form=form), (
        400 if form.errors else 200)


@bp.route("/api-tokens/<int:token_id>/revoke", methods=["POST"])
@role_required("admin")
def revoke_api_token(token_id: int):
    target = api_tokens.get_token(get_session(), token_id=token_id)  # 404 for an unknown id
    form = ActionForm()
    if not form.validate_on_submit():
        errors = [e for field_errors in form.errors.values() for e in field_errors]
        return _list_page({"code": errors[0] if errors else "bad_request",
                           "prefix": target.prefix}, 400)
    revoked = api_tokens.revoke(get_session(), token_id=token_id,
                                revoked_by=current_user.manager_id, actor=current_user.actor)
    flash({"code": "api_token_revoked" if revoked else "api_token_already_revoked",
           "prefix": target.prefix})
    return redirect(url_for("console.api_tokens_page"))
