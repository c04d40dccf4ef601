"""Uploads in the console: a code batch or an eligibility list is checked first (the report:
counts, each bad or duplicate row with its line, codes masked), then committed or cancelled;
large files are imported by a task on the ``imports`` queue with a progress bar; managers and
admins only; no code in clear on any page or in any log line."""

from __future__ import annotations

import io
import logging
import re
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery.signals import task_prerun
from sqlmodel import select

from tests.helpers import FOLLOW_SCRIPT, assert_followed_in_place, csrf_token, followed_block
from wellness_perks import dispatch
from wellness_perks.db import get_session
from wellness_perks.models import (
    AuditEvent,
    Code,
    CodeBatch,
    Eligibility,
    ImportJob,
    Program,
    StagedUpload,
)

SLUG = "headspace-6m"
BATCHES = f"/manage/programs/{SLUG}/batches"
CREATORS = f"/manage/programs/{SLUG}/creators/upload"
GOOD = ["HS-ABCD-EFGH-0001", "HS-ABCD-EFGH-0002", "HS-ABCD-EFGH-0003"]
TOKEN_RE = re.compile(r"/manage/programs/[^/]+/uploads/([A-Za-z0-9_-]+)$")
JOB_RE = re.compile(r"/manage/programs/[^/]+/imports/(\d+)$")


def _codes_file(values) -> bytes:
    return ("\n".join(values) + "\n").encode()


def _upload(browser, path: str, content: bytes, filename: str = "batch.txt", **fields):
    page = browser.get(path)
    assert page.status_code == 200, page.status_code
    if path == BATCHES and "expires" not in fields and "no_expiry" not in fields:
        fields["expires"] = "2099-12-31"
    return browser.post(path, data=_multipart(
        {"csrf_token": csrf_token(page.text), **fields}, content, filename),
        content_type=f"multipart/form-data; boundary={BOUNDARY}")


BOUNDARY = "upload-boundary-7f3a"


def _multipart(fields: dict[str, str], content: bytes, filename: str) -> bytes:
    """The body a browser sends (built here: the test client spools a large file to a
    temporary file it never closes)."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f'{value}\r\n'.encode() for name, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: text/plain\r\n\r\n'.encode()
                 + content + f"\r\n--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def _staged(browser, path: str, content: bytes, **fields) -> tuple[str, str]:
    """Upload and follow to the report: (report page's path, its HTML)."""
    response = _upload(browser, path, content, **fields)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert TOKEN_RE.search(location), location
    report = browser.get(location)
    assert report.status_code == 200
    return location, report.text


def _post(browser, report_path: str, action: str, **fields):
    page = browser.get(report_path)
    return browser.post(f"{report_path}/{action}",
                        data={"csrf_token": csrf_token(page.text), **fields})


def _codes(session, program_id: int) -> int:
    session.rollback()
    return session.execute(sa.select(sa.func.count()).select_from(Code)
                           .where(Code.program_id == program_id)).scalar_one()


def _actions(session) -> list[str]:
    session.rollback()
    return [e.action for e in session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()]


def _upload_files(app) -> list[Path]:
    folder = Path(app.config["UPLOAD_DIR"])
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.fixture
def program(factory):
    return factory.program(slug=SLUG)


@pytest.fixture
def manager(manager_client):
    return manager_client("manager")


# --------------------------------------------------------------------------- report, commit


def test_a_batch_is_reported_then_committed(app, program, manager, session, caplog):
    caplog.set_level(logging.DEBUG)
    report_path, report = _staged(manager, BATCHES, _codes_file(GOOD), batch_name="June")
    assert "3 rows" in report and "Would be imported" in report
    assert "2099-12-31" in report and "Nothing is imported until you commit" in report
    assert _codes(session, program.id) == 0  # the report wrote nothing
    [staged] = session.exec(select(StagedUpload)).all()
    assert len(staged.sha256) == 64 and len(_upload_files(app)) == 1

    response = _post(manager, report_path, "commit")
    assert response.status_code == 302
    job_path = response.headers["Location"]
    assert JOB_RE.search(job_path)
    job_page = manager.get(job_path)
    assert "done" in job_page.text and 'value="3"' in job_page.text
    assert 'data-running="no"' in job_page.text  # over: nothing more to follow
    assert followed_block(job_page.text).running == "no" and FOLLOW_SCRIPT not in job_page.text
    assert _codes(session, program.id) == 3
    [batch] = session.exec(select(CodeBatch)).all()
    assert (batch.name, batch.source_filename, batch.code_count) == ("June", "batch.txt", 3)
    assert batch.expires_on.isoformat() == "2099-12-31"
    assert session.get(Program, program.id).in_stock_count == 3 == batch.in_stock_count
    assert session.exec(select(StagedUpload)).all() == [] and _upload_files(app) == []
    assert _actions(session)[-2:] == ["upload.committed", "codes.imported"]

    listing = manager.get(BATCHES).text
    assert "June" in listing and "batch.txt" in listing and "2099-12-31" in listing
    # the batch's row: name, file, codes, in stock (its own counter), expiry
    assert re.search(r"June</th>\s*<td>batch.txt</td>\s*<td>3</td>\s*<td>3</td>", listing)
    assert manager.get(report_path).status_code == 404  # committed: not waiting any more
    for page in (report, job_page.text, listing):
        for value in GOOD:
            assert value not in page
    for value in GOOD:
        assert value not in caplog.text


def test_a_report_then_cancel_stores_nothing(app, program, manager, session):
    report_path, _report = _staged(manager, BATCHES, _codes_file(GOOD))
    response = _post(manager, report_path, "cancel")
    assert response.status_code == 302 and response.headers["Location"] == BATCHES
    assert "nothing was imported" in manager.get(BATCHES).text
    assert _codes(session, program.id) == 0
    assert session.exec(select(CodeBatch)).all() == []
    assert session.exec(select(StagedUpload)).all() == [] and _upload_files(app) == []
    assert session.exec(select(ImportJob)).all() == []
    assert _actions(session)[-1] == "upload.cancelled"
    assert _post(manager, report_path, "commit").status_code == 404  # gone for good


def test_a_bad_file_is_reported_by_line_and_field_and_not_committed(
        program, manager, session, factory):
    other = factory.program(slug="calm-12m")
    factory.codes(other, ["HS-OTHER-PROG-0009"])
    factory.codes(program, ["HS-STORED-ONE-0008"])
    rows = [GOOD[0], "not a code!", GOOD[0], "HS-STORED-ONE-0008", "HS-OTHER-PROG-0009"]
    report_path, report = _staged(manager, BATCHES, _codes_file(rows), filename="june.txt")
    assert "Report on june.txt" in report
    assert re.search(r"<td>2</td>\s*<td>code</td>", report)  # line 2, field code
    assert "Duplicates inside the file" in report and re.search(r"<td>3</td>", report)
    assert "Already stored in this program" in report and re.search(r"<td>4</td>", report)
    assert "another program holds too" in report and re.search(r"<td>5</td>", report)
    assert "HS-****-0001" in report and "HS-****-0009" in report
    for clear in (GOOD[0], "HS-STORED-ONE-0008", "HS-OTHER-PROG-0009"):
        assert clear not in report

    refused = _post(manager, report_path, "commit")
    assert refused.status_code == 400 and "Some rows are invalid" in refused.text
    assert _codes(session, program.id) == 1
    response = _post(manager, report_path, "commit", skip_invalid="y")
    assert response.status_code == 302
    assert _codes(session, program.id) == 3  # the new one and the one another program holds


def test_a_file_rejected_as_a_whole_says_file_line_and_field(app, program, manager, session):
    response = _upload(manager, BATCHES, b"HS-ABCD-0001\n\xff\xfe\n", filename="bin.txt")
    assert response.status_code == 400
    assert "bin.txt" in response.text and "line 2" in response.text
    assert "not UTF-8" in response.text
    assert session.exec(select(StagedUpload)).all() == [] and _upload_files(app) == []
    empty = _upload(manager, BATCHES, b"", filename="empty.txt")
    assert empty.status_code == 400 and "line 1" in empty.text and "empty" in empty.text


def test_the_same_file_twice_is_flagged_before_commit(program, manager):
    report_path, report = _staged(manager, BATCHES, _codes_file(GOOD))
    assert "already imported" not in report
    _post(manager, report_path, "commit")
    _again, report = _staged(manager, BATCHES, _codes_file(GOOD), filename="renamed.txt")
    assert "already imported into this program" in report
    _other, report = _staged(manager, BATCHES, _codes_file([*GOOD, "HS-ABCD-EFGH-0004"]))
    assert "already imported" not in report


@pytest.mark.parametrize("fields, message", [
    ({"expires": ""}, "Give the last day the codes can be redeemed"),
    ({"expires": "2099-12-31", "no_expiry": "y"}, "not both"),
    ({"expires": "31/12/2099"}, "YYYY-MM-DD"),
])
def test_expiry_is_asked_at_upload(program, manager, session, fields, message):
    response = _upload(manager, BATCHES, _codes_file(GOOD), **fields)
    assert response.status_code == 400 and message in response.text
    assert session.exec(select(StagedUpload)).all() == []


def test_an_expiry_in_the_past_is_a_field_error(program, manager):
    response = _upload(manager, BATCHES, _codes_file(GOOD), expires="2001-01-01")
    assert response.status_code == 400 and "in the past" in response.text


def test_no_expiry_said_explicitly(program, manager, session):
    report_path, report = _staged(manager, BATCHES, _codes_file(GOOD), no_expiry="y")
    assert "never (no expiry)" in report
    _post(manager, report_path, "commit")
    [batch] = session.exec(select(CodeBatch)).all()
    assert batch.expires_on is None


# --------------------------------------------------------------------------- large uploads


@pytest.fixture
def tasks_run():
    names: list[str] = []

    def record(sender=None, **_kw):
        names.append(sender.name)

    task_prerun.connect(record, weak=False)
    yield names
    task_prerun.disconnect(record)


def test_a_large_upload_is_imported_by_a_task_with_its_progress(
        app, program, manager, session, tasks_run):
    app.config["IMPORT_IN_BACKGROUND_ROWS"] = 50
    values = [f"HS-LARGE-{n:06d}" for n in range(60)]
    report_path, report = _staged(manager, BATCHES, _codes_file(values))
    assert "60 rows" in report
    response = _post(manager, report_path, "commit")
    assert dispatch.IMPORT_UPLOAD in tasks_run
    job_path = response.headers["Location"]
    [job] = session.exec(select(ImportJob)).all()
    assert (job.state, job.rows_done, job.rows_total, job.imported) == ("done", 60, 60, 60)
    page = manager.get(job_path).text
    assert 'max="60" value="60"' in page and "60 of 60" in page
    assert _codes(session, program.id) == 60
    audit = session.exec(select(AuditEvent).where(AuditEvent.action == "upload.committed")).one()
    assert '"background": true' in audit.detail


def test_a_running_import_shows_its_progress_and_follows_it(app, program, manager, session):
    """A running import's page carries the script that shows its progress in place, never a
    timed reload (axe-core's meta-refresh: a page reloading on a timer fails WCAG 2.2.1)."""
    report_path, _ = _staged(manager, BATCHES, _codes_file(GOOD))
    _post(manager, report_path, "commit")
    [job] = session.exec(select(ImportJob)).all()
    session.execute(sa.update(ImportJob).values(state="running", rows_done=2))
    session.commit()
    page = manager.get(f"/manage/programs/{SLUG}/imports/{job.id}").text
    assert 'data-running="yes"' in page and 'value="2"' in page and "importing" in page
    block = assert_followed_in_place(manager, page)
    assert (block.id, block.parts) == ("import-job", ["import-state", "import-progress-block"])
    assert block.live_parts == ["import-state"]  # the state is read out, not every step


def test_a_job_whose_file_is_gone_fails_and_imports_nothing(app, program, manager, session):
    app.config["IMPORT_IN_BACKGROUND_ROWS"] = 1
    report_path, _ = _staged(manager, BATCHES, _codes_file(GOOD))
    for path in _upload_files(app):
        path.unlink()
    _post(manager, report_path, "commit")
    [job] = session.exec(select(ImportJob)).all()
    assert (job.state, job.error) == ("failed", "upload_file_missing")
    assert "nothing was imported" in manager.get(f"/manage/programs/{SLUG}/imports/{job.id}").text
    assert _codes(session, program.id) == 0


def test_a_job_whose_worker_died_shows_its_restart_then_its_reason_once_given_up(
        app, program, manager, session, monkeypatch):
    """The sweeper runs an interrupted job again (the page says so), and gives it up at
    ``IMPORT_MAX_ATTEMPTS``: failed, with the stable reason ``import_interrupted`` in words."""
    from wellness_perks.services import sweeper

    app.config["IMPORT_IN_BACKGROUND_ROWS"] = 1
    report_path, _ = _staged(manager, BATCHES, _codes_file(GOOD))
    with monkeypatch.context() as broker_down:
        broker_down.setattr(dispatch, "import_upload", lambda job_id: False)
        _post(manager, report_path, "commit")
    [job] = session.exec(select(ImportJob)).all()
    page = f"/manage/programs/{SLUG}/imports/{job.id}"
    long_ago = job.created_at - timedelta(hours=1)
    attempts = app.config["IMPORT_MAX_ATTEMPTS"]
    session.execute(sa.update(ImportJob).values(state="running", attempts=attempts - 1,
                                                heartbeat_at=long_ago))
    session.commit()
    text = manager.get(page).text
    assert f"(attempt {attempts - 1})" in text and 'data-running="yes"' in text
    held = []
    monkeypatch.setattr(dispatch, "import_upload", held.append)  # handed out, not yet run
    with app.app_context():
        assert sweeper.sweep(get_session()).imports == [job.id]
    session.rollback()
    session.execute(sa.update(ImportJob).values(state="running", attempts=attempts,
                                                heartbeat_at=long_ago))
    session.commit()
    with app.app_context():
        assert sweeper.sweep(get_session()).failed_imports == [job.id]
    text = unescape(manager.get(page).text)
    assert re.search(r'id="import-state">failed: nothing was imported<', text)
    assert "interrupted each time it was started" in text and "import-restarted" not in text
    assert 'data-running="no"' in text
    assert _codes(session, program.id) == 0 and held == [job.id]


# --------------------------------------------------------------------------- eligibility lists


def test_an_eligibility_list_is_reported_then_committed(app, program, manager, session):
    content = b"handle,email,country\n@ayesha,ayesha@example.com,PK\n@b,not-an-email,PK\n"
    report_path, report = _staged(manager, CREATORS, content)
    assert re.search(r"<td>3</td>\s*<td>email</td>", report)
    assert session.exec(select(Eligibility)).all() == []
    assert _post(manager, report_path, "commit").status_code == 400
    response = _post(manager, report_path, "commit", skip_invalid="y")
    assert response.status_code == 302
    session.rollback()
    assert len(session.exec(select(Eligibility)).all()) == 1
    assert "creators.imported" in _actions(session)


def test_a_list_without_its_header_is_rejected_with_its_line(program, manager):
    response = _upload(manager, CREATORS, b"ayesha,ayesha@example.com,PK\n", filename="l.csv")
    assert response.status_code == 400 and "line 1" in response.text and "header" in response.text


# --------------------------------------------------------------------------- who may


def test_a_staged_upload_belongs_to_its_manager_and_its_program(
        program, manager, manager_client, factory):
    factory.program(slug="calm-12m")
    report_path, _ = _staged(manager, BATCHES, _codes_file(GOOD))
    colleague = manager_client("admin")
    assert colleague.get(report_path).status_code == 404
    assert _post(colleague, report_path, "commit").status_code == 404
    elsewhere = report_path.replace(SLUG, "calm-12m")
    assert manager.get(elsewhere).status_code == 404


def _routes(manager) -> list[tuple[str, str]]:
    report_path, _ = _staged(manager, BATCHES, _codes_file(GOOD))
    return [("GET", BATCHES), ("POST", BATCHES), ("GET", CREATORS), ("POST", CREATORS),
            ("GET", report_path), ("POST", f"{report_path}/commit"),
            ("POST", f"{report_path}/cancel"), ("GET", f"/manage/programs/{SLUG}/imports/1")]


def test_only_managers_and_admins_reach_the_uploads(
        app, program, manager, manager_client, client, signed_in, factory, session):
    routes = _routes(manager)
    anonymous = app.test_client()
    viewer = manager_client("viewer")
    factory.creators(program, ["ayesha@example.com"])
    signed_in("ayesha@example.com")
    for method, path in routes:
        response = anonymous.open(path, method=method)
        assert response.status_code in (302, 400), (method, path)  # 400: no CSRF token
        if method == "GET":
            assert response.headers["Location"].startswith("/manage/login"), path
        for who, home in ((viewer, "/manage/"), (client, "/")):
            token = csrf_token(who.get(home).text)  # a valid token: the role is what fails
            answer = who.open(path, method=method, data={"csrf_token": token})
            assert answer.status_code == 403, (method, path, answer.status_code)
    assert session.exec(select(StagedUpload)).all() != []  # nothing was committed or cancelled
    assert _codes(session, program.id) == 0


def test_an_upload_over_the_upload_limit_is_too_large(app, program, manager, session):
    app.config["MAX_UPLOAD_BYTES"] = 200 * 1024
    bigger_than_a_form = _codes_file(f"HS-SIZE-{n:08d}" for n in range(6000))  # ~100 KiB
    assert len(bigger_than_a_form) > app.config["MAX_CONTENT_LENGTH"]
    assert _upload(manager, BATCHES, bigger_than_a_form).status_code == 302
    too_large = _upload(manager, BATCHES, bigger_than_a_form * 3)
    assert too_large.status_code == 413 and "200 KiB" in too_large.text
    anonymous = app.test_client()
    response = anonymous.post(BATCHES, data={"file": (io.BytesIO(bigger_than_a_form), "a")},
                              content_type="multipart/form-data")
    assert response.status_code == 413  # only a manager's session may send that much


def test_100000_codes_go_through_the_imports_task(app, program, manager, session, tasks_run):
    assert app.config["IMPORT_IN_BACKGROUND_ROWS"] == 100_000  # the default
    content = _codes_file(f"HS-{n:06d}-BULK" for n in range(100_000))
    report_path, report = _staged(manager, BATCHES, content, filename="bulk.txt")
    assert "100,000 rows" in report and "already imported" not in report
    response = _post(manager, report_path, "commit")
    assert tasks_run.count(dispatch.IMPORT_UPLOAD) == 1
    page = manager.get(response.headers["Location"]).text
    assert "done" in page and "100,000 of 100,000" in page
    assert _codes(session, program.id) == 100_000
    assert session.get(Program, program.id).in_stock_count == 100_000
    _again, report = _staged(manager, BATCHES, content, filename="bulk-again.txt")
    assert "already imported into this program" in report
