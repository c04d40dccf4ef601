"""The console's sign-in (a password, then a second factor where one is on or required), each
manager's Security page, the list of programs and each program's dashboard, programs (created
by admins; edited and opened, paused, resumed and closed by managers), and uploads of code
batches and eligibility lists (upload, read the report, commit or cancel; large imports run on
the ``imports`` queue), each program's delivery health (failed and overdue mails, re-sent in one
click; the workers and queues as ``/healthz`` sees them), each program's invitations (counts,
progress, and the buttons that send invitations and reminders), and the audit log (read
only)."""

from __future__ import annotations

from datetime import UTC, datetime

import segno
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user
from markupsafe import Markup

from ...db import get_session
from ...models import ImportJobState, ImportKind
from ...services import (
    audit,
    codes,
    dashboard,
    exports,
    health,
    import_jobs,
    imports,
    invitations,
    mail,
    programs,
    two_factor,
)
from ...services import auth as auth_service
from ...services import verify as verify_service
from ...services.countries import parse_country_quotas
from ...services.errors import Conflict, InvalidInput, ProgramNotFound
from .. import limits, security
from ..hygiene import accepts_uploads
from ..security import ManagerUser, begin_session, end_session, local_path, role_required
from . import charts
from .forms import (
    AuditFilterForm,
    CancelUploadForm,
    ClaimingForm,
    CodeBatchUploadForm,
    CommitUploadForm,
    CreatorsUploadForm,
    DeliveryPageForm,
    EnrollmentCodeForm,
    ManagerSignInForm,
    NewProgramForm,
    ProgramForm,
    ReasonForm,
    ResendFailedForm,
    SendInvitationsForm,
    TwoFactorCodeForm,
    before_key,
)

bp = Blueprint("console", __name__, url_prefix="/manage")


@bp.after_request
def _never_stored(response):
    """Console pages show creators' personal data (and, here, secrets): no cache may keep
    them."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _landing(next_path: str | None):
    path = local_path(next_path)
    return redirect(path if path and path.startswith("/manage") else url_for("console.index"))


def _start_again(code: str):
    security.end_pending_sign_in()
    flash(code)
    return redirect(url_for("console.login"))


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
            if manager.second_step is None:
                return (_begin(manager.manager_id, manager.session_version, "password")
                        or _landing(form.next.data))
            # The failures counted so far stay until the second step passes: a right password
            # again does not buy more guesses at the code.
            security.begin_pending_sign_in(manager, local_path(form.next.data))
            return redirect(url_for("console.sign_in_code" if manager.second_step == "code"
                                    else "console.sign_in_enroll"))
    status = 400 if form.errors or error else 200
    return render_template("console/login.html", form=form, error=error), status


def _begin(manager_id: int, session_version: int, method: str):
    """Every step passed: the session begins (None), or, if the account was disabled or signed
    out meanwhile, the answer that asks for the password again."""
    try:
        signed_in = auth_service.record_manager_sign_in(
            get_session(), manager_id=manager_id, session_version=session_version,
            method=method)
    except auth_service.PasswordRejected:
        return _start_again("two_factor_start_again")
    limits.clear_password_failures(signed_in.email)
    begin_session(ManagerUser.from_signed_in(signed_in))
    return None


def _wrong_code(pending: security.PendingSignIn) -> str | None:
    """Count a wrong code (toward the address's lockout too); the error to show, or None when
    the sign-in has had its tries."""
    limits.record_password_failure(pending.email)
    return "two_factor_code_rejected" if security.count_pending_failure() else None


@bp.route("/login/code", methods=["GET", "POST"])
@limits.sign_in_per_ip
def sign_in_code():
    pending = security.pending_sign_in("code")
    if pending is None:
        return _start_again("two_factor_start_again")
    form = TwoFactorCodeForm()
    error = None
    if form.validate_on_submit():
        limits.password_locked_out(pending.email)
        try:
            method = two_factor.check_code(get_session(), manager_id=pending.manager_id,
                                           code=form.code.data)
        except two_factor.CodeRejected:
            error = _wrong_code(pending)
            if error is None:
                return _start_again("two_factor_too_many_codes")
        else:
            security.end_pending_sign_in()
            return (_begin(pending.manager_id, pending.session_version, method)
                    or _landing(pending.next_path))
    status = 400 if form.errors or error else 200
    return render_template("console/sign_in_code.html", form=form, error=error), status


def _qr_svg(uri: str) -> Markup:
    """The otpauth:// URI as a QR code, drawn here as inline SVG (no script, no request)."""
    return Markup(segno.make(uri, error="m").svg_inline(
        scale=4, light="#fff", title="QR code of the secret"))


def _enroll_page(enrollment: two_factor.Enrollment, form, action: str, error=None,
                 status=200):
    return render_template("console/two_factor_enroll.html", enrollment=enrollment,
                           qr=_qr_svg(enrollment.uri), form=form, action=action,
                           error=error), status


@bp.route("/login/enroll", methods=["GET", "POST"])
@limits.sign_in_per_ip
def sign_in_enroll():
    """An admin without a second factor, right after their password: enrol, then sign in."""
    pending = security.pending_sign_in("enroll")
    if pending is None:
        return _start_again("two_factor_start_again")
    session = get_session()
    enrollment = two_factor.start_enrollment(session, manager_id=pending.manager_id)
    form = EnrollmentCodeForm()
    action = url_for("console.sign_in_enroll")
    if not form.validate_on_submit():
        return _enroll_page(enrollment, form, action, status=400 if form.errors else 200)
    limits.password_locked_out(pending.email)
    try:
        recovery_codes = two_factor.confirm_enrollment(
            session, manager_id=pending.manager_id, code=form.code.data,
            actor=f"manager:{pending.manager_id}")
    except two_factor.CodeRejected:
        error = _wrong_code(pending)
        if error is None:
            return _start_again("two_factor_too_many_codes")
        return _enroll_page(enrollment, form, action, error, 400)
    security.end_pending_sign_in()
    stopped = _begin(pending.manager_id, pending.session_version, "totp")
    if stopped is not None:
        return stopped
    return render_template("console/recovery_codes.html", recovery_codes=recovery_codes,
                           next_path=local_path(pending.next_path))


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


# --------------------------------------------------------------------------- Security page


@bp.route("/security")
@role_required("viewer", enrolling=True)
def security_page():
    status = two_factor.status(get_session(), manager_id=current_user.manager_id)
    return render_template("console/security.html", status=status,
                           required=two_factor.required(current_user.role),
                           form=TwoFactorCodeForm())


@bp.route("/security/two-factor", methods=["GET", "POST"])
@role_required("viewer", enrolling=True)
def two_factor_setup():
    session = get_session()
    if current_user.two_factor:
        flash("two_factor_already_on")
        return redirect(url_for("console.security_page"))
    enrollment = two_factor.start_enrollment(session, manager_id=current_user.manager_id)
    form = EnrollmentCodeForm()
    action = url_for("console.two_factor_setup")
    if not form.validate_on_submit():
        return _enroll_page(enrollment, form, action, status=400 if form.errors else 200)
    limits.password_locked_out(current_user.email)
    try:
        recovery_codes = two_factor.confirm_enrollment(
            session, manager_id=current_user.manager_id, code=form.code.data,
            actor=current_user.actor)
    except two_factor.CodeRejected as exc:
        limits.record_password_failure(current_user.email)
        return _enroll_page(enrollment, form, action, exc.code, 400)
    return render_template("console/recovery_codes.html", recovery_codes=recovery_codes,
                           next_path=url_for("console.security_page"))


@bp.route("/security/two-factor/disable", methods=["POST"])
@role_required("viewer")
def two_factor_disable():
    """Turn one's own second factor off, with a current code (a session alone is not enough);
    an admin cannot."""
    session = get_session()
    form = TwoFactorCodeForm()
    error = None
    if form.validate_on_submit():
        limits.password_locked_out(current_user.email)
        try:
            two_factor.turn_off(session, manager_id=current_user.manager_id,
                                code=form.code.data, actor=current_user.actor)
        except two_factor.CodeRejected as exc:
            limits.record_password_failure(current_user.email)
            error = exc.code
        except two_factor.TwoFactorRequired as exc:
            error = exc.code
        else:
            flash("two_factor_disabled")
            return redirect(url_for("console.security_page"))
    status = two_factor.status(session, manager_id=current_user.manager_id)
    return render_template("console/security.html", status=status, form=form, error=error,
                           required=two_factor.required(current_user.role)), 400


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


# --------------------------------------------------------------------------- exports, reveals


@bp.route("/programs/<slug>/export")
@role_required("viewer")
def export_page(slug: str):
    program = programs.get_program(get_session(), slug)
    return render_template("console/export.html", program=program, form=ReasonForm(),
                           error=None)


def _csv_download(program, lines, suffix: str = ""):
    """The CSV streamed as the service makes it, chunk by chunk (never whole in memory)."""
    filename = f"{program.slug}-claims{suffix}.csv"
    return Response(stream_with_context(lines), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.route("/programs/<slug>/export.csv")
@role_required("viewer")
def export_csv(slug: str):
    program = programs.get_program(get_session(), slug)
    return _csv_download(program, exports.export_claims(
        get_session(), program_id=program.id, actor=current_user.actor))


@bp.route("/programs/<slug>/export.csv", methods=["POST"])
@role_required("admin")
def export_full_codes(slug: str):
    session = get_session()
    program = programs.get_program(session, slug)
    form = ReasonForm()
    error = None
    if form.validate_on_submit():
        try:
            lines = exports.export_claims(session, program_id=program.id,
                                          actor=current_user.actor,
                                          full_codes_reason=form.reason.data)
        except InvalidInput as exc:
            error = exc.code
        else:
            return _csv_download(program, lines, "-full-codes")
    return render_template("console/export.html", program=program, form=form,
                           error=error), 400


@bp.route("/programs/<slug>/claims/<int:claim_id>/reveal", methods=["GET", "POST"])
@role_required("manager")
def reveal_code(slug: str, claim_id: int):
    session = get_session()
    program = programs.get_program(session, slug)
    claim = codes.claim_code(session, program_id=program.id, claim_id=claim_id)
    form = ReasonForm()
    revealed = error = None
    if form.validate_on_submit():
        try:
            revealed = codes.reveal_claim_code(session, program_id=program.id,
                                               claim_id=claim_id, actor=current_user.actor,
                                               reason=form.reason.data)
        except (InvalidInput, Conflict) as exc:
            error = exc.code
    status = 400 if form.errors or error else 200
    # Shown once: the console's pages are never stored (Cache-Control: no-store).
    return render_template("console/reveal.html", program=program, claim=claim, form=form,
                           revealed=revealed, error=error), status


# --------------------------------------------------------------------------- delivery health


@bp.route("/programs/<slug>/delivery")
@role_required("viewer")
def delivery(slug: str):
    session = get_session()
    program = _program_or_404(slug)
    pages = DeliveryPageForm(request.args)
    if not pages.validate():
        return render_template("console/delivery.html", program=program, pages=pages,
                               failed=None, overdue=None, health=None,
                               resend=ResendFailedForm()), 400
    failed, overdue = (verify_service.undelivered_mails(
        session, program_id=program.id, show=show, after_id=pages.after(f"{show}_after"))
        for show in verify_service.Undelivered)
    return render_template("console/delivery.html", program=program, pages=pages,
                           failed=failed, overdue=overdue, health=health.check(session),
                           resend=ResendFailedForm())


@bp.route("/programs/<slug>/delivery/resend-failed", methods=["POST"])
@role_required("manager")
def resend_failed(slug: str):
    program = _program_or_404(slug)
    form = ResendFailedForm()
    if not form.validate_on_submit():
        abort(400)
    resent = mail.resend_failed(get_session(), program_id=program.id, actor=current_user.actor)
    flash({"code": "resend_failed_done", "count": len(resent.mail_ids),
           "cancelled": len(resent.cancelled)}, "message")
    return redirect(url_for("console.delivery", slug=slug))


# --------------------------------------------------------------------------- invitations


@bp.route("/programs/<slug>/invitations")
@role_required("viewer")
def invitations_page(slug: str):
    program = _program_or_404(slug)
    numbers = invitations.counts(get_session(), program_id=program.id)
    return render_template("console/invitations.html", program=program, n=numbers,
                           now=datetime.now(UTC), form=SendInvitationsForm())


@bp.route("/programs/<slug>/invitations", methods=["POST"])
@role_required("manager")
def send_invitations(slug: str):
    program = _program_or_404(slug)
    form = SendInvitationsForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        invitations.request_send(get_session(), program_id=program.id, kind=form.kind.data,
                                 actor=current_user.actor)
    except (InvalidInput, Conflict, invitations.InvitationsUnavailable) as exc:
        get_session().rollback()
        flash({**exc.params, "code": exc.code, "fallback": str(exc)}, "error")
    else:
        flash({"code": f"{form.kind.data}s_requested", "name": program.name}, "message")
    return redirect(url_for("console.invitations_page", slug=slug))


# --------------------------------------------------------------------------- audit log


@bp.route("/audit")
@role_required("viewer")
def audit_log():
    session = get_session()
    form = AuditFilterForm(request.args)
    program_id = None
    if form.validate() and form.program.data:
        try:
            program_id = programs.get_program(session, form.program.data).id
        except ProgramNotFound:
            form.program.errors = [*form.program.errors, "filter_program_unknown"]
    if any(field.errors for field in form):
        return render_template("console/audit.html", form=form, page=None), 400
    since, until = form.range()
    filters = audit.AuditFilter(actor=form.actor.data or None, action=form.action.data or None,
                                program_id=program_id, since=since, until=until)
    page = audit.search(session, filters, before=form.before_key())
    next_args = None
    if page.next_before is not None:
        next_args = {**{k: v for k, v in request.args.items() if k != "before" and v},
                     "before": before_key(*page.next_before)}
    return render_template("console/audit.html", form=form, page=page, next_args=next_args,
                           slugs=programs.slugs_by_id(session))
