"""A program's eligibility list (search by handle or email prefix, add, remove or mark
ineligible) and one creator's support case (claims, mails, the code masked; resend, reissue,
remove). Viewers read; managers act. Every rule and audit is the services' (creators, imports,
codes, mail.queue)."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ...db import get_session
from ...services import codes, creators, imports
from ...services.errors import DomainError, NotFound
from ...services.mail import queue
from ..security import role_required
from .forms import ActionForm, AddCreatorForm, CaseReasonForm
from .views import _program_or_404, bp


def _refused(form, exc: DomainError) -> None:
    """A service's refusal shown by the field it names, or over the whole form."""
    message = {**exc.params, "code": exc.code, "fallback": str(exc)}
    field = getattr(exc, "field", None)
    if field in form._fields and field != "csrf_token":
        form._fields[field].errors = [*form._fields[field].errors, message]
    else:
        form.form_errors.append(message)


def _after_id() -> int | None:
    text = request.args.get("after", "")
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        abort(400)
    return int(text)


def _list_page(program, add_form=None, remove_forms=None, status: int = 200):
    query = request.args.get("q", "")[:320]
    page = creators.search_creators(get_session(), program_id=program.id, query=query,
                                    after=_after_id(), limit=creators.SEARCH_PAGE)
    return render_template("console/creators.html", program=program, query=query, page=page,
                           add_form=add_form or AddCreatorForm(),
                           remove_forms=remove_forms or {}, blank_reason=CaseReasonForm()), status


@bp.route("/programs/<slug>/creators")
@role_required("viewer")
def creators_page(slug: str):
    return _list_page(_program_or_404(slug))


@bp.route("/programs/<slug>/creators", methods=["POST"])
@role_required("manager")
def add_creator(slug: str):
    program = _program_or_404(slug)
    form = AddCreatorForm()
    if form.validate_on_submit():
        try:
            creator_id = imports.add_creator(
                get_session(), program_id=program.id, email=form.email.data,
                handle=form.handle.data, country=form.country.data, actor=current_user.actor)
        except DomainError as exc:
            get_session().rollback()
            _refused(form, exc)
        else:
            flash({"code": "creator_added", "email": form.email.data.strip()}, "message")
            return redirect(url_for("console.creator_case", slug=slug, creator_id=creator_id))
    return _list_page(program, add_form=form, status=400)


def _case(program, creator_id: int) -> dict:
    try:
        return creators.creator_case(get_session(), program_id=program.id,
                                     creator_id=creator_id)
    except NotFound:
        abort(404)


def _case_page(program, case: dict, forms: dict | None = None, status: int = 200):
    forms = {"resend": ActionForm(), "reissue": CaseReasonForm(), "remove": CaseReasonForm(),
             **(forms or {})}
    return render_template("console/creator_case.html", program=program, case=case,
                           forms=forms), status


@bp.route("/programs/<slug>/creators/<int:creator_id>")
@role_required("viewer")
def creator_case(slug: str, creator_id: int):
    program = _program_or_404(slug)
    return _case_page(program, _case(program, creator_id))


def _act(slug: str, creator_id: int, name: str, form, action, done: str):
    """One button of the case page: the form checked, then one service call; a refusal shows
    on the page again (400, nothing changed)."""
    program = _program_or_404(slug)
    case = _case(program, creator_id)
    if form.validate_on_submit():
        try:
            action(program.id, case["creator"]["email"], form)
        except DomainError as exc:
            get_session().rollback()
            _refused(form, exc)
        else:
            flash({"code": done, "email": case["creator"]["email"]}, "message")
            return redirect(url_for("console.creator_case", slug=slug, creator_id=creator_id))
    return _case_page(program, _case(program, creator_id), {name: form}, 400)


@bp.route("/programs/<slug>/creators/<int:creator_id>/resend", methods=["POST"])
@role_required("manager")
def resend_mail(slug: str, creator_id: int):
    return _act(slug, creator_id, "resend", ActionForm(), lambda program_id, email, _form:
                queue.resend_claim_mail(get_session(), program_id=program_id,
                                        creator_email=email, actor=current_user.actor),
                "mail_resent")


@bp.route("/programs/<slug>/creators/<int:creator_id>/reissue", methods=["POST"])
@role_required("manager")
def reissue_code(slug: str, creator_id: int):
    return _act(slug, creator_id, "reissue", CaseReasonForm(), lambda program_id, email, form:
                codes.reissue_claim(get_session(), program_id=program_id,
                                    creator_email=email, reason=form.reason.data,
                                    actor=current_user.actor),
                "code_reissued")


@bp.route("/programs/<slug>/creators/<int:creator_id>/remove", methods=["POST"])
@role_required("manager")
def remove_creator(slug: str, creator_id: int):
    form = CaseReasonForm()
    if form.origin.data == "list":  # the list's button: its errors show on the list
        program = _program_or_404(slug)
        case = _case(program, creator_id)
        if form.validate_on_submit():
            try:
                creators.remove_from_list(get_session(), program_id=program.id,
                                          email=case["creator"]["email"],
                                          reason=form.reason.data, actor=current_user.actor)
            except DomainError as exc:
                get_session().rollback()
                _refused(form, exc)
            else:
                flash({"code": "creator_removed", "email": case["creator"]["email"]},
                      "message")
                return redirect(url_for("console.creators_page", slug=slug))
        return _list_page(program, remove_forms={creator_id: form}, status=400)
    return _act(slug, creator_id, "remove", form, lambda program_id, email, form:
                creators.remove_from_list(get_session(), program_id=program_id, email=email,
                                          reason=form.reason.data, actor=current_user.actor),
                "creator_removed")



