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
from wellness_perks.models import (
    AuditEvent,
    Code,
    CodeBatch,
    Creator,
    Eligibility,
    ImportJob,
    Program,
    StagedUpload,
)
from wellness_perks.services import import_jobs, imports, sweeper


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


# --------------------------------------------------------------------------- stuck jobs
# A job is stuck when its task's message was lost (the broker was down at the commit) and it
# stays queued, or when its worker died mid-import and it stays running. The sweeper hands it
# out again; the import is one transaction whose last write marks the job done, so a re-run
# starts from the file and a run that lost its job to another writes nothing.


ROWS = 20_000  # a file of several reads (64 KiB each) and write chunks: killed half-way


class _WorkerKilled(BaseException):
    """The worker's process stopping mid-import (SIGKILL): nothing after it runs."""


def _background_job(app, program, monkeypatch, rows=ROWS) -> ImportJob:
    """A large upload committed while its task's message was lost: the job waits, queued."""
    app.config["IMPORT_IN_BACKGROUND_ROWS"] = 10
    staged = _stage(app, program, _codes(rows))
    with monkeypatch.context() as broker_down:
        broker_down.setattr(import_jobs.dispatch, "import_upload", lambda job_id: False)
        job = _commit(app, program, staged)
    assert (job.state, job.attempts, job.imported) == ("queued", 0, 0)
    assert job.heartbeat_at is not None
    return job


def _killed_mid_import(app, job_id, monkeypatch) -> None:
    """Run the job until half its file is read, then stop its worker."""
    def progress(writer, bytes_read):
        if bytes_read > writer._size // 2:
            raise _WorkerKilled
    with monkeypatch.context() as dying:
        dying.setattr(import_jobs._ProgressWriter, "__call__", progress)
        with pytest.raises(_WorkerKilled), app.app_context():
            import_jobs.run_import_job(get_session(), job_id=job_id)


def _sweep(app, at: datetime):
    with app.app_context():
        return sweeper.sweep(get_session(), now=at)


def _job(session, job_id) -> ImportJob:
    session.rollback()
    return session.get(ImportJob, job_id, populate_existing=True)


def _imported_once(session, program, rows) -> None:
    """The file's codes are in the program once: one batch, the stock counter, one audit."""
    session.rollback()
    assert session.execute(sa.select(sa.func.count()).select_from(Code)).scalar_one() == rows
    assert [b.code_count for b in session.exec(select(CodeBatch)).all()] == [rows]
    assert session.get(Program, program.id, populate_existing=True).in_stock_count == rows
    actions = [e.action for e in session.exec(select(AuditEvent)).all()]
    assert actions.count("codes.imported") == 1


def test_a_queued_job_whose_message_was_lost_is_dispatched_by_the_sweep(app, program, session,
                                                                        monkeypatch):
    job = _background_job(app, program, monkeypatch)
    committed = job.heartbeat_at
    assert _sweep(app, committed).imports == []  # fresh: its message may be on its way
    report = _sweep(app, committed + timedelta(seconds=app.config["SWEEP_PENDING_AFTER_SECONDS"]
                                               + 1))
    assert report.imports == [job.id]
    done = _job(session, job.id)
    assert (done.state, done.imported, done.rows_done, done.attempts) == ("done", ROWS, ROWS, 1)
    _imported_once(session, program, ROWS)
    assert not (Path(app.config["UPLOAD_DIR"]) / job.stored_name).exists()


def test_a_queued_job_is_dispatched_again_only_once_per_bound(app, program, session,
                                                              monkeypatch):
    """While the broker stays down, each sweep past the bound tries once more: not every sweep."""
    job = _background_job(app, program, monkeypatch)
    bound = timedelta(seconds=app.config["SWEEP_PENDING_AFTER_SECONDS"] + 1)
    sent = []
    monkeypatch.setattr(import_jobs.dispatch, "import_upload", sent.append)
    later = job.heartbeat_at + bound
    assert _sweep(app, later).imports == [job.id]
    assert _sweep(app, later + timedelta(seconds=1)).imports == []
    assert _sweep(app, later + bound + timedelta(seconds=1)).imports == [job.id]
    assert sent == [job.id, job.id]
    assert _job(session, job.id).state == "queued"


def test_a_running_job_whose_worker_died_is_run_again_with_exactly_its_counts(
        app, program, session, monkeypatch):
    job = _background_job(app, program, monkeypatch)
    _killed_mid_import(app, job.id, monkeypatch)
    dead = _job(session, job.id)
    assert (dead.state, dead.attempts, dead.imported) == ("running", 1, 0)
    assert session.execute(sa.select(sa.func.count()).select_from(Code)).scalar_one() == 0
    stale = timedelta(seconds=app.config["IMPORT_STALE_AFTER_SECONDS"] + 1)
    report = _sweep(app, dead.heartbeat_at + stale)
    assert (report.interrupted_imports, report.imports, report.failed_imports) == (
        [job.id], [job.id], [])
    done = _job(session, job.id)
    assert (done.state, done.error, done.imported, done.rows_done, done.attempts) == (
        "done", None, ROWS, ROWS, 2)
    assert import_jobs.job_report(done)["duplicate"] == 0
    _imported_once(session, program, ROWS)
    assert _sweep(app, dead.heartbeat_at + stale * 2).imports == []  # done: left alone


def test_a_running_job_with_a_fresh_heartbeat_is_left_alone(app, program, session,
                                                            monkeypatch):
    job = _background_job(app, program, monkeypatch)
    _killed_mid_import(app, job.id, monkeypatch)
    running = _job(session, job.id)
    fresh = running.heartbeat_at + timedelta(seconds=app.config["IMPORT_STALE_AFTER_SECONDS"]
                                             - 1)
    sent = []
    monkeypatch.setattr(import_jobs.dispatch, "import_upload", sent.append)
    report = _sweep(app, fresh)
    assert (report.imports, report.interrupted_imports, sent) == ([], [], [])
    after = _job(session, job.id)
    assert (after.state, after.attempts, after.heartbeat_at) == (
        "running", 1, running.heartbeat_at)


def test_a_job_interrupted_at_every_attempt_fails_with_its_reason(app, program, session,
                                                                 monkeypatch):
    app.config["IMPORT_MAX_ATTEMPTS"] = 2
    job = _background_job(app, program, monkeypatch)
    stored = Path(app.config["UPLOAD_DIR"]) / job.stored_name
    stale = timedelta(seconds=app.config["IMPORT_STALE_AFTER_SECONDS"] + 1)
    sent = []
    monkeypatch.setattr(import_jobs.dispatch, "import_upload", sent.append)
    for attempt in (1, 2):
        _killed_mid_import(app, job.id, monkeypatch)
        dead = _job(session, job.id)
        assert (dead.state, dead.attempts) == ("running", attempt)
        at = dead.heartbeat_at + stale
        report = _sweep(app, at)
        assert report.interrupted_imports == [job.id]
    assert sent == [job.id]  # the first interruption is run again; the second is the last
    assert report.failed_imports == [job.id] and report.imports == []
    failed = _job(session, job.id)
    assert (failed.state, failed.error, failed.attempts, failed.imported) == (
        "failed", "import_interrupted", 2, 0)
    assert failed.finished_at is not None and failed.stored_name is None
    assert not stored.exists()
    assert session.execute(sa.select(sa.func.count()).select_from(Code)).scalar_one() == 0
    later = _sweep(app, at + stale * 10)
    assert (later.imports, later.interrupted_imports, later.failed_imports) == ([], [], [])


def test_a_run_that_lost_its_job_to_another_writes_nothing(app, program, session, backend,
                                                           monkeypatch):
    """A worker too slow to write its heartbeat had its job taken back and run again: when it
    reaches its commit it finds the job is no longer its run's, and rolls its import back."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer, the import: nothing takes its job while it runs")
    job = _background_job(app, program, monkeypatch)

    def taken_over(writer, bytes_read):
        if bytes_read > writer._size // 2:
            with writer._engine.begin() as conn:  # the sweep took it back; a new run claimed it
                conn.execute(sa.update(ImportJob).where(ImportJob.id == job.id)
                             .values(attempts=ImportJob.attempts + 1))
            monkeypatch.setattr(import_jobs._ProgressWriter, "__call__", lambda *_: None)
    monkeypatch.setattr(import_jobs._ProgressWriter, "__call__", taken_over)
    with app.app_context():
        import_jobs.run_import_job(get_session(), job_id=job.id)
    slow = _job(session, job.id)
    assert (slow.state, slow.attempts, slow.imported, slow.report) == ("running", 2, 0, None)
    assert session.execute(sa.select(sa.func.count()).select_from(Code)).scalar_one() == 0
    stale = timedelta(seconds=app.config["IMPORT_STALE_AFTER_SECONDS"] + 1)
    assert _sweep(app, slow.heartbeat_at + stale).imports == [job.id]  # the new run died too
    assert _job(session, job.id).imported == ROWS
    _imported_once(session, program, ROWS)


@pytest.mark.parametrize(("every", "moves"), [(1e-9, True), (3600.0, False)])
def test_a_running_import_writes_its_progress_as_often_as_the_setting_says(
        app, program, session, backend, monkeypatch, every, moves):
    """IMPORT_PROGRESS_SECONDS bounds how often the job's row says how far it got (rows in
    proportion to the bytes read): at next to nothing, each read of the file (64 KiB) writes
    it, and the bar climbs; at longer than the import, no read does."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer, the import: its progress shows when it ends")
    job = _background_job(app, program, monkeypatch)
    app.config["IMPORT_PROGRESS_SECONDS"] = every
    written = []
    write = import_jobs._ProgressWriter.__call__

    def watched(writer, bytes_read):
        write(writer, bytes_read)
        with writer._engine.connect() as conn:  # what the console reads meanwhile
            written.append(conn.execute(sa.select(ImportJob.rows_done)
                                        .where(ImportJob.id == job.id)).scalar_one())
    monkeypatch.setattr(import_jobs._ProgressWriter, "__call__", watched)
    with app.app_context():
        assert import_jobs.run_import_job(get_session(), job_id=job.id).state == "done"
    assert len(written) >= 4  # the file's reads
    if moves:
        assert written == sorted(written) and 0 < written[0] and written[-1] == ROWS
        assert len(set(written)) == len(written)
    else:
        assert set(written) == {0}


def test_an_eligibility_list_whose_worker_died_is_run_again_once(app, program, session,
                                                                 monkeypatch):
    """The same for a list: the re-run puts each creator on the list once, none twice."""
    app.config["IMPORT_IN_BACKGROUND_ROWS"] = 10
    rows = 6000
    content = ("handle,email,country\n" + "".join(
        f"@c{i:05d},creator{i:05d}@example.com,PK\n" for i in range(rows))).encode()
    with app.app_context():
        staged = import_jobs.stage_upload(get_session(), program=program, manager_id=1,
                                          kind="creators", stream=io.BytesIO(content),
                                          filename="list.csv", actor="manager:1")
    with monkeypatch.context() as broker_down:
        broker_down.setattr(import_jobs.dispatch, "import_upload", lambda job_id: False)
        job = _commit(app, program, staged)
    _killed_mid_import(app, job.id, monkeypatch)
    dead = _job(session, job.id)
    assert (dead.state, dead.attempts) == ("running", 1)
    assert session.execute(sa.select(sa.func.count()).select_from(Creator)).scalar_one() == 0
    stale = timedelta(seconds=app.config["IMPORT_STALE_AFTER_SECONDS"] + 1)
    assert _sweep(app, dead.heartbeat_at + stale).imports == [job.id]
    done = _job(session, job.id)
    assert (done.state, done.imported, done.attempts) == ("done", rows, 2)
    assert import_jobs.job_report(done)["duplicate"] == 0
    for table in (Creator, Eligibility):
        assert session.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() \
            == rows
    actions = [e.action for e in session.exec(select(AuditEvent)).all()]
    assert actions.count("creators.imported") == 1
