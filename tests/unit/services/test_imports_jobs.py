"""Staged uploads and import jobs (``services/import_jobs.py``): a failure in the middle of an
import leaves nothing half-imported, a job runs once, staged uploads expire with their files."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Code, CodeBatch, ImportJob, Program, StagedUpload
from wellness_perks.services import import_jobs, imports


def _stage(app, program, content: bytes, **options) -> import_jobs.Staged:
    with app.app_context():
        options.setdefault("expires_on", None)
        return import_jobs.stage_upload(get_session(), program=program, manager_id=1,
                                        kind="codes", stream=io.BytesIO(content),
                                        filename="codes.txt", actor="manager:1", **options)


def _commit(app, program, staged, skip_invalid=False) -> ImportJob:
    with app.app_context():
        return import_jobs.commit_upload(get_session(), program_id=program.id, manager_id=1,
                                         token=staged.upload.token, skip_invalid=skip_invalid,
                                         actor="manager:1")


@pytest.fixture
def program(factory, manager_client):
    manager_client("manager")  # manager 1
    return factory.program()


def _codes(n: int) -> bytes:
    return "".join(f"HS-JOB-{i:06d}\n" for i in range(n)).encode()


def test_a_failure_in_the_middle_leaves_nothing_half_imported(app, program, session):
    app.config["IMPORT_IN_BACKGROUND_ROWS"] = 10
    staged = _stage(app, program, _codes(3000))
    assert staged.report["imported"] == 3000
    stored = Path(app.config["UPLOAD_DIR"]) / staged.upload.stored_name
    with stored.open("ab") as fh:  # the file breaks after 3,000 good codes (3 write chunks)
        fh.write(b"HS-JOB-\xff\xfe\n")
    job = _commit(app, program, staged)
    assert (job.state, job.error, job.imported) == ("failed", "not_utf8", 0)
    session.rollback()
    assert session.execute(sa.select(sa.func.count()).select_from(Code)).scalar_one() == 0
    assert session.exec(select(CodeBatch)).all() == []
    assert session.get(Program, program.id).in_stock_count == 0
    actions = [e.action for e in session.exec(select(AuditEvent)).all()]
    assert "upload.committed" in actions and "codes.imported" not in actions
    assert not stored.exists()


def test_a_job_runs_once(app, program, session):
    job = _commit(app, program, _stage(app, program, _codes(5)))
    assert job.state == "done" and job.imported == 5
    with app.app_context():
        again = import_jobs.run_import_job(get_session(), job_id=job.id)
    assert again.state == "done"
    session.rollback()
    assert session.execute(sa.select(sa.func.count()).select_from(Code)).scalar_one() == 5


def test_invalid_rows_are_imported_only_when_skipped(app, program, session):
    staged = _stage(app, program, _codes(2) + b"not a code!\n")
    assert not staged.committable
    with pytest.raises(imports.InvalidInput) as refused:
        _commit(app, program, staged)
    assert refused.value.code == "upload_rows_invalid"
    job = _commit(app, program, staged, skip_invalid=True)
    assert (job.state, job.imported) == ("done", 2)


def test_staged_uploads_expire_with_their_files(app, program, session):
    staged = _stage(app, program, _codes(2))
    stored = Path(app.config["UPLOAD_DIR"]) / staged.upload.stored_name
    assert stored.exists() and oct(stored.stat().st_mode & 0o777) == "0o600"
    with app.app_context():
        later = datetime.now(UTC) + timedelta(minutes=app.config["UPLOAD_STAGED_MINUTES"] + 1)
        assert import_jobs.remove_expired_uploads(get_session(), now=later) == 1
    session.rollback()
    assert session.exec(select(StagedUpload)).all() == [] and not stored.exists()
