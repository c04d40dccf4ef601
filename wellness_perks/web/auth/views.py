"""Password-less sign-in for creators."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, session, url_for
from flask_login import current_user, login_user, logout_user

from ...db import get_session
from ...services import auth as auth_service
from ...services.errors import InvalidInput
from ..security import CreatorUser
from .forms import SignInForm

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("portal.index"))
    form = SignInForm()
    if form.validate_on_submit():
        try:
            auth_service.request_sign_in(get_session(), email=form.email.data)
        except InvalidInput as exc:
            form.email.errors.append({"code": exc.code, **exc.params})
        else:
            # The same answer whether or not the address is on a list.
            return redirect(url_for("auth.check_email"))
    status = 400 if form.errors else 200
    return render_template("auth/login.html", form=form), status


@bp.route("/login/sent")
def check_email():
    return render_template("auth/check_email.html")


@bp.route("/login/<token>")
def redeem(token: str):
    try:
        creator = auth_service.redeem_sign_in_token(get_session(), token=token)
    except auth_service.SignInLinkError as exc:
        return render_template("auth/login.html", form=SignInForm(), link_error=exc.code), 400
    session.clear()  # no session data survives from before the sign-in
    login_user(CreatorUser(creator.id, creator.email, creator.handle, creator.locale))
    return redirect(url_for("portal.index"))


@bp.route("/logout", methods=["POST"])
def logout():
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))
