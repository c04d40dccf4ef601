"""Import files as an attacker (or a careless export) makes them: NUL bytes and control
characters, huge lines, floods of bad rows, header lines that are not the known header. Each
ends in a located issue (line, field, stable code) and stores nothing it refused, on SQLite and
PostgreSQL (psycopg refuses a NUL outright)."""

from __future__ import annotations

import io
import json
import re

import pytest
from sqlmodel import select

from tests.unit.services.test_imports import (
    SLUG,
    _code_values,
    _count,
    _emails,
    _import_codes,
    _import_creators,
    _nothing_imported,
    _rejected,
)
from wellness_perks.db import get_session
from wellness_perks.models import Code, CodeBatch, Creator
from wellness_perks.services import imports
from wellness_perks.services.errors import InvalidInput
from wellness_perks.services.imports import MAX_LINE_CHARS, MAX_LISTED_ISSUES, RowIssue

HEADER = "handle,email,country,name\n"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@pytest.fixture
def program(factory):
    return factory.program(slug=SLUG, quota=100)


@pytest.fixture
def any_code_program(factory):
    """A program whose code format lets anything through: only the import's own checks stop
    a control character."""
    return factory.program(slug="anything-6m", quota=100, code_pattern=r"(?s).{1,64}")


def _issues(report) -> list[tuple[int, str, str]]:
    return [(e.line, e.field, e.code) for e in report.errors]


# --------------------------------------------------------------------------- control characters


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\u2028", "\t", "\r",
                                  "\n"], ids=repr)
@pytest.mark.parametrize("column", ["handle", "email", "country", "name"])
def test_a_control_character_in_a_creator_field_is_a_located_error(
        app, session, program, column, char):
    row = {"handle": "@ann", "email": "ann@example.com", "country": "PK", "name": "Ann"}
    row[column] = row[column][:1] + char + row[column][1:]
    body = ",".join(f'"{row[c]}"' for c in ("handle", "email", "country", "name"))
    content = HEADER + "@bob,bob@example.com,PK,Bob\n" + body + "\n"
    report = _import_creators(app, program, content)
    assert _issues(report) == [(3, column, "control_character")]
    assert report.errors[0].params == {"character": f"U+{ord(char):04X}"}
    assert report.committed is False
    _nothing_imported(session)

    report = _import_creators(app, program, content, skip_invalid=True)
    assert (report.imported, report.invalid, report.committed) == (1, 1, True)
    assert _emails(session) == {"bob@example.com"}


def test_control_characters_around_a_value_are_stripped_like_spaces(app, session, program):
    """What is stored is what the value says: white space (tab, NEL, line separators) around
    it goes, as spaces do; only what would be stored is checked."""
    report = _import_creators(app, program,
                              HEADER + "\t@ann\x85,ann@example.com\t,PK, Ann\u2028\n")
    assert report.committed and report.imported == 1
    assert session.exec(select(Creator.handle, Creator.name)).one() == ("@ann", "Ann")


@pytest.mark.parametrize("content", [
    b"HS-AAAA-0001\nHS-\x00AAAA-0002\n",
    b"HS-AAAA-0001\nHS-\x01AAAA-0002\r\n",
    b"HS-AAAA-0001\nHS-AAAA\t0002\n",
    b"HS-AAAA-0001\nHS-AAAA\x1b[31m0002\n",
    "HS-AAAA-0001\nHS-\u2028AAAA-0002\n".encode(),
    b'code,note\nHS-AAAA-0001,a\n"HS-\x00AAAA-0002",b\n',
    b'code,note\nHS-AAAA-0001,a\n"HS-AAAA\r\n-0002",b\n',
], ids=["nul", "soh-crlf", "tab", "escape", "line-separator", "csv-nul", "csv-line-break"])
def test_a_control_character_in_a_code_is_a_located_error(app, session, any_code_program,
                                                          content):
    report = _import_codes(app, any_code_program, content)
    assert _issues(report) == [(2 if content.startswith(b"HS") else 3, "code",
                                "control_character")]
    assert report.committed is False
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0

    report = _import_codes(app, any_code_program, content, skip_invalid=True)
    assert (report.imported, report.invalid) == (1, 1)
    assert _code_values(session) == ["HS-AAAA-0001"]


@pytest.mark.parametrize("header", ["handle,email,country,\x1b[2J", "handle,email,country\x00",
                                    'handle,email,country,"no\nte"'], ids=repr)
def test_a_header_with_a_control_character_rejects_the_file(app, session, program, header):
    issue = _rejected(_import_creators, app, program, header + "\n@a,a@example.com,PK,x\n")
    assert (issue.line, issue.field, issue.code) == (1, "header", "control_character")
    assert not CONTROL.search(issue.reason)  # never printed as it is
    _nothing_imported(session)


def test_a_control_character_in_an_ignored_column_is_not_stored_so_not_refused(
        app, session, program):
    assert _import_codes(app, program, 'code,note\nHS-AAAA-0001,"a\x00b"\n').committed
    assert _code_values(session) == ["HS-AAAA-0001"]


def test_a_batch_name_with_a_control_character_is_refused(app, session, program):
    with pytest.raises(InvalidInput) as refused:
        _import_codes(app, program, "HS-AAAA-0001\n", batch_name="May\r\nBcc: x@example.com")
    assert (refused.value.field, refused.value.code) == ("batch-name", "control_character")
    assert _count(session, CodeBatch) == 0


def test_a_file_name_with_a_control_character_is_stored_without_it(app, session, program):
    assert _import_codes(app, program, "HS-AAAA-0001\n", filename="/tmp/may\n\x00.txt").committed
    [(name, source)] = session.exec(select(CodeBatch.name, CodeBatch.source_filename)).all()
    assert source == "may\ufffd\ufffd.txt" and name.startswith("may\ufffd\ufffd.txt ")


# --------------------------------------------------------------------------- memory


def test_only_the_first_errors_are_kept_and_the_rest_counted(app, session, program):
    more = 41
    rows = "".join(f"@c{i},c{i}@example.com,ZZ\n" for i in range(MAX_LISTED_ISSUES + more))
    report = _import_creators(app, program, "handle,email,country\n" + rows)
    assert report.invalid == MAX_LISTED_ISSUES + more
    assert len(report.errors) == MAX_LISTED_ISSUES and report.errors.not_listed == more
    assert report.errors[-1].line == MAX_LISTED_ISSUES + 1  # the first ones, in file order
    data = report.as_dict()
    assert len(data["errors"]) == MAX_LISTED_ISSUES and data["errors_not_listed"] == more
    _nothing_imported(session)


def test_only_the_first_duplicates_are_kept_and_the_rest_counted(app, session, program):
    more = 7
    content = "HS-AAAA-0001\n" * (MAX_LISTED_ISSUES + more + 1)
    report = _import_codes(app, program, content)
    assert (report.imported, report.duplicate) == (1, MAX_LISTED_ISSUES + more)
    assert len(report.duplicates) == MAX_LISTED_ISSUES
    assert report.duplicates.not_listed == more


def test_the_command_says_how_many_errors_it_did_not_list(runner, program, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("handle,email,country\n"
                    + "@c,c@example.com,ZZ\n" * (MAX_LISTED_ISSUES + 1234))
    result = runner.invoke(args=["import-creators", SLUG, str(path)])
    assert result.exit_code == 1
    assert result.stderr.count("bad.csv: line ") == MAX_LISTED_ISSUES
    assert "bad.csv: and 1,234 more errors\n" in result.stderr
    assert result.stdout == f"imported 0, duplicate 0, invalid {MAX_LISTED_ISSUES + 1234}\n"

    result = runner.invoke(args=["import-creators", SLUG, str(path), "--json"])
    report = json.loads(result.stdout)
    assert report["errors_not_listed"] == 1234


def test_a_creators_line_longer_than_the_limit_rejects_the_file(app, session, program):
    content = HEADER + "@a,a@example.com,PK,A\n" + "@b,b@example.com,PK," + "x" * MAX_LINE_CHARS
    issue = _rejected(_import_creators, app, program, content + "\n@c,c@example.com,PK,C\n")
    assert (issue.line, issue.field, issue.code) == (3, "file", "line_too_long")
    _nothing_imported(session)


def test_a_codes_line_longer_than_the_limit_is_a_located_error(app, session, program):
    content = "HS-AAAA-0001\n" + "X" * (3 * MAX_LINE_CHARS) + "\nHS-AAAA-0003\nbad code\n"
    report = _import_codes(app, program, content)
    assert _issues(report) == [(2, "code", "too_long"), (4, "code", "code_format")]
    report = _import_codes(app, program, content, skip_invalid=True)
    assert _code_values(session) == ["HS-AAAA-0001", "HS-AAAA-0003"]


@pytest.mark.parametrize(("content", "issues"), [
    ("X" * MAX_LINE_CHARS, [(1, "code", "too_long")]),  # at the limit: a (too long) code
    ("X" * (MAX_LINE_CHARS - 1) + "\n", [(1, "code", "too_long")]),
    ("X" * MAX_LINE_CHARS + "\n", [(1, "code", "too_long")]),  # past it: read past
    ("HS-A-1\n" + "X" * (2 * MAX_LINE_CHARS) + "\nbad code", [(2, "code", "too_long"),
                                                            (3, "code", "code_format")]),
], ids=["at-the-limit-at-the-end", "at-the-limit", "past-the-limit", "twice-the-limit"])
def test_lines_around_the_limit_keep_their_numbers(app, program, content, issues):
    assert _issues(_import_codes(app, program, content)) == issues


@pytest.mark.parametrize("line_end", ["", "\n", "\r\n"])
def test_a_creators_line_of_the_limit_is_read_one_more_is_refused(app, program, line_end):
    """The limit counts the line end as one character, CR LF too."""
    start = "@b,b@example.com,PK,"
    row = start + "x" * (MAX_LINE_CHARS - len(start) - len(line_end[:1])) + line_end
    report = _import_creators(app, program, HEADER + row)
    assert _issues(report) == [(2, "name", "too_long")]
    issue = _rejected(_import_creators, app, program, HEADER + "x" + row)
    assert (issue.line, issue.code) == (2, "line_too_long")


@pytest.mark.parametrize(("after_cr", "issues"), [
    ("\nbad code\r\n", [(2, "code", "code_format")]),  # CR LF: one line end
    ("bad code\r\n", [(2, "code", "code_format")]),  # a CR alone ends the line too
    ("\r\nbad code", [(3, "code", "code_format")]),  # then a blank CR LF line
    ("\rbad code", [(3, "code", "code_format")]),  # then a blank CR line
    ("X" * (MAX_LINE_CHARS + 5) + "\nbad code", [(2, "code", "too_long"),
                                                (3, "code", "code_format")]),
], ids=["lf", "text", "crlf", "cr", "long-line"])
def test_a_cr_at_the_line_limit_ends_one_line(app, program, after_cr, issues):
    """A line whose CR is the last character the limit lets through: what follows it starts
    the next line, unless it is the LF of a CR LF."""
    code = "HS-AAAA-0001"
    padded = " " * (MAX_LINE_CHARS - 1 - len(code)) + code + "\r"
    assert _issues(_import_codes(app, program, padded + after_cr)) == issues
    if len(issues) == 1:  # the same in a CSV, where the reader sees the lines
        row = "@a,a@example.com,PK,A"
        row += " " * (MAX_LINE_CHARS - 1 - len(row)) + "\r"
        report = _import_creators(app, program, HEADER.replace("\n", "\r") + row
                                  + after_cr.replace("bad code", "@b,b@x,PK,B"))
        assert _issues(report) == [(issues[0][0] + 1, "email", "email_invalid")]


# --------------------------------------------------------------------------- header lines


@pytest.mark.parametrize(("content", "line", "found"), [
    ("codes\nHS-AAAA-0001\n", 1, "codes"),
    ("Codes\r\nHS-AAAA-0001\r\n", 1, "Codes"),
    ("voucher\nHS-AAAA-0001\n", 1, "voucher"),
    ("CODES\nABCDEFGH\n", 1, "CODES"),
    ("promo-code\nHS-AAAA-0001\n", 1, "promo-code"),
    ("voucher code\nHS-AAAA-0001\n", 1, "voucher code"),
    ("codes,expires\nHS-AAAA-0001,2027-01-01\n", 1, "codes,expires"),
    ("Gutschein\nHS-AAAA-0001\n", 1, "Gutschein"),
    ("\n\n  codes  \nHS-AAAA-0001\n", 3, "codes"),
    ("codes\n", 1, "codes"),
], ids=lambda v: repr(v) if isinstance(v, str) else str(v))
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_a_header_like_first_line_that_is_not_a_known_header_is_refused(
        app, session, program, content, line, found, skip_invalid):
    issue = _rejected(_import_codes, app, program, content, skip_invalid=skip_invalid)
    assert (issue.line, issue.field, issue.code) == (line, "header", "header_unknown")
    assert issue.params == {"found": found, "known": ["code"]}
    assert f"{found!r} looks like a header" in issue.reason and "'code'" in issue.reason
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0


@pytest.mark.parametrize(("content", "codes"), [
    ("Code \nHS-AAAA-0001\n", ["HS-AAAA-0001"]),
    ("CODE\nHS-AAAA-0001\n", ["HS-AAAA-0001"]),
    ("ABCDEFGH\nQWERTYUI\n", ["ABCDEFGH", "QWERTYUI"]),
    ("abcdefgh\nqwertyui\n", ["abcdefgh", "qwertyui"]),
    ("HS-abcd\nHS-ABCD\n", ["HS-abcd", "HS-ABCD"]),
    ("ABCDEFGH\n", ["ABCDEFGH"]),
    ("code\nCODES\n", ["CODES"]),  # under the known header, any code is a code
], ids=repr)
def test_codes_that_are_all_letters_still_import(app, session, program, content, codes):
    assert _import_codes(app, program, content).committed
    assert _code_values(session) == codes


def test_the_command_names_line_one_and_the_known_header(runner, session, program, tmp_path):
    path = tmp_path / "codes.txt"
    path.write_text("codes\nHS-AAAA-0001\n")
    result = runner.invoke(args=["import-codes", SLUG, str(path), "--no-expiry"])
    assert result.exit_code == 1
    assert ("codes.txt: line 1, header: 'codes' looks like a header, but the known header is "
            "'code'") in result.stderr
    assert "nothing was imported: the file was rejected" in result.stderr
    assert _count(session, Code) == 0


def test_a_rejected_header_leaves_nothing_in_the_session(app, session, program):
    with app.app_context():
        s = get_session()
        with pytest.raises(imports.FileRejected):
            imports.import_codes(s, program=program, stream=io.BytesIO(b"codes\nHS-A-1\n"),
                                 expires_on=None, actor="test")
        s.commit()
    assert _count(session, CodeBatch) == 0


def test_issue_codes_compare_by_place_and_reason():
    """Reports compare as they always did: line, field and reason."""
    assert RowIssue(1, "code", "x", "a", {"p": 1}) == RowIssue(1, "code", "x", "b")
