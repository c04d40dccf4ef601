"""Uploads from the console: a file is staged and checked (the importers' dry run), its report
read by the manager, then committed (imported, in the request or by a task) or cancelled.

A staged upload is bound to its program and to the manager who sent it; its file waits in
``UPLOAD_DIR`` under a random name (mode 0600) until it is committed, cancelled or expires
(``UPLOAD_STAGED_MINUTES``). Its report holds line numbers, fields and masked codes, never a
code. A commit makes an import job: a file of ``IMPORT_IN_BACKGROUND_ROWS`` rows or more is
imported by a task on the ``imports`` queue, and the job's row says how far it got. Every
import is the importers' own (``imports.import_codes`` / ``import_creators``), all-or-nothing;
a file whose bytes (SHA-256) were imported into the program before is flagged in its report.
Commits and cancels are audited.

A job can be stuck: queued, its task's message lost (the broker was down at the commit), or
running, its worker dead. The sweeper (``recover_stuck_jobs``) hands a queued job out again
once its ``heartbeat_at`` (when it was last handed out) is ``SWEEP_PENDING_AFTER_SECONDS`` old,
and takes back a running job whose heartbeat (written with its progress) is
``IMPORT_STALE_AFTER_SECONDS`` old: queued again and handed out, or, once it was started
``IMPORT_MAX_ATTEMPTS`` times, failed with ``import_interrupted``. A re-run imports the file
from its start, which is safe: an import is one transaction, and the job's outcome is its last
write (``before_commit``), fenced by the run's attempt number, so the file's rows commit once,
with the job marked done, or not at all, and a run that lost its job to another writes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from flask import current_app
from sqlmodel import Session, select

from .. import dispatch
from ..db import begin_write
from ..logs import log_event
from ..models import CodeBatch, ImportJob, ImportJobState, ImportKind, Program, StagedUpload
from . import audit, imports
from .errors import DomainError, InvalidInput, NotFound

COPY_CHUNK = 1024 * 1024
MAX_FILENAME_LENGTH = 200

STAGED = "upload.staged"
COMMITTED = "upload.committed"
CANCELLED = "upload.cancelled"


class UploadNotFound(NotFound):
    code = "upload_not_found"

    def __init__(self) -> None:
        super().__init__("this upload is not waiting for a commit (it was committed, cancelled "
                         "or has expired): upload the file again")


class _JobTakenOver(Exception):  # noqa: N818 - not an error: another run owns the job now
    """This run's job was taken back by the sweeper (and maybe started again): its import must
    not commit."""


# The reason a job given up by the sweeper failed with (its runs were all interrupted).
INTERRUPTED = "import_interrupted"


class ImportNotFound(NotFound):
    code = "import_not_found"

    def __init__(self, job_id: int) -> None:
        super().__init__(f"this program has no import #{job_id}", job_id=job_id)


@dataclass(frozen=True)
class Staged:
    """A staged upload and what its report says (``report``: ``ImportReport.as_dict``)."""

    upload: StagedUpload
    report: dict
    imported_before: ImportJob | None

    @property
    def committable(self) -> bool:
        """Whether a commit can go ahead without skipping rows (no invalid row)."""
        return self.report["invalid"] == 0


def _upload_dir() -> Path:
    path = Path(current_app.config["UPLOAD_DIR"])
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _stored_path(stored_name: str) -> Path:
    return _upload_dir() / stored_name


def _remove_file(stored_name: str | None) -> None:
    if stored_name:
        _stored_path(stored_name).unlink(missing_ok=True)


def _save(stream: BinaryIO) -> tuple[str, str, int]:
    """Copy the upload to a file of its own (random name, 0600): (name, SHA-256, size)."""
    stored_name = secrets.token_hex(16)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(_stored_path(stored_name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return stored_name, digest.hexdigest(), size


def _clean_filename(filename: str | None) -> str:
    name = Path((filename or "").replace("\\", "/")).name
    name = "".join("\ufffd" if ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f else ch for ch in name)
    return name[:MAX_FILENAME_LENGTH] or "upload"


def _run_importer(session: Session, *, program: Program, kind: str, stream: BinaryIO,
                  filename: str, batch_name: str | None, expires_on: date | None,
                  skip_invalid: bool, actor: str, dry_run: bool,
                  progress=None, before_commit=None) -> imports.ImportReport:
    if kind == ImportKind.codes:
        return imports.import_codes(session, program=program, stream=stream, filename=filename,
                                    batch_name=batch_name, expires_on=expires_on,
                                    skip_invalid=skip_invalid, progress=progress, actor=actor,
                                    dry_run=dry_run, before_commit=before_commit)
    return imports.import_creators(session, program=program, stream=stream, filename=filename,
                                   skip_invalid=skip_invalid, progress=progress, actor=actor,
                                   dry_run=dry_run, before_commit=before_commit)


def stage_upload(session: Session, *, program: Program, manager_id: int, kind: str,
                 stream: BinaryIO, filename: str | None, batch_name: str | None = None,
                 expires_on: date | None = None, actor: str) -> Staged:
    """Keep an uploaded file and check it as its import would (``dry_run``), writing nothing
    else. A file the importer rejects as a whole (``imports.FileRejected``, with its line) or
    bad options (``InvalidInput``) are raised, and nothing is kept."""
    kind = ImportKind(kind).value
    filename = _clean_filename(filename)
    batch_name = (batch_name or "").strip() or None
    program_id = program.id
    remove_expired_uploads(session)
    stored_name, sha256, size = _save(stream)
    try:
        with _stored_path(stored_name).open("rb") as fh:
            report = _run_importer(session, program=program, kind=kind, stream=fh,
                                   filename=filename, batch_name=batch_name,
                                   expires_on=expires_on, skip_invalid=False, actor=actor,
                                   dry_run=True)
    except BaseException:
        _remove_file(stored_name)
        raise
    before = _imported_before(session, program_id, kind, sha256)
    now = datetime.now(UTC)
    upload = StagedUpload(
        token=secrets.token_urlsafe(24), program_id=program_id, manager_id=manager_id,
        kind=kind, filename=filename, stored_name=stored_name, sha256=sha256, size_bytes=size,
        batch_name=batch_name, expires_on=expires_on, report=json.dumps(report.as_dict()),
        rows=report.rows, imported_before_job_id=before.id if before else None,
        created_at=now,
        expires_at=now + timedelta(minutes=current_app.config["UPLOAD_STAGED_MINUTES"]))
    try:
        session.add(upload)
        session.commit()
    except BaseException:
        session.rollback()
        _remove_file(stored_name)
        raise
    log_event(STAGED, program_id=program_id, kind=kind, rows=upload.rows, upload_id=upload.id)
    return Staged(upload, report.as_dict(), before)


def _imported_before(session: Session, program_id: int, kind: str,
                     sha256: str) -> ImportJob | None:
    """The newest import of a file with these bytes into this program that wrote something."""
    return session.exec(
        select(ImportJob).where(ImportJob.program_id == program_id, ImportJob.sha256 == sha256,
                                ImportJob.kind == kind,
                                ImportJob.state == ImportJobState.done.value,
                                ImportJob.imported > 0)
        .order_by(ImportJob.id.desc()).limit(1)).first()


def staged_upload(session: Session, *, program_id: int, manager_id: int,
                  token: str, for_update: bool = False) -> Staged:
    """A staged upload of this program sent by this manager (NotFound for anyone else's, and
    once it has expired)."""
    query = select(StagedUpload).where(StagedUpload.token == token,
                                       StagedUpload.program_id == program_id,
                                       StagedUpload.manager_id == manager_id)
    if for_update:
        query = query.with_for_update()
    upload = session.exec(query).first()
    if upload is None or upload.expires_at <= datetime.now(UTC):
        raise UploadNotFound()
    before = (session.get(ImportJob, upload.imported_before_job_id)
              if upload.imported_before_job_id else None)
    return Staged(upload, json.loads(upload.report), before)


def cancel_upload(session: Session, *, program_id: int, manager_id: int, token: str,
                  actor: str) -> None:
    """Drop a staged upload and its file; nothing is imported. Audited."""
    staged = _take(session, program_id, manager_id, token)
    upload = staged.upload
    audit.record(session, audit.event(
        actor=actor, action=CANCELLED, object_type="program", object_id=program_id,
        program_id=program_id,
        detail={"kind": upload.kind, "file": upload.filename, "sha256": upload.sha256,
                "rows": upload.rows}))
    session.delete(upload)
    session.commit()
    _remove_file(upload.stored_name)


def _take(session: Session, program_id: int, manager_id: int, token: str) -> Staged:
    """The staged upload, locked (one commit or cancel of it wins; the other finds none)."""
    begin_write(session)
    try:
        return staged_upload(session, program_id=program_id, manager_id=manager_id,
                             token=token, for_update=True)
    except NotFound:
        session.rollback()
        raise


def commit_upload(session: Session, *, program_id: int, manager_id: int, token: str,
                  skip_invalid: bool, actor: str) -> ImportJob:
    """Import a staged upload: an import job is made (and the staged upload goes); the file is
    imported here, or by a task on the ``imports`` queue when it has
    ``IMPORT_IN_BACKGROUND_ROWS`` rows or more. A file with invalid rows is imported only when
    ``skip_invalid`` says to leave them out. Audited."""
    staged = _take(session, program_id, manager_id, token)
    upload = staged.upload
    if not staged.committable and not skip_invalid:
        session.rollback()
        raise InvalidInput(
            f"{staged.report['invalid']} rows are invalid: fix the file and upload it again, "
            "or choose to skip the invalid rows", field="skip_invalid",
            code="upload_rows_invalid", invalid=staged.report["invalid"])
    job = ImportJob(
        program_id=program_id, manager_id=manager_id, kind=upload.kind,
        filename=upload.filename, stored_name=upload.stored_name, sha256=upload.sha256,
        size_bytes=upload.size_bytes, batch_name=upload.batch_name,
        expires_on=upload.expires_on, skip_invalid=skip_invalid,
        state=ImportJobState.queued.value, rows_total=upload.rows,
        heartbeat_at=datetime.now(UTC))
    session.add(job)
    session.delete(upload)
    session.flush()
    background = upload.rows >= current_app.config["IMPORT_IN_BACKGROUND_ROWS"]
    audit.record(session, audit.event(
        actor=actor, action=COMMITTED, object_type="import_job", object_id=job.id,
        program_id=program_id,
        detail={"kind": job.kind, "file": job.filename, "sha256": job.sha256,
                "rows": job.rows_total, "skip_invalid": skip_invalid,
                "background": background}))
    session.commit()
    job_id = job.id
    if background:
        dispatch.import_upload(job_id)  # after the commit: the task reads the job's row
        session.expire_all()
        return session.get(ImportJob, job_id)
    return run_import_job(session, job_id=job_id)


def _this_run(job_id: int, attempt: int):
    """A job's row as long as this run owns it: running, at this run's attempt number."""
    return sa.and_(ImportJob.id == job_id, ImportJob.state == ImportJobState.running.value,
                   ImportJob.attempts == attempt)


def run_import_job(session: Session, *, job_id: int) -> ImportJob:
    """Import a queued job's file (once: a job that is not queued is left as it is), writing
    its progress as it goes, then its report. A failure leaves nothing of the import (the
    importers are all-or-nothing) and the job ``failed`` with the error's code.

    Each run is an attempt (``attempts`` counts them). A done job's outcome commits with its
    import (``before_commit``), and every outcome is written only while the job is this
    attempt's: a run whose job the sweeper took back meanwhile rolls its import back and leaves
    the job to the run that has it."""
    session.rollback()
    now = datetime.now(UTC)
    started = session.execute(
        sa.update(ImportJob).where(ImportJob.id == job_id,
                                   ImportJob.state == ImportJobState.queued.value)
        .values(state=ImportJobState.running.value, started_at=now, heartbeat_at=now,
                attempts=ImportJob.attempts + 1)
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    job = session.get(ImportJob, job_id, populate_existing=True)
    if not started or job is None:
        return job
    program = session.get(Program, job.program_id)
    stored_name, program_id, attempt = job.stored_name, job.program_id, job.attempts
    rows_total = job.rows_total
    progress = _ProgressWriter(session.get_bind(), job,
                               every=current_app.config["IMPORT_PROGRESS_SECONDS"])
    outcome: dict = {}

    def done(report: imports.ImportReport) -> None:
        marked = session.execute(sa.update(ImportJob).where(_this_run(job_id, attempt)).values(
            state=ImportJobState.done.value, error=None, finished_at=datetime.now(UTC),
            stored_name=None, report=json.dumps(report.as_dict()), imported=report.imported,
            batch_id=report.batch_id, rows_done=rows_total)
            .execution_options(synchronize_session=False)).rowcount
        if not marked:
            raise _JobTakenOver

    try:
        with _stored_path(job.stored_name).open("rb") as fh:
            report = _run_importer(
                session, program=program, kind=job.kind, stream=fh, filename=job.filename,
                batch_name=job.batch_name, expires_on=job.expires_on,
                skip_invalid=job.skip_invalid, actor=f"manager:{job.manager_id}",
                dry_run=False, progress=progress, before_commit=done)
    except _JobTakenOver:
        log_event("import_job.taken_over", logging.WARNING, job_id=job_id, attempt=attempt)
        return session.get(ImportJob, job_id, populate_existing=True)
    except imports.FileRejected as exc:
        outcome = {"state": ImportJobState.failed.value, "error": exc.code,
                   "report": json.dumps({"file_error": exc.issue.as_dict()})}
    except DomainError as exc:
        outcome = {"state": ImportJobState.failed.value, "error": exc.code,
                   "report": json.dumps({"error": exc.code, "params": exc.params})}
    except OSError as exc:
        log_event("import_job.file_missing", logging.WARNING, job_id=job_id,
                  error=type(exc).__name__)
        outcome = {"state": ImportJobState.failed.value, "error": "upload_file_missing"}
    else:
        if report.committed:
            outcome = {"state": ImportJobState.done.value}  # written with the import (done)
        else:
            outcome = {"state": ImportJobState.failed.value, "error": "upload_rows_invalid",
                       "report": json.dumps(report.as_dict()), "imported": report.imported,
                       "batch_id": report.batch_id, "rows_done": rows_total}
    if outcome["state"] == ImportJobState.failed.value:
        session.rollback()
        marked = session.execute(sa.update(ImportJob).where(_this_run(job_id, attempt)).values(
            finished_at=datetime.now(UTC), stored_name=None, **outcome)
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
        if not marked:
            log_event("import_job.taken_over", logging.WARNING, job_id=job_id, attempt=attempt)
            return session.get(ImportJob, job_id, populate_existing=True)
    _remove_file(stored_name)
    log_event("import_job.finished", job_id=job_id, program_id=program_id,
              state=outcome["state"], attempt=attempt)
    return session.get(ImportJob, job_id, populate_existing=True)


class _ProgressWriter:
    """The importers' progress (bytes read) as the job's ``rows_done``, and the run's heartbeat
    (``heartbeat_at``): the rows in proportion to the bytes, written at most ``every`` seconds
    (``IMPORT_PROGRESS_SECONDS``) in a transaction of its own, so that the console sees it while
    the import's transaction is open, and only while the job is this run's. SQLite has one
    writer at a time (the import): there, progress shows when the import ends, and the sweeper,
    which must write to take a job back, waits for the import to end, and finds it done."""

    def __init__(self, bind: sa.Engine | sa.Connection, job: ImportJob, *,
                 every: float) -> None:
        self._engine = bind.engine if isinstance(bind, sa.Connection) else bind
        self._job_id = job.id
        self._attempt = job.attempts
        self._rows = job.rows_total
        self._size = max(job.size_bytes, 1)
        self._enabled = self._engine.dialect.name != "sqlite"
        self._every = every
        self._written_at = time.monotonic()

    def __call__(self, bytes_read: int) -> None:
        if not self._enabled or time.monotonic() - self._written_at < self._every:
            return
        self._written_at = time.monotonic()
        rows_done = min(self._rows, self._rows * bytes_read // self._size)
        with self._engine.begin() as conn:
            conn.execute(sa.update(ImportJob).where(_this_run(self._job_id, self._attempt))
                         .values(rows_done=rows_done, heartbeat_at=datetime.now(UTC)))


@dataclass(frozen=True)
class Recovered:
    """What ``recover_stuck_jobs`` did: the jobs to hand out (queued ones whose message was
    lost, and running ones taken back), those taken back, and those given up."""

    dispatch: list[int]
    interrupted: list[int]
    failed: list[int]


def recover_stuck_jobs(session: Session, *, now: datetime) -> Recovered:
    """The sweeper's part for import jobs (see the module's docstring); the caller hands out
    ``dispatch`` after this has committed. A queued job handed out is stamped (``heartbeat_at``),
    so that it is handed out again only after another ``SWEEP_PENDING_AFTER_SECONDS``, not at
    every sweep while the broker is down. Each write re-checks what was read (state, heartbeat),
    so a job that moved on meanwhile (its worker wrote, or finished) is left alone."""
    config = current_app.config
    lost_before = now - timedelta(seconds=config["SWEEP_PENDING_AFTER_SECONDS"])
    stale_before = now - timedelta(seconds=config["IMPORT_STALE_AFTER_SECONDS"])
    max_attempts = config["IMPORT_MAX_ATTEMPTS"]
    q = session.execute
    queued = ImportJob.state == ImportJobState.queued.value
    lost = sa.and_(queued, sa.func.coalesce(ImportJob.heartbeat_at, ImportJob.created_at)
                   < lost_before)
    stale = sa.and_(ImportJob.state == ImportJobState.running.value,
                    sa.func.coalesce(ImportJob.heartbeat_at, ImportJob.started_at)
                    < stale_before)
    lost_ids = list(q(sa.select(ImportJob.id).where(lost).order_by(ImportJob.id)).scalars())
    stuck = q(sa.select(ImportJob.id, ImportJob.attempts, ImportJob.stored_name).where(stale)
              .order_by(ImportJob.id)).all()
    session.rollback()
    if not lost_ids and not stuck:
        return Recovered([], [], [])
    update = functools.partial(sa.update, ImportJob)
    if lost_ids:
        lost_ids = list(q(update().where(ImportJob.id.in_(lost_ids), lost)
                          .values(heartbeat_at=now).returning(ImportJob.id)
                          .execution_options(synchronize_session=False)).scalars())
    given_up = [job_id for job_id, attempts, _name in stuck if attempts >= max_attempts]
    again = [job_id for job_id, attempts, _name in stuck if attempts < max_attempts]
    if given_up:
        given_up = list(q(update().where(ImportJob.id.in_(given_up), stale).values(
            state=ImportJobState.failed.value, error=INTERRUPTED, finished_at=now,
            stored_name=None).returning(ImportJob.id)
            .execution_options(synchronize_session=False)).scalars())
    if again:
        again = list(q(update().where(ImportJob.id.in_(again), stale).values(
            state=ImportJobState.queued.value, heartbeat_at=now).returning(ImportJob.id)
            .execution_options(synchronize_session=False)).scalars())
    session.commit()
    for job_id, attempts, stored_name in stuck:
        if job_id in given_up:
            _remove_file(stored_name)
            log_event("import_job.finished", logging.WARNING, job_id=job_id,
                      state=ImportJobState.failed.value, error=INTERRUPTED, attempt=attempts)
        elif job_id in again:
            log_event("import_job.interrupted", logging.WARNING, job_id=job_id,
                      attempt=attempts)
    return Recovered(sorted(lost_ids + again), sorted(given_up + again), sorted(given_up))


def import_job(session: Session, *, program_id: int, job_id: int) -> ImportJob:
    job = session.get(ImportJob, job_id, populate_existing=True)
    if job is None or job.program_id != program_id:
        raise ImportNotFound(job_id)
    return job


def recent_jobs(session: Session, *, program_id: int, kind: str | None = None,
                limit: int = 20) -> list[ImportJob]:
    query = select(ImportJob).where(ImportJob.program_id == program_id)
    if kind:
        query = query.where(ImportJob.kind == kind)
    return list(session.exec(query.order_by(ImportJob.id.desc()).limit(limit)).all())


def remove_expired_uploads(session: Session, *, now: datetime | None = None) -> int:
    """Delete staged uploads past their time, and their files (what nobody committed)."""
    now = now or datetime.now(UTC)
    expired = session.exec(select(StagedUpload).where(StagedUpload.expires_at <= now)).all()
    if not expired:
        session.rollback()
        return 0
    names = [upload.stored_name for upload in expired]
    session.execute(sa.delete(StagedUpload).where(StagedUpload.id.in_([u.id for u in expired]))
                    .execution_options(synchronize_session=False))
    session.commit()
    for name in names:
        _remove_file(name)
    return len(names)


def job_report(job: ImportJob) -> dict | None:
    """What the import said (``ImportReport.as_dict``, or the file's error), once it ran."""
    return json.loads(job.report) if job.report else None


def list_batches(session: Session, *, program_id: int) -> list[CodeBatch]:
    """The program's batches, newest first: each row carries its own count of codes."""
    return list(session.exec(select(CodeBatch).where(CodeBatch.program_id == program_id)
                             .order_by(CodeBatch.id.desc())))
