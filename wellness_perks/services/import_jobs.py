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
"""

from __future__ import annotations

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
# A running import writes its progress at most this often (a separate, short transaction).
PROGRESS_EVERY_SECONDS = 1.0

STAGED = "upload.staged"
COMMITTED = "upload.committed"
CANCELLED = "upload.cancelled"


class UploadNotFound(NotFound):
    code = "upload_not_found"

    def __init__(self) -> None:
        super().__init__("this upload is not waiting for a commit (it was committed, cancelled "
                         "or has expired): upload the file again")


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
                  progress=None) -> imports.ImportReport:
    if kind == ImportKind.codes:
        return imports.import_codes(session, program=program, stream=stream, filename=filename,
                                    batch_name=batch_name, expires_on=expires_on,
                                    skip_invalid=skip_invalid, progress=progress, actor=actor,
                                    dry_run=dry_run)
    return imports.import_creators(session, program=program, stream=stream, filename=filename,
                                   skip_invalid=skip_invalid, progress=progress, actor=actor,
                                   dry_run=dry_run)


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
        state=ImportJobState.queued.value, rows_total=upload.rows)
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


def run_import_job(session: Session, *, job_id: int) -> ImportJob:
    """Import a queued job's file (once: a job that is not queued is left as it is), writing
    its progress as it goes, then its report. A failure leaves nothing of the import (the
    importers are all-or-nothing) and the job ``failed`` with the error's code."""
    session.rollback()
    started = session.execute(
        sa.update(ImportJob).where(ImportJob.id == job_id,
                                   ImportJob.state == ImportJobState.queued.value)
        .values(state=ImportJobState.running.value, started_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    job = session.get(ImportJob, job_id, populate_existing=True)
    if not started or job is None:
        return job
    program = session.get(Program, job.program_id)
    stored_name, program_id = job.stored_name, job.program_id
    progress = _ProgressWriter(session.get_bind(), job)
    outcome: dict = {}
    try:
        with _stored_path(job.stored_name).open("rb") as fh:
            report = _run_importer(
                session, program=program, kind=job.kind, stream=fh, filename=job.filename,
                batch_name=job.batch_name, expires_on=job.expires_on,
                skip_invalid=job.skip_invalid, actor=f"manager:{job.manager_id}",
                dry_run=False, progress=progress)
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
        failed = not report.committed
        outcome = {"state": (ImportJobState.failed if failed else ImportJobState.done).value,
                   "error": "upload_rows_invalid" if failed else None,
                   "report": json.dumps(report.as_dict()), "imported": report.imported,
                   "batch_id": report.batch_id, "rows_done": job.rows_total}
    session.rollback()
    session.execute(sa.update(ImportJob).where(ImportJob.id == job_id).values(
        finished_at=datetime.now(UTC), stored_name=None, **outcome)
        .execution_options(synchronize_session=False))
    session.commit()
    _remove_file(stored_name)
    log_event("import_job.finished", job_id=job_id, program_id=program_id,
              state=outcome["state"])
    return session.get(ImportJob, job_id, populate_existing=True)


class _ProgressWriter:
    """The importers' progress (bytes read) as the job's ``rows_done``: the rows in proportion
    to the bytes, written at most every ``PROGRESS_EVERY_SECONDS`` in a transaction of its own,
    so that the console sees it while the import's transaction is open. SQLite has one writer
    at a time (the import): there, progress shows when the import ends."""

    def __init__(self, bind: sa.Engine | sa.Connection, job: ImportJob) -> None:
        self._engine = bind.engine if isinstance(bind, sa.Connection) else bind
        self._job_id = job.id
        self._rows = job.rows_total
        self._size = max(job.size_bytes, 1)
        self._enabled = self._engine.dialect.name != "sqlite"
        self._written_at = time.monotonic()

    def __call__(self, bytes_read: int) -> None:
        if not self._enabled or time.monotonic() - self._written_at < PROGRESS_EVERY_SECONDS:
            return
        self._written_at = time.monotonic()
        rows_done = min(self._rows, self._rows * bytes_read // self._size)
        with self._engine.begin() as conn:
            conn.execute(sa.update(ImportJob).where(ImportJob.id == self._job_id)
                         .values(rows_done=rows_done))


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
