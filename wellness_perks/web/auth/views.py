"""Password-less sign-in for creators, and the one-click opt-out of a program's invitations.

A link from a mail opens a page with one button; only that button's POST signs in (or opts
out), so a mail scanner or a link preview that fetches the link (GET or HEAD) changes nothing.
"""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_login import current_user

from ...db import get_session
from ...services import auth as auth_service
from ...services import invitations
from ...services.emails import normalise_email
from ...services.errors import InvalidInput
from .. import limits
from ..security import CreatorUser, begin_session, csrf, end_session, local_path
from .forms import ConfirmSignInForm, SignInForm

bp = Blueprint("auth", __name__)

NEXT_KEY = "sign_in_next"  # the page asked for before sign-in, kept from /login to the link


def _landing(next_path: str | None):
    return redirect(local_path(next_path) or url_for("portal.index"))


@bp.route("/login", methods=["GET", "POST"])
@limits.sign_in_per_ip
def login():
    if current_user.is_authenticated:
        return _landing(request.args.get("next"))
    form = SignInForm()
    if request.method == "GET":
        form.next.data = local_path(request.args.get("next"))
    if form.validate_on_submit():
        try:
            address = normalise_email(form.email.data)
            limits.sign_in_per_address(address)  # 429 past the limit: no more mails to them
            auth_service.ask_for_sign_in(email=address)
        except InvalidInput as exc:
            form.email.errors.append({"code": exc.code, **exc.params})
        else:
            next_path = local_path(form.next.data)
            if next_path:
                session[NEXT_KEY] = next_path
            # The same answer whether or not the address is on a list.
            return redirect(url_for("auth.check_email"))
    status = 400 if form.errors else 200
    return render_template("auth/login.html", form=form), status


@bp.route("/login/sent")
def check_email():
    return render_template("auth/check_email.html")


@bp.route("/login/<token>", methods=["GET", "POST"])
def redeem(token: str):
    form = ConfirmSignInForm()
    if request.method != "POST":  # GET and HEAD: looking at a link never uses it up
        if current_user.is_authenticated:
            return _landing(request.args.get("next") or session.get(NEXT_KEY))
        try:
            link = auth_service.inspect_sign_in_link(get_session(), token=token)
        except auth_service.SignInLinkError as exc:
            return _link_refused(exc)
        form.next.data = local_path(request.args.get("next") or session.get(NEXT_KEY))
        return render_template("auth/confirm.html", form=form, link=link, token=token)
    if not form.validate_on_submit():
        return _link_refused(auth_service.SignInLinkInvalid())
    try:
        creator = auth_service.redeem_sign_in_token(get_session(), token=token)
    except auth_service.SignInLinkError as exc:
        return _link_refused(exc)
    next_path = local_path(form.next.data or session.get(NEXT_KEY))
    begin_session(CreatorUser(creator.id, creator.email, creator.handle, creator.locale,
                              creator.session_version))
    return _landing(next_path)


def _link_refused(exc: auth_service.SignInLinkError):
    return render_template("auth/login.html", form=SignInForm(), link_error=exc.code), 400


ONE_CLICK = ("List-Unsubscribe", "One-Click")  # the body of an RFC 8058 one-click POST


@bp.route("/opt-out/<token>", methods=["GET", "POST"])
@csrf.exempt  # see below: the RFC 8058 POST alone goes without a CSRF token
def opt_out(token: str):
    """GET (and HEAD): the page of the link, with one button; opening it changes nothing. POST:
    opted out (a bad link is a 400 page, from ``OptOutLinkInvalid``)."""
    if request.method != "POST":
        link = invitations.inspect_opt_out(get_session(), token=token)
        return render_template("auth/opt_out.html", link=link, token=token)
    one_click = request.form.get(ONE_CLICK[0]) == ONE_CLICK[1]
    if not one_click:
        # Our page's button carries a CSRF token like every form. A mail client's one-click
        # POST (RFC 8058) cannot: it has no page of ours to take one from, and the link's
        # signed token, which no other site knows, is what proves it; opting out is all it
        # can do, and doing it twice changes nothing.
        csrf.protect()
    link = invitations.opt_out(get_session(), token=token)
    if one_click:
        return render_template("auth/opt_out.html", link=link, token=token)
    return redirect(url_for("auth.opt_out", token=token))


@bp.after_request
def _links_are_private(response):
    """Pages reached through a sign-in or opt-out link are never stored by a cache nor
    indexed: their address is a credential."""
    if request.endpoint in ("auth.redeem", "auth.opt_out"):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@bp.route("/logout", methods=["POST"])
def logout():
    end_session()  # on every device: a copied cookie stops working too
    return redirect(url_for("auth.login"))
