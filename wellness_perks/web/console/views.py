"""The console's sign-in, its first page, and uploads of code batches and eligibility lists
(upload, read the report, commit or cancel; large imports run on the ``imports`` queue)."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ...db import get_session
from ...models import ImportJobState, ImportKind
from ...services import auth as auth_service
from ...services import import_jobs, imports, programs
from ...services.errors import InvalidInput
from .. import limits
from ..hygiene import accepts_uploads
from ..security import ManagerUser, begin_session, end_session, local_path, role_required
from .forms import (
    CancelUploadForm,
    CodeBatchUploadForm,
    CommitUploadForm,
    CreatorsUploadForm,
    ManagerSignInForm,
)

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


# --------------------------------------------------------------------------- uploads


# Each kind of upload: its page (view and template).
UPLOAD_PAGES = {ImportKind.codes: ("console.batches", "console/batches.html"),
                ImportKind.creators: ("console.upload_creators", "console/creators_upload.html")}


def _upload_page(kind: str, program, form, error=None, status: int = 200):
    session = get_session()
    return render_template(
        UPLOAD_PAGES[kind][1], program=program, form=form, error=error,
        batches=import_jobs.list_batches(session, program_id=program.id)
        if kind == ImportKind.codes else [],
        jobs=import_jobs.recent_jobs(session, program_id=program.id, kind=kind)), status


def _stage(kind: str, slug: str, form):
    """Check the posted file (the importer's dry run) and show its report, or the form again
    with what was wrong (the file's line and field)."""
    program = programs.get_program(get_session(), slug)
    if not form.validate_on_submit():
        return _upload_page(kind, program, form, status=400 if form.is_submitted() else 200)
    upload = form.file.data
    options = {}
    if kind == ImportKind.codes:
        options = {"batch_name": form.batch_name.data, "expires_on": form.expires_on}
    try:
        with upload.stream as stream:  # a large upload is a temporary file: closed at once
            staged = import_jobs.stage_upload(
                get_session(), program=program, manager_id=current_user.manager_id, kind=kind,
                stream=stream, filename=upload.filename, actor=current_user.actor, **options)
    except imports.FileRejected as exc:
        return _upload_page(kind, program, form, error=exc.issue.as_dict(), status=400)
    except InvalidInput as exc:
        error = {"line": None, "field": exc.field, "code": exc.code, "params": exc.params,
                 "reason": str(exc)}
        return _upload_page(kind, program, form, error=error, status=400)
    return redirect(url_for("console.upload_report", slug=slug, token=staged.upload.token))


@bp.route("/programs/<slug>/batches", methods=["GET", "POST"])
@accepts_uploads
@role_required("manager")
def batches(slug: str):
    return _stage(ImportKind.codes, slug, CodeBatchUploadForm())


@bp.route("/programs/<slug>/creators/upload", methods=["GET", "POST"])
@accepts_uploads
@role_required("manager")
def upload_creators(slug: str):
    return _stage(ImportKind.creators, slug, CreatorsUploadForm())


def _staged(slug: str, token: str):
    program = programs.get_program(get_session(), slug)
    staged = import_jobs.staged_upload(get_session(), program_id=program.id,
                                       manager_id=current_user.manager_id, token=token)
    return program, staged


@bp.route("/programs/<slug>/uploads/<token>")
@role_required("manager")
def upload_report(slug: str, token: str):
    program, staged = _staged(slug, token)
    return render_template("console/upload_report.html", program=program, staged=staged,
                           report=staged.report, commit_form=CommitUploadForm(),
                           cancel_form=CancelUploadForm(), error=None)


@bp.route("/programs/<slug>/uploads/<token>/commit", methods=["POST"])
@role_required("manager")
def commit_upload(slug: str, token: str):
    program, staged = _staged(slug, token)
    form = CommitUploadForm()
    error = None
    if form.validate_on_submit():
        try:
            job = import_jobs.commit_upload(
                get_session(), program_id=program.id, manager_id=current_user.manager_id,
                token=token, skip_invalid=form.skip_invalid.data, actor=current_user.actor)
        except InvalidInput as exc:
            error = exc.code
        else:
            return redirect(url_for("console.import_job", slug=slug, job_id=job.id))
    return render_template("console/upload_report.html", program=program, staged=staged,
                           report=staged.report, commit_form=form,
                           cancel_form=CancelUploadForm(), error=error), 400


@bp.route("/programs/<slug>/uploads/<token>/cancel", methods=["POST"])
@role_required("manager")
def cancel_upload(slug: str, token: str):
    program, staged = _staged(slug, token)
    form = CancelUploadForm()
    if not form.validate_on_submit():
        return render_template("console/upload_report.html", program=program, staged=staged,
                               report=staged.report, commit_form=CommitUploadForm(),
                               cancel_form=form, error=None), 400
    import_jobs.cancel_upload(get_session(), program_id=program.id,
                              manager_id=current_user.manager_id, token=token,
                              actor=current_user.actor)
    flash("upload_cancelled")
    return redirect(url_for(UPLOAD_PAGES[ImportKind(staged.upload.kind)][0], slug=slug))


@bp.route("/programs/<slug>/imports/<int:job_id>")
@role_required("manager")
def import_job(slug: str, job_id: int):
    program = programs.get_program(get_session(), slug)
    job = import_jobs.import_job(get_session(), program_id=program.id, job_id=job_id)
    running = job.state in (ImportJobState.queued, ImportJobState.running)
    return render_template("console/import_job.html", program=program, job=job,
                           running=running, report=import_jobs.job_report(job))
