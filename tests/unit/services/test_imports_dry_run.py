"""The importers' dry run (``dry_run=True``): the report of an import, every row checked and
located, with nothing written; codes in it masked, never in clear."""

from __future__ import annotations

import io
import json

import pytest
from sqlmodel import select

from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Code, CodeBatch, Eligibility, Program
from wellness_perks.services import imports
from wellness_perks.services.codes import mask_code


def _dry_codes(app, program, text: str, **options):
    with app.app_context():
        options.setdefault("expires_on", None)
        return imports.import_codes(get_session(), program=program,
                                    stream=io.BytesIO(text.encode()), actor="test",
                                    dry_run=True, **options)


def _dry_creators(app, program, text: str):
    with app.app_context():
        return imports.import_creators(get_session(), program=program,
                                       stream=io.BytesIO(text.encode()), actor="test",
                                       dry_run=True)


def _nothing_written(session, program_id: int, codes: int = 0, batches: int = 0) -> None:
    session.rollback()
    assert len(session.exec(select(Code).where(Code.program_id == program_id)).all()) == codes
    assert len(session.exec(select(CodeBatch).where(CodeBatch.program_id == program_id))
               .all()) == batches
    assert session.get(Program, program_id).in_stock_count == codes


def test_a_dry_run_reports_every_kind_of_row_and_writes_nothing(app, factory, session):
    program = factory.program()
    other = factory.program(slug="calm-12m")
    factory.codes(program, ["HS-STORED-0001"])
    factory.codes(other, ["HS-ELSEWHERE-0002"])
    events_before = len(session.exec(select(AuditEvent)).all())
    text = ("HS-GOOD-AAAA-0001\n"     # 1 new
            "bad code!\n"             # 2 invalid format
            "HS-GOOD-AAAA-0001\n"     # 3 duplicate in the file
            "HS-STORED-0001\n"        # 4 already stored in this program
            "HS-ELSEWHERE-0002\n")    # 5 held by another program: imported all the same
    report = _dry_codes(app, program, text)
    assert (report.imported, report.duplicate, report.invalid) == (2, 2, 1)
    assert report.rows == 5 and not report.committed and report.batch_id is None
    [error] = report.errors
    assert (error.line, error.field, error.code) == (2, "code", "code_format")
    assert {(d.line, d.code) for d in report.duplicates} == {
        (3, "duplicate_in_file"), (4, "already_in_stock")}
    assert report.in_other_programs == 1 and report.in_other_programs_lines == [5]
    assert report.masked_codes == {2: mask_code("bad code!"), 3: "HS-****-0001", 4: "HS-****-0001",
                                   5: "HS-****-0002"}
    dumped = json.dumps(report.as_dict())
    for clear in ("HS-GOOD-AAAA-0001", "HS-STORED-0001", "HS-ELSEWHERE-0002"):
        assert clear not in dumped
    _nothing_written(session, program.id, codes=1, batches=1)
    assert len(session.exec(select(AuditEvent)).all()) == events_before


def test_a_dry_run_counts_what_the_import_then_imports(app, factory, session):
    program = factory.program()
    factory.codes(program, ["HS-STORED-0001"])
    text = "code\nHS-NEW-0001\nHS-NEW-0002\nHS-STORED-0001\n"
    report = _dry_codes(app, program, text)
    with app.app_context():
        done = imports.import_codes(get_session(), program=program,
                                    stream=io.BytesIO(text.encode()), expires_on=None,
                                    actor="test")
    assert (report.imported, report.duplicate, report.invalid) == (
        done.imported, done.duplicate, done.invalid) == (2, 1, 0)


def test_a_dry_run_rejects_a_file_as_the_import_does(app, factory, session):
    program = factory.program()
    with pytest.raises(imports.FileRejected) as rejected:
        _dry_codes(app, program, "")
    assert rejected.value.issue.code == "file_empty"
    _nothing_written(session, program.id)


def test_a_dry_run_never_echoes_a_control_character(app, factory):
    program = factory.program()
    report = _dry_codes(app, program, "HS-OK-0001\nHS-\x1b[31m-0002\n")
    assert [e.code for e in report.errors] == ["control_character"]
    assert report.masked_codes == {}


def test_a_dry_run_of_an_eligibility_list(app, factory, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    text = ("handle,email,country\n@ayesha,ayesha@example.com,PK\n@bilal,bilal@example.com,PK\n"
            "@bilal2,bilal@example.com,PK\n@c,not-an-address,PK\n")
    report = _dry_creators(app, program, text)
    assert (report.imported, report.duplicate, report.invalid) == (1, 2, 1)
    assert {(d.line, d.code) for d in report.duplicates} == {
        (2, "already_listed"), (4, "duplicate_in_file")}
    assert [(e.line, e.field) for e in report.errors] == [(5, "email")]
    session.rollback()
    assert len(session.exec(select(Eligibility)).all()) == 1
