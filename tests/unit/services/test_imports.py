"""The import rules (``services/imports.py``), called directly: every row validated and reported
with its line, field and reason; all or nothing unless invalid rows are skipped; duplicates in
the file and in the database; files that are not UTF-8 text, empty or without the expected
header rejected as a whole. What the commands print of it is ``tests/unit/test_cli.py``'s."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import code_value, stock
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Code, CodeBatch, Creator, Eligibility, Program
from wellness_perks.services import imports
from wellness_perks.services.code_cipher import CodeKeyError
from wellness_perks.services.errors import InvalidInput
from wellness_perks.services.imports import NOT_UTF8, FileRejected, ImportReport, RowIssue

DATA = Path(__file__).resolve().parents[2] / "data"
CREATORS_SAMPLE = DATA / "creators-sample.csv"
CREATORS_WITH_ERRORS = DATA / "creators-with-errors.csv"
CODES_SAMPLE = DATA / "codes-sample.csv"
CODES_WITH_ERRORS = DATA / "codes-plain-with-errors.txt"
SLUG = "headspace-6m"
DEFAULT_FORMAT = "does not match 4 to 64 ASCII letters, digits and dashes"


# --------------------------------------------------------------------------- helpers


@contextmanager
def _opened(content: Path | str | bytes) -> Iterator[tuple[io.RawIOBase, str]]:
    """A binary stream of ``content`` (a file, streamed as the command streams it, or bytes)
    and the file name the import is told."""
    if isinstance(content, Path):
        with content.open("rb") as stream:
            yield stream, str(content)
        return
    data = content.encode("utf-8") if isinstance(content, str) else content
    yield io.BytesIO(data), "upload"


def _import_creators(app, program: Program, content, **options) -> ImportReport:
    with app.app_context(), _opened(content) as (stream, filename):
        options.setdefault("filename", filename)
        return imports.import_creators(get_session(), program=program, stream=stream,
                                       actor="test", **options)


def _import_codes(app, program: Program, content, **options) -> ImportReport:
    with app.app_context(), _opened(content) as (stream, filename):
        options.setdefault("filename", filename)
        options.setdefault("expires_on", None)  # no expiry, said explicitly
        return imports.import_codes(get_session(), program=program, stream=stream,
                                    actor="test", **options)


def _rejected(do_import, *args, **options) -> RowIssue:
    """The file was rejected as a whole: the one issue it was rejected for."""
    with pytest.raises(FileRejected) as rejected:
        do_import(*args, **options)
    return rejected.value.issue


def _fresh(session):
    session.rollback()  # a fresh snapshot: SQLite's WAL keeps a reader at its first view
    return session


def _all(session, statement):
    return _fresh(session).exec(statement).all()


def _count(session, model, *where) -> int:
    statement = select(sa.func.count()).select_from(model)
    if where:
        statement = statement.where(*where)
    return _fresh(session).exec(statement).one()


def _emails(session) -> set[str]:
    return set(_all(session, select(Creator.email)))


def _code_values(session, program_id=None) -> list[str]:
    statement = select(Code.value_encrypted).order_by(Code.id)
    if program_id is not None:
        statement = statement.where(Code.program_id == program_id)
    return [code_value(token) for token in _all(session, statement)]


def _audit_actions(session) -> list[str]:
    return list(_all(session, select(AuditEvent.action).order_by(AuditEvent.id)))


def _data_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _nothing_imported(session) -> None:
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0
    assert _count(session, Code) == 0
    assert _count(session, CodeBatch) == 0


@pytest.fixture
def program(factory):
    return factory.program(slug=SLUG, quota=100)


# --------------------------------------------------------------------------- creators


def test_import_creators_sample(app, session, program):
    report = _import_creators(app, program, CREATORS_SAMPLE)
    assert (report.imported, report.duplicate, report.invalid) == (40, 0, 0)
    assert report.committed and report.errors == [] and report.duplicates == []
    creators = _all(session, select(Creator).order_by(Creator.id))
    assert len(creators) == 40
    assert _count(session, Eligibility, Eligibility.program_id == program.id) == 40
    first = creators[0]
    assert (first.handle, first.email, first.country, first.name) == (
        "@zara.000000", "zara.000000@example.com", "BR", "Zara")
    assert {c.email for c in creators} == {
        line.split(",")[1] for line in _data_lines(CREATORS_SAMPLE)[1:]}
    assert all(c.email == c.email.lower() for c in creators)
    assert _audit_actions(session)[-1] == "creators.imported"


def test_import_creators_normalises_emails_to_lower_case(app, session, program):
    report = _import_creators(app, program, "handle,email,country\n"
                                            "@ayesha,Ayesha@Example.COM,pk\n"
                                            "@ali,ALI@EXAMPLE.COM, gb \n"
                                            "@ali2,ali@example.com,GB\n")
    assert (report.imported, report.duplicate, report.invalid) == (2, 1, 0)
    assert report.committed is True
    assert report.duplicates == [RowIssue(4, "email", "same email as line 3")]
    rows = _all(session, select(Creator.email, Creator.handle, Creator.country)
                .order_by(Creator.id))
    assert rows == [("ayesha@example.com", "@ayesha", "PK"), ("ali@example.com", "@ali", "GB")]


def test_import_creators_with_errors_imports_nothing(app, session, program):
    """One invalid row and nothing is written: every row is still validated and reported."""
    report = _import_creators(app, program, CREATORS_WITH_ERRORS)
    assert (report.imported, report.duplicate, report.invalid) == (0, 1, 3)
    assert report.committed is False
    # Exactly those rows are reported, each with its line, field and reason.
    assert [(e.line, e.field) for e in report.errors] == [(6, "country"), (8, "email"),
                                                         (20, "handle")]
    country, email, handle = (e.reason for e in report.errors)
    assert country == "'XX' is not an ISO 3166-1 alpha-2 country code"
    assert email.startswith("not a valid email address")
    assert handle == "handle is empty"
    assert report.duplicates == [RowIssue(21, "email", "same email as line 2")]
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0
    assert "creators.imported" not in _audit_actions(session)


def test_import_creators_with_errors_skip_invalid_imports_the_valid_rows(app, session, program):
    report = _import_creators(app, program, CREATORS_WITH_ERRORS, skip_invalid=True)
    assert (report.imported, report.duplicate, report.invalid) == (22, 1, 3)
    assert report.committed is True
    assert [(e.line, e.field) for e in report.errors] == [(6, "country"), (8, "email"),
                                                         (20, "handle")]
    assert report.duplicates == [RowIssue(21, "email", "same email as line 2")]
    emails = _emails(session)
    assert len(emails) == 22
    assert _count(session, Eligibility, Eligibility.program_id == program.id) == 22
    assert not {"bad.country@example.com", "not-an-email", "no.handle@example.com"} & emails
    # The first row with an email wins; the later duplicate did not overwrite it.
    [handle] = _all(session, select(Creator.handle)
                    .where(Creator.email == "bilal.000000@example.com"))
    assert handle == "@bilal.000000"
    assert _audit_actions(session)[-1] == "creators.imported"


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize("content", [b"", b"\r\n\n  \n"], ids=["0-bytes", "blank-lines"])
def test_import_creators_empty_file(app, session, program, content, skip_invalid):
    issue = _rejected(_import_creators, app, program, content, skip_invalid=skip_invalid)
    assert (issue.line, issue.field) == (1, "header")
    assert issue.reason.startswith("the file is empty")
    assert "expected a header line 'handle,email,country'" in issue.reason
    _nothing_imported(session)


@pytest.mark.parametrize(("header", "missing"), [
    ("name,mail,land", "handle, email, country"),
    ("handle,email,name", "country"),
    ("handle;email;country", "handle, email, country"),  # not comma-separated
])
def test_import_creators_wrong_header(app, session, program, header, missing):
    issue = _rejected(_import_creators, app, program, f"{header}\n@a,a@example.com,PK\n")
    assert (issue.line, issue.field) == (1, "header")
    assert issue.reason.startswith(f"missing column(s) {missing};")
    assert "expected 'handle,email,country'" in issue.reason
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0


def test_import_creators_header_naming_a_column_twice(app, session, program):
    issue = _rejected(_import_creators, app, program,
                      "handle,email,country,email\n@a,a@x.com,PK,b@x.com\n")
    assert issue == RowIssue(1, "header", "column(s) named twice: email")
    assert _count(session, Creator) == 0


def test_import_creators_accepts_a_byte_order_mark(app, session, program):
    report = _import_creators(app, program,
                              b"\xef\xbb\xbfhandle,email,country\n@a,a@example.com,PK\n")
    assert report.imported == 1 and report.committed
    assert _all(session, select(Creator.handle)) == ["@a"]


def test_import_creators_accepts_crlf_line_endings(app, session, program):
    report = _import_creators(app, program, b"handle,email,country,name\r\n"
                                            b"@a,a@example.com,PK,Ayesha\r\n"
                                            b"@b,b@example.com,GB,Bilal Khan\r\n")
    assert report.imported == 2 and report.committed
    rows = _all(session, select(Creator.email, Creator.country, Creator.name)
                .order_by(Creator.id))
    assert rows == [("a@example.com", "PK", "Ayesha"), ("b@example.com", "GB", "Bilal Khan")]


def test_import_creators_header_only(app, session, program):
    report = _import_creators(app, program, "handle,email,country,name\r\n")
    assert (report.imported, report.duplicate, report.invalid) == (0, 0, 0)
    assert report.committed is True
    assert _count(session, Creator) == 0


def test_import_creators_row_with_wrong_number_of_fields(app, session, program):
    content = ("handle,email,country\n"
               "@a,a@example.com,PK\n"
               "@b,b@example.com\n"
               "@c,c@example.com,PK,extra\n")
    report = _import_creators(app, program, content)
    assert report.committed is False and report.invalid == 2
    assert report.errors == [
        RowIssue(3, "row", "expected 3 fields, found 2"),
        RowIssue(4, "row", "expected 3 fields, found 4"),
    ]
    assert _count(session, Creator) == 0

    assert _import_creators(app, program, content, skip_invalid=True).committed
    assert _emails(session) == {"a@example.com"}


def test_import_creators_reports_the_line_a_quoted_row_starts_on(app, program):
    # A line break is refused in every column the import stores, not in one it ignores.
    report = _import_creators(app, program, 'handle,email,country,note\n'
                                            '@a,a@example.com,PK,"two\nlines"\n'
                                            '@b,b@example.com,ZZ,B\n'
                                            '@c,c@example.com,YY,"two\nlines"\n')
    # After a row of two lines, and on a row of two lines: the line it starts on.
    assert [(e.line, e.field) for e in report.errors] == [(4, "country"), (5, "country")]


def test_reimporting_the_same_file_adds_nothing(app, session, program):
    assert _import_creators(app, program, CREATORS_SAMPLE).committed
    report = _import_creators(app, program, CREATORS_SAMPLE)
    assert report.committed is True
    assert (report.imported, report.duplicate, report.invalid) == (0, 40, 0)
    assert {d.reason for d in report.duplicates} == {"already on this program's eligibility list"}
    assert {d.field for d in report.duplicates} == {"email"}
    assert sorted(d.line for d in report.duplicates) == list(range(2, 42))
    assert _count(session, Creator) == 40
    assert _count(session, Eligibility) == 40


def test_a_creator_known_from_another_program_is_reused(app, session, factory):
    first = factory.program(slug="headspace-6m")
    second = factory.program(slug="calm-1y")
    assert _import_creators(app, first, "handle,email,country\n"
                                        "@ayesha,ayesha@example.com,PK\n").committed
    report = _import_creators(app, second, "handle,email,country\n"
                                           "@ayesha_new,Ayesha@Example.com,GB\n")
    assert (report.imported, report.duplicate, report.invalid, report.committed) == (
        1, 0, 0, True)
    [creator] = _all(session, select(Creator))
    assert (creator.email, creator.handle, creator.country) == (
        "ayesha@example.com", "@ayesha", "PK")
    eligibility = _all(session, select(Eligibility.program_id, Eligibility.creator_id)
                       .order_by(Eligibility.program_id))
    assert eligibility == [(first.id, creator.id), (second.id, creator.id)]


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize("rows_before", [1, 3000])  # in the first 8 KiB, and past a write chunk
def test_import_creators_refuses_a_file_that_is_not_utf8(
        app, session, program, rows_before, skip_invalid):
    good = "".join(f"@c{i},c{i}@example.com,PK,C{i}\n" for i in range(rows_before))
    content = ("handle,email,country,name\n" + good).encode() + \
        "@jose,jose@example.com,ES,José\n".encode("latin-1") + b"@z,z@example.com,PK,Z\n"
    issue = _rejected(_import_creators, app, program, content, skip_invalid=skip_invalid)
    assert issue == RowIssue(rows_before + 2, "file", NOT_UTF8)  # the line it is on
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0


def test_import_creators_is_all_or_nothing_across_write_chunks(app, session, program):
    rows = [f"@c{i},c{i}@example.com,PK" for i in range(2500)]
    rows[2398] = "@bad,bad@example.com,XX"  # line 2400, after two chunks were written
    content = "handle,email,country\n" + "\n".join(rows) + "\n"
    report = _import_creators(app, program, content)
    assert (report.imported, report.duplicate, report.invalid) == (0, 0, 1)
    assert report.committed is False
    assert [(e.line, e.field) for e in report.errors] == [(2400, "country")]
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0

    report = _import_creators(app, program, content, skip_invalid=True)
    assert (report.imported, report.duplicate, report.invalid) == (2499, 0, 1)
    assert report.committed is True
    assert _count(session, Eligibility) == 2499


def test_import_creators_stores_formulas_and_markup_verbatim(app, session, program):
    names = ['=HYPERLINK("http://x","y")', "<script>alert(1)</script>", "+1+1", "@SUM(A1)",
             "Zoë 李 🙂"]
    body = "".join(f'@n{i},n{i}@example.com,PK,"{n.replace(chr(34), chr(34) * 2)}"\n'
                   for i, n in enumerate(names))
    assert _import_creators(app, program, "handle,email,country,name\n" + body).committed
    assert _all(session, select(Creator.name).order_by(Creator.id)) == names

    # And the sample rows with them import when invalid rows are skipped.
    assert _import_creators(app, program, CREATORS_WITH_ERRORS, skip_invalid=True).committed
    stored = dict(_all(session, select(Creator.email, Creator.name)))
    assert stored["formula@example.com"] == '=HYPERLINK("http://x","y")'
    assert stored["script@example.com"] == "<script>alert(1)</script>"


# --------------------------------------------------------------------------- codes


def test_import_codes_csv_sample(app, session, program):
    report = _import_codes(app, program, CODES_SAMPLE, batch_name="January batch",
                           expires_on=date(2030, 12, 31))
    assert (report.imported, report.duplicate, report.invalid) == (60, 0, 0)
    assert report.committed
    [batch] = _all(session, select(CodeBatch))
    assert report.batch_id == batch.id
    assert (batch.program_id, batch.name, batch.expires_on, batch.code_count) == (
        program.id, "January batch", date(2030, 12, 31), 60)
    assert batch.source_filename == "codes-sample.csv"  # the name, not the path it was given
    codes = _all(session, select(Code).order_by(Code.id))
    # no "code", no CR
    assert [code_value(c.value_encrypted) for c in codes] == _data_lines(CODES_SAMPLE)[1:]
    assert {(c.batch_id, c.program_id, c.status) for c in codes} == {
        (batch.id, program.id, "available")}
    assert _audit_actions(session)[-1] == "codes.imported"


def test_import_codes_default_batch_name(app, session, program):
    assert _import_codes(app, program, CODES_SAMPLE).committed
    [batch] = _all(session, select(CodeBatch))
    assert batch.name.startswith("codes-sample.csv ") and batch.expires_on is None


def test_import_codes_plain_file_with_errors_imports_nothing(app, session, program):
    report = _import_codes(app, program, CODES_WITH_ERRORS)
    assert (report.imported, report.duplicate, report.invalid) == (0, 1, 3)
    assert report.committed is False and report.batch_id is None
    # Exactly those rows: the blank line 24 is skipped, not reported.
    assert report.errors == [
        RowIssue(5, "code", "longer than 64 characters"),
        RowIssue(13, "code", DEFAULT_FORMAT),
        RowIssue(16, "code", DEFAULT_FORMAT),
    ]
    assert report.duplicates == [RowIssue(2, "code", "same code as line 1")]
    assert _count(session, Code) == 0
    assert _count(session, CodeBatch) == 0
    assert "codes.imported" not in _audit_actions(session)


def test_import_codes_plain_file_with_errors_skip_invalid(app, session, program):
    report = _import_codes(app, program, CODES_WITH_ERRORS, skip_invalid=True)
    assert (report.imported, report.duplicate, report.invalid) == (30, 1, 3)
    assert report.committed is True
    assert [(e.line, e.field) for e in report.errors] == [(5, "code"), (13, "code"),
                                                         (16, "code")]
    lines = _data_lines(CODES_WITH_ERRORS)
    expected = list(dict.fromkeys(v for i, v in enumerate(lines, start=1)
                                  if v and i not in {5, 13, 16}))
    assert len(expected) == 30
    assert _code_values(session) == expected
    [batch] = _all(session, select(CodeBatch))
    assert batch.code_count == 30 and report.batch_id == batch.id


def test_codes_are_stored_as_given_but_stripped(app, session, program):
    assert _import_codes(app, program, "  HS-abc-123  \n\tHS-Mixed-Case\t\r\nhs-lower-1").committed
    assert _code_values(session) == ["HS-abc-123", "HS-Mixed-Case", "hs-lower-1"]

    assert _import_codes(app, program, 'code\r\n"  HS-quoted-1  "\r\n  HS-csv-2 \r\n').committed
    assert _code_values(session)[3:] == ["HS-quoted-1", "HS-csv-2"]


def test_a_code_already_in_stock_is_a_duplicate(app, session, program):
    assert _import_codes(app, program, "HS-AAAA-0001\nHS-AAAA-0002\n").committed
    second = "HS-AAAA-0003\nHS-AAAA-0002\n"
    report = _import_codes(app, program, second)
    assert (report.imported, report.duplicate, report.invalid) == (1, 1, 0)
    assert report.duplicates == [RowIssue(2, "code", "already in this program's stock")]
    assert sorted(_code_values(session)) == ["HS-AAAA-0001", "HS-AAAA-0002", "HS-AAAA-0003"]
    counts = _all(session, select(CodeBatch.code_count).order_by(CodeBatch.id))
    assert counts == [2, 1]

    again = _import_codes(app, program, second)
    assert (again.imported, again.duplicate, again.invalid) == (0, 2, 0)
    assert again.committed is True and again.batch_id is None  # nothing wrong, nothing new
    assert again.duplicates == [RowIssue(1, "code", "already in this program's stock"),
                                RowIssue(2, "code", "already in this program's stock")]
    assert _count(session, CodeBatch) == 2  # no empty batch left behind
    assert _count(session, Code) == 3


def test_codes_are_case_sensitive(app, session, program):
    assert _import_codes(app, program, "HS-abcd\nHS-ABCD\n").committed
    assert _code_values(session) == ["HS-abcd", "HS-ABCD"]


def test_the_same_code_in_another_program_is_fine(app, session, factory):
    first = factory.program(slug="headspace-6m")
    second = factory.program(slug="calm-1y")
    assert _import_codes(app, first, "SHARED-0001\n").committed
    report = _import_codes(app, second, "SHARED-0001\n")
    assert (report.imported, report.duplicate, report.invalid, report.committed) == (
        1, 0, 0, True)
    assert _code_values(session, first.id) == ["SHARED-0001"]
    assert _code_values(session, second.id) == ["SHARED-0001"]


def test_codes_another_program_holds_are_imported_and_reported_by_line(app, session, factory):
    first = factory.program(slug="headspace-6m")
    second = factory.program(slug="calm-1y")
    assert _import_codes(app, first, "SHARED-0001\nSHARED-0002\nOWN-0003\n").committed
    report = _import_codes(app, second, "NEW-0001\nSHARED-0002\nSHARED-0001\nNEW-0002\n"
                                        "SHARED-0002\n")
    assert (report.imported, report.duplicate, report.invalid, report.committed) == (
        4, 1, 0, True)
    assert (report.in_other_programs, report.in_other_programs_lines) == (2, [2, 3])
    data = report.as_dict()
    assert (data["in_other_programs"], data["in_other_programs_lines"]) == (2, [2, 3])
    assert sorted(_code_values(session, second.id)) == [
        "NEW-0001", "NEW-0002", "SHARED-0001", "SHARED-0002"]
    again = _import_codes(app, second, "SHARED-0001\n")  # held here now: a duplicate, only
    assert (again.duplicate, again.in_other_programs) == (1, 0)
    assert "in_other_programs" not in _import_codes(app, first, "OWN-0004\n").as_dict()


def test_an_import_under_another_fingerprint_key_is_refused_before_it_writes(
        app, session, program):
    """A changed fingerprint key would take every code in stock for a new one: the import
    checks a stored code first, and writes nothing."""
    assert _import_codes(app, program, "HS-AAAA-0001\n").committed
    app.config["CODE_FINGERPRINT_KEY"] = "another fingerprint key, 32 bytes or more"
    with pytest.raises(CodeKeyError, match="fingerprinted with another key.*set "
                                           "CODE_FINGERPRINT_KEY"):
        _import_codes(app, program, "HS-AAAA-0001\nHS-AAAA-0002\n")
    app.config["CODE_FINGERPRINT_KEY"] = ""
    assert _code_values(session) == ["HS-AAAA-0001"] and _count(session, CodeBatch) == 1


def test_import_codes_refuses_an_expiry_in_the_past(app, session, program):
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    with pytest.raises(InvalidInput, match=f"^expiry date {yesterday.isoformat()} is in the "
                                           "past$") as refused:
        _import_codes(app, program, CODES_SAMPLE, expires_on=yesterday)
    assert refused.value.field == "expires"
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0
    # "The past" is before the day the import runs.
    with pytest.raises(InvalidInput, match="in the past"):
        _import_codes(app, program, CODES_SAMPLE, expires_on=date(2030, 1, 1),
                      today=date(2030, 1, 2))
    assert _count(session, CodeBatch) == 0


def test_import_codes_accepts_an_expiry_of_today(app, session, program):
    today = datetime.now(UTC).date()
    assert _import_codes(app, program, CODES_SAMPLE, expires_on=today).committed
    assert _all(session, select(CodeBatch.expires_on)) == [today]


def test_a_program_code_format_is_enforced(app, session, factory):
    program = factory.program(slug="calm-1y", name="Calm", quota=10,
                              code_pattern="[A-Z]{4}-[0-9]{4}")
    content = "ABCD-1234\nabcd-1234\nABCD-12345\nXABCD-1234\n"
    report = _import_codes(app, program, content)
    fmt = "does not match the program's code format [A-Z]{4}-[0-9]{4}"
    assert report.errors == [RowIssue(2, "code", fmt), RowIssue(3, "code", fmt),
                             RowIssue(4, "code", fmt)]  # line 1 matches
    assert report.committed is False
    assert _count(session, Code) == 0

    assert _import_codes(app, program, content, skip_invalid=True).committed
    assert _code_values(session) == ["ABCD-1234"]


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n  \n\t\n"], ids=["0-bytes", "newline",
                                                                       "blank-lines"])
def test_import_codes_empty_file(app, session, program, content, skip_invalid):
    issue = _rejected(_import_codes, app, program, content, skip_invalid=skip_invalid)
    assert (issue.line, issue.field) == (1, "file")
    assert issue.reason.startswith("the file is empty")
    assert _count(session, CodeBatch) == 0


def test_import_codes_header_only_csv(app, session, program):
    report = _import_codes(app, program, "code\r\n")
    assert (report.imported, report.duplicate, report.invalid) == (0, 0, 0)
    assert report.committed is True
    assert _count(session, CodeBatch) == 0


@pytest.mark.parametrize("content", [
    'code,note\nHS-AAAA-0001,first\nHS-AAAA-0002,"second, with a comma"\n',
    'note,Code\nfirst,HS-AAAA-0001\n"x, y",HS-AAAA-0002\n',
    'batch, CODE ,note\nb1,HS-AAAA-0001,n\nb1, HS-AAAA-0002 ,n\n',
], ids=["code-first", "code-second", "code-middle"])
def test_import_codes_takes_the_code_column(app, session, program, content):
    assert _import_codes(app, program, content).committed
    assert _code_values(session) == ["HS-AAAA-0001", "HS-AAAA-0002"]


def test_import_codes_csv_row_with_wrong_number_of_fields(app, session, program):
    report = _import_codes(app, program, "code,note\nHS-AAAA-0001,a\nHS-AAAA-0002\n")
    assert report.errors == [RowIssue(3, "row", "expected 2 fields, found 1")]
    assert report.committed is False
    assert _count(session, Code) == 0


@pytest.mark.parametrize(("content", "line"), [
    ("\n\nHS-AAAA-0001\nbad code\n", 4),
    ("\r\n\r\ncode\r\nHS-AAAA-0001\r\nbad code\r\n", 5),
])
def test_import_codes_leading_blank_lines_keep_line_numbers(app, program, content, line):
    report = _import_codes(app, program, content)
    assert [(e.line, e.field) for e in report.errors] == [(line, "code")]


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize("codes_before", [1, 3000])  # in the first 8 KiB, and past a write chunk
def test_import_codes_refuses_a_file_that_is_not_utf8(
        app, session, program, codes_before, skip_invalid):
    good = "".join(f"HS-GOOD-{i:05d}\n" for i in range(codes_before))
    content = good.encode() + "HS-ÇØDÉ-0001\n".encode("latin-1") + b"HS-LAST-0001\n"
    issue = _rejected(_import_codes, app, program, content, skip_invalid=skip_invalid)
    assert issue == RowIssue(codes_before + 1, "file", NOT_UTF8)  # the line it is on
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0


def test_import_codes_utf8_with_bom_and_crlf(app, session, program):
    assert _import_codes(app, program, b"\xef\xbb\xbfcode\r\nHS-AAAA-0001\r\n").committed
    assert _code_values(session) == ["HS-AAAA-0001"]


def test_import_codes_is_all_or_nothing_across_write_chunks(app, session, program):
    lines = [f"HS-BULK-{i:05d}" for i in range(2500)]
    lines[2399] = "not a code"  # line 2400, after two chunks were written
    report = _import_codes(app, program, "\n".join(lines) + "\n")
    assert report.errors == [RowIssue(2400, "code", DEFAULT_FORMAT)]
    assert (report.imported, report.committed, report.batch_id) == (0, False, None)
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0


def test_import_codes_moves_the_stock_counter_by_the_codes_inserted(app, session, program):
    assert _import_codes(app, program, "HS-AAAA-0001\nHS-AAAA-0002\n").committed
    assert stock(session, program.id) == (2, 2)
    # One new code; one already in stock and one repeated in the file are not counted.
    assert _import_codes(app, program, "HS-AAAA-0003\nHS-AAAA-0002\nHS-AAAA-0003\n").committed
    assert stock(session, program.id) == (3, 3)
    # All or nothing: rejected after two chunks were written, the counter rolls back with them.
    lines = [f"HS-BULK-{i:05d}" for i in range(2500)]
    lines[2399] = "not a code"
    assert not _import_codes(app, program, "\n".join(lines)).committed
    assert stock(session, program.id) == (3, 3)
    # A file rejected as a whole (not UTF-8) after a written chunk: the same.
    _rejected(_import_codes, app, program,
              "\n".join(lines[:1500]).encode() + b"\nHS-\xc7-0001\n", skip_invalid=True)
    assert stock(session, program.id) == (3, 3)
    assert _import_codes(app, program, CODES_WITH_ERRORS, skip_invalid=True).committed
    assert stock(session, program.id) == (33, 33)


def test_import_codes_batch_name_too_long(app, session, program):
    with pytest.raises(InvalidInput, match="^batch name is longer than 200 characters$") as too:
        _import_codes(app, program, CODES_SAMPLE, batch_name="b" * 201)
    assert too.value.field == "batch-name"
    assert _count(session, CodeBatch) == 0
    assert _import_codes(app, program, CODES_SAMPLE, batch_name="b" * 200).committed
    assert _all(session, select(CodeBatch.name)) == ["b" * 200]


def test_import_codes_default_batch_name_fits_for_a_long_file_name(
        app, session, program, tmp_path):
    path = tmp_path / ("c" * 240 + ".txt")
    path.write_text("HS-AAAA-0001\n")
    assert _import_codes(app, program, path).committed  # told the whole path, as the CLI does
    [batch] = _all(session, select(CodeBatch))
    assert len(batch.name) <= 200 and batch.name.startswith("c" * 100)
    assert batch.source_filename == path.name


def test_import_50000_codes(app, session, program, tmp_path):
    path = tmp_path / "big.txt"
    with path.open("w") as out:
        for i in range(50_000):
            out.write(f"BULK-{i:06d}-{i * 7919 % 100_000:05d}\n")
    report = _import_codes(app, program, path)  # streamed from the file
    assert report.imported == 50_000 and report.committed
    assert _count(session, Code, Code.program_id == program.id) == 50_000
    assert _all(session, select(CodeBatch.code_count)) == [50_000]
    # Speed is for the benchmarks (bench/), not asserted here.


def test_rejected_file_leaves_nothing_in_the_session(app, session, program):
    good_then_bad = b"code\n" + b"".join(b"GOOD-%04d\n" % i for i in range(1500)) + b"\xff\xfe\n"
    with app.app_context():
        s = get_session()
        with pytest.raises(imports.FileRejected):
            imports.import_codes(s, program=s.get(Program, program.id),
                                 stream=io.BytesIO(good_then_bad), expires_on=None,
                                 actor="test")
        s.commit()  # a careless caller: must not save half an import
    session.rollback()
    assert session.exec(select(Code)).all() == []
    assert session.exec(select(CodeBatch)).all() == []
