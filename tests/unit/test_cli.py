"""The ``wellness-perks`` command line, run through Flask's CLI runner against the real database:
what each command prints, its exit code, and what it leaves in the database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlmodel import select
from werkzeug.security import check_password_hash

from tests.helpers import stock
from wellness_perks.db import get_session
from wellness_perks.migrate import alembic_config
from wellness_perks.models import (
    DEFAULT_CODE_PATTERN,
    AuditEvent,
    Claim,
    Code,
    CodeBatch,
    Creator,
    Eligibility,
    Manager,
    Program,
)
from wellness_perks.services import claims, codes

DATA = Path(__file__).resolve().parent.parent / "data"
CREATORS_SAMPLE = DATA / "creators-sample.csv"
CREATORS_WITH_ERRORS = DATA / "creators-with-errors.csv"
CODES_SAMPLE = DATA / "codes-sample.csv"
CODES_WITH_ERRORS = DATA / "codes-plain-with-errors.txt"
PASSWORD = "correct horse battery staple"
SLUG = "headspace-6m"


# --------------------------------------------------------------------------- helpers


def _run(runner, *args):
    return runner.invoke(args=[str(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def _error(result, *fragments, exit_code=1):
    """A refused command: the exit code, and each fragment in what it wrote to stderr."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result


def _json(result) -> dict:
    return json.loads(result.stdout)  # stdout holds the JSON document and nothing else


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


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
    statement = select(Code.value).order_by(Code.id)
    if program_id is not None:
        statement = statement.where(Code.program_id == program_id)
    return list(_all(session, statement))


def _audit_actions(session) -> list[str]:
    return list(_all(session, select(AuditEvent.action).order_by(AuditEvent.id)))


def _data_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def program(factory):
    return factory.program(slug=SLUG, quota=100)


# --------------------------------------------------------------------------- create-program


def test_create_program_stores_what_it_was_given(runner, session):
    result = _ok(_run(runner, "create-program", "--slug", SLUG, "--name", "  Headspace · 6 months ",
                      "--quota", 500, "--months", 12, "--opens", "2026-12-01T09:00+05:00",
                      "--closes", "2027-01-31T18:00", "--redeem-url",
                      "https://headspace.example/redeem?code={code}",
                      "--code-format", "HS-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}"))
    assert result.stdout == f"program {SLUG} created (quota 500)\n"
    [program] = _all(session, select(Program))
    assert program.slug == SLUG
    assert program.name == "Headspace · 6 months"
    assert (program.quota, program.perk_months, program.allocated_count) == (500, 12, 0)
    assert program.opens_at == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    assert program.closes_at == datetime(2027, 1, 31, 18, 0, tzinfo=UTC)  # no zone: UTC
    assert program.redeem_url == "https://headspace.example/redeem?code={code}"
    assert program.code_pattern == "HS-[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}"
    assert _audit_actions(session) == ["program.created"]


def test_create_program_defaults(runner, session):
    _ok(_run(runner, "create-program", "--slug", "calm-1y", "--name", "Calm", "--quota", 0))
    [program] = _all(session, select(Program))
    assert (program.quota, program.perk_months) == (0, 6)
    assert program.opens_at is None and program.closes_at is None and program.redeem_url is None
    assert program.code_pattern == DEFAULT_CODE_PATTERN


@pytest.mark.parametrize(("options", "message"), [
    (["--slug", "Headspace 6m"], "slug must be 2 to 64 lower-case letters"),
    (["--slug", "-headspace"], "slug must be 2 to 64 lower-case letters"),
    (["--slug", "h"], "slug must be 2 to 64 lower-case letters"),
    (["--name", "   "], "name must not be empty"),
    (["--opens", "2026-12-02T00:00Z", "--closes", "2026-12-01T00:00Z"],
     "the claim window closes before it opens"),
    (["--opens", "2026-12-01T10:00+05:00", "--closes", "2026-12-01T05:00Z"],
     "the claim window closes before it opens"),  # the same instant
    (["--opens", "next tuesday"], "--opens 'next tuesday' is not an ISO 8601 date or time"),
    (["--redeem-url", "ftp://headspace.example/{code}"], "redeem URL must be an http(s) URL"),
    (["--redeem-url", "headspace.example/redeem"], "redeem URL must be an http(s) URL"),
    (["--redeem-url", "javascript:alert(1)"], "redeem URL must be an http(s) URL"),
    (["--code-format", "HS-[A-Z"], "code format is not a valid regular expression"),
    (["--code-format", "(?P<x>"], "code format is not a valid regular expression"),
])
def test_create_program_refuses_bad_input_and_creates_nothing(runner, session, options, message):
    args = {"--slug": SLUG, "--name": "Headspace", "--quota": "10"}
    for option, value in zip(options[::2], options[1::2], strict=True):
        args[option] = value
    result = _run(runner, "create-program", *[x for pair in args.items() for x in pair])
    _error(result, f"Error: {message}")
    assert result.stdout == ""
    assert _count(session, Program) == 0
    assert _count(session, AuditEvent) == 0


def test_create_program_refuses_a_negative_quota(runner, session):
    _error(_run(runner, "create-program", "--slug", SLUG, "--name", "H", "--quota", -1),
           "--quota", exit_code=2)
    assert _count(session, Program) == 0


def test_create_program_refuses_a_duplicate_slug(runner, session):
    _ok(_run(runner, "create-program", "--slug", SLUG, "--name", "First", "--quota", 10))
    result = _run(runner, "create-program", "--slug", SLUG, "--name", "Second", "--quota", 20)
    _error(result, f"Error: a program with slug '{SLUG}' already exists")
    [program] = _all(session, select(Program))
    assert (program.name, program.quota) == ("First", 10)
    assert _audit_actions(session) == ["program.created"]


# --------------------------------------------------------------------------- create-manager


def test_create_manager_stores_a_hash_not_the_password(runner, session):
    result = _ok(_run(runner, "create-manager", "Boss@Example.COM", "--password", PASSWORD))
    assert result.stdout == "manager boss@example.com created\n"
    assert PASSWORD not in result.output
    [manager] = _all(session, select(Manager))
    assert manager.email == "boss@example.com"
    assert PASSWORD not in manager.password_hash
    assert manager.password_hash.split(":")[0] in {"scrypt", "pbkdf2"}  # werkzeug's format
    assert check_password_hash(manager.password_hash, PASSWORD)
    assert not check_password_hash(manager.password_hash, PASSWORD + "!")
    [event] = _all(session, select(AuditEvent))
    assert event.action == "manager.created" and PASSWORD not in (event.detail or "")


def test_create_manager_prompts_for_the_password_twice(runner, session):
    result = runner.invoke(args=["create-manager", "boss@example.com"],
                           input=f"{PASSWORD}\n{PASSWORD}\n")
    _ok(result)
    [manager] = _all(session, select(Manager))
    assert check_password_hash(manager.password_hash, PASSWORD)


def test_create_manager_refuses_mismatched_prompted_passwords(runner, session):
    result = runner.invoke(args=["create-manager", "boss@example.com"],
                           input=f"{PASSWORD}\nsomething else entirely\n")
    assert result.exit_code != 0
    assert "do not match" in result.output
    assert _count(session, Manager) == 0


@pytest.mark.parametrize(("email", "password", "message"), [
    ("boss@example.com", "elevenchars", "password must be at least 12 characters"),
    ("boss@example.com", "", "password must be at least 12 characters"),
    ("not-an-email", PASSWORD, "not a valid email address"),
    ("boss@", PASSWORD, "not a valid email address"),
    ("", PASSWORD, "email address is empty"),
])
def test_create_manager_refuses_bad_input(runner, session, email, password, message):
    result = _run(runner, "create-manager", email, "--password", password)
    _error(result, f"Error: {message}")
    assert _count(session, Manager) == 0
    assert _count(session, AuditEvent) == 0


def test_create_manager_refuses_a_duplicate_whatever_the_case(runner, session):
    _ok(_run(runner, "create-manager", "boss@example.com", "--password", PASSWORD))
    [before] = _all(session, select(Manager))
    result = _run(runner, "create-manager", "BOSS@example.com", "--password", "another password!")
    _error(result, "Error: a manager with email boss@example.com already exists")
    [after] = _all(session, select(Manager))
    assert (after.id, after.password_hash) == (before.id, before.password_hash)


# --------------------------------------------------------------------------- import-creators


def test_import_creators_sample(runner, session, program):
    result = _ok(_run(runner, "import-creators", SLUG, CREATORS_SAMPLE))
    assert result.stdout == "imported 40, duplicate 0, invalid 0\n"
    assert result.stderr == ""
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


def test_import_creators_normalises_emails_to_lower_case(runner, session, program, tmp_path):
    path = _write(tmp_path, "mixed.csv", "handle,email,country\n"
                                         "@ayesha,Ayesha@Example.COM,pk\n"
                                         "@ali,ALI@EXAMPLE.COM, gb \n"
                                         "@ali2,ali@example.com,GB\n")
    result = _ok(_run(runner, "import-creators", SLUG, path, "--json"))
    report = _json(result)
    assert (report["imported"], report["duplicate"], report["invalid"]) == (2, 1, 0)
    assert report["duplicates"] == [
        {"line": 4, "field": "email", "reason": "same email as line 3"}]
    rows = _all(session, select(Creator.email, Creator.handle, Creator.country)
                .order_by(Creator.id))
    assert rows == [("ayesha@example.com", "@ayesha", "PK"), ("ali@example.com", "@ali", "GB")]


def test_import_creators_with_errors_imports_nothing(runner, session, program):
    result = _run(runner, "import-creators", SLUG, CREATORS_WITH_ERRORS)
    _error(result,
           "creators-with-errors.csv: line 6, country: 'XX' is not an ISO 3166-1 alpha-2",
           "creators-with-errors.csv: line 8, email: not a valid email address",
           "creators-with-errors.csv: line 20, handle: handle is empty",
           "creators-with-errors.csv: line 21, email: duplicate, skipped (same email as line 2)",
           "nothing was imported", "--skip-invalid")
    assert result.stdout == "imported 0, duplicate 1, invalid 3\n"
    # Exactly those rows are reported.
    assert len([line for line in result.stderr.splitlines() if ": line " in line]) == 4
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0
    assert "creators.imported" not in _audit_actions(session)


def test_import_creators_with_errors_skip_invalid_imports_the_valid_rows(
        runner, session, program):
    result = _ok(_run(runner, "import-creators", SLUG, CREATORS_WITH_ERRORS, "--skip-invalid"))
    assert result.stdout == "imported 22, duplicate 1, invalid 3\n"
    assert "line 6, country" in result.stderr and "line 21, email: duplicate" in result.stderr
    assert "nothing was imported" not in result.stderr
    emails = _emails(session)
    assert len(emails) == 22
    assert _count(session, Eligibility, Eligibility.program_id == program.id) == 22
    assert not {"bad.country@example.com", "not-an-email", "no.handle@example.com"} & emails
    # The first row with an email wins; the later duplicate did not overwrite it.
    [handle] = _all(session, select(Creator.handle)
                    .where(Creator.email == "bilal.000000@example.com"))
    assert handle == "@bilal.000000"


def test_import_creators_json_report(runner, program):
    result = _run(runner, "import-creators", SLUG, CREATORS_WITH_ERRORS, "--json")
    assert result.exit_code == 1
    report = _json(result)
    assert {"imported", "duplicate", "invalid", "errors"} <= report.keys()
    assert (report["imported"], report["duplicate"], report["invalid"]) == (0, 1, 3)
    assert report["committed"] is False
    assert [(e["line"], e["field"]) for e in report["errors"]] == [
        (6, "country"), (8, "email"), (20, "handle")]
    assert all(set(e) == {"line", "field", "reason"} and isinstance(e["line"], int)
               and e["reason"] for e in report["errors"])
    assert report["duplicates"] == [
        {"line": 21, "field": "email", "reason": "same email as line 2"}]

    good = _json(_ok(_run(runner, "import-creators", SLUG, CREATORS_SAMPLE, "--json")))
    assert (good["imported"], good["duplicate"], good["invalid"], good["errors"]) == (
        40, 0, 0, [])
    assert good["committed"] is True


@pytest.mark.parametrize("options", [[], ["--skip-invalid"]])
def test_import_creators_empty_file(runner, session, program, tmp_path, options):
    path = _write(tmp_path, "empty.csv", b"")
    result = _run(runner, "import-creators", SLUG, path, *options)
    _error(result, "empty.csv: line 1, header: the file is empty",
           "expected a header line 'handle,email,country'", "nothing was imported")
    assert "--skip-invalid" not in result.stderr  # it would not help
    assert _count(session, Creator) == 0

    report = _json(_run(runner, "import-creators", SLUG, path, "--json", *options))
    assert report["imported"] == 0 and report["committed"] is False
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(1, "header")]


def test_import_creators_blank_lines_only_is_empty(runner, session, program, tmp_path):
    path = _write(tmp_path, "blank.csv", "\r\n\n  \n")
    _error(_run(runner, "import-creators", SLUG, path), "the file is empty")
    assert _count(session, Creator) == 0


@pytest.mark.parametrize(("header", "missing"), [
    ("name,mail,land", "handle, email, country"),
    ("handle,email,name", "country"),
    ("handle;email;country", "handle, email, country"),  # not comma-separated
])
def test_import_creators_wrong_header(runner, session, program, tmp_path, header, missing):
    path = _write(tmp_path, "wrong.csv", f"{header}\n@a,a@example.com,PK\n")
    result = _run(runner, "import-creators", SLUG, path)
    _error(result, f"wrong.csv: line 1, header: missing column(s) {missing};",
           "expected 'handle,email,country'")
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0


def test_import_creators_header_naming_a_column_twice(runner, session, program, tmp_path):
    path = _write(tmp_path, "twice.csv", "handle,email,country,email\n@a,a@x.com,PK,b@x.com\n")
    _error(_run(runner, "import-creators", SLUG, path), "column(s) named twice: email")
    assert _count(session, Creator) == 0


def test_import_creators_accepts_a_byte_order_mark(runner, session, program, tmp_path):
    path = _write(tmp_path, "bom.csv",
                  b"\xef\xbb\xbfhandle,email,country\n@a,a@example.com,PK\n")
    assert _ok(_run(runner, "import-creators", SLUG, path)).stdout.startswith("imported 1,")
    assert _all(session, select(Creator.handle)) == ["@a"]


def test_import_creators_accepts_crlf_line_endings(runner, session, program, tmp_path):
    path = _write(tmp_path, "crlf.csv", b"handle,email,country,name\r\n"
                                        b"@a,a@example.com,PK,Ayesha\r\n"
                                        b"@b,b@example.com,GB,Bilal Khan\r\n")
    assert _ok(_run(runner, "import-creators", SLUG, path)).stdout.startswith("imported 2,")
    rows = _all(session, select(Creator.email, Creator.country, Creator.name)
                .order_by(Creator.id))
    assert rows == [("a@example.com", "PK", "Ayesha"), ("b@example.com", "GB", "Bilal Khan")]


def test_import_creators_header_only(runner, session, program, tmp_path):
    path = _write(tmp_path, "header.csv", "handle,email,country,name\r\n")
    result = _ok(_run(runner, "import-creators", SLUG, path))
    assert result.stdout == "imported 0, duplicate 0, invalid 0\n"
    assert _count(session, Creator) == 0


def test_import_creators_row_with_wrong_number_of_fields(runner, session, program, tmp_path):
    path = _write(tmp_path, "fields.csv", "handle,email,country\n"
                                          "@a,a@example.com,PK\n"
                                          "@b,b@example.com\n"
                                          "@c,c@example.com,PK,extra\n")
    report = _json(_run(runner, "import-creators", SLUG, path, "--json"))
    assert report["committed"] is False and report["invalid"] == 2
    assert report["errors"] == [
        {"line": 3, "field": "row", "reason": "expected 3 fields, found 2"},
        {"line": 4, "field": "row", "reason": "expected 3 fields, found 4"},
    ]
    assert _count(session, Creator) == 0

    _ok(_run(runner, "import-creators", SLUG, path, "--skip-invalid"))
    assert _emails(session) == {"a@example.com"}


def test_import_creators_reports_the_line_a_quoted_row_starts_on(
        runner, session, program, tmp_path):
    path = _write(tmp_path, "quoted.csv", 'handle,email,country,name\n'
                                          '@a,a@example.com,PK,"two\nlines"\n'
                                          '@b,b@example.com,ZZ,B\n')
    report = _json(_run(runner, "import-creators", SLUG, path, "--json"))
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(4, "country")]


def test_reimporting_the_same_file_adds_nothing(runner, session, program):
    _ok(_run(runner, "import-creators", SLUG, CREATORS_SAMPLE))
    result = _ok(_run(runner, "import-creators", SLUG, CREATORS_SAMPLE, "--json"))
    report = _json(result)
    assert (report["imported"], report["duplicate"], report["invalid"]) == (0, 40, 0)
    assert {d["reason"] for d in report["duplicates"]} == {
        "already on this program's eligibility list"}
    assert sorted(d["line"] for d in report["duplicates"]) == list(range(2, 42))
    assert _count(session, Creator) == 40
    assert _count(session, Eligibility) == 40


def test_a_creator_known_from_another_program_is_reused(runner, session, factory, tmp_path):
    first = factory.program(slug="headspace-6m")
    second = factory.program(slug="calm-1y")
    _ok(_run(runner, "import-creators", "headspace-6m",
             _write(tmp_path, "a.csv", "handle,email,country\n@ayesha,ayesha@example.com,PK\n")))
    result = _ok(_run(runner, "import-creators", "calm-1y",
                      _write(tmp_path, "b.csv", "handle,email,country\n"
                                                "@ayesha_new,Ayesha@Example.com,GB\n")))
    assert result.stdout == "imported 1, duplicate 0, invalid 0\n"
    [creator] = _all(session, select(Creator))
    assert (creator.email, creator.handle, creator.country) == (
        "ayesha@example.com", "@ayesha", "PK")
    eligibility = _all(session, select(Eligibility.program_id, Eligibility.creator_id)
                       .order_by(Eligibility.program_id))
    assert eligibility == [(first.id, creator.id), (second.id, creator.id)]


@pytest.mark.parametrize("rows_before", [1, 3000])  # in the first 8 KiB, and past a write chunk
def test_import_creators_refuses_a_file_that_is_not_utf8(
        runner, session, program, tmp_path, rows_before):
    good = "".join(f"@c{i},c{i}@example.com,PK,C{i}\n" for i in range(rows_before))
    content = ("handle,email,country,name\n" + good).encode() + \
        "@jose,jose@example.com,ES,José\n".encode("latin-1") + b"@z,z@example.com,PK,Z\n"
    path = _write(tmp_path, "latin1.csv", content)
    result = _run(runner, "import-creators", SLUG, path, "--skip-invalid")
    bad_line = rows_before + 2
    _error(result, f"latin1.csv: line {bad_line}, file: the file is not UTF-8 text",
           "nothing was imported")
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0

    report = _json(_run(runner, "import-creators", SLUG, path, "--json"))
    assert report["errors"] == [
        {"line": bad_line, "field": "file", "reason": "the file is not UTF-8 text"}]


def test_import_creators_is_all_or_nothing_across_write_chunks(
        runner, session, program, tmp_path):
    rows = [f"@c{i},c{i}@example.com,PK" for i in range(2500)]
    rows[2398] = "@bad,bad@example.com,XX"  # line 2400, after two chunks were written
    path = _write(tmp_path, "big.csv", "handle,email,country\n" + "\n".join(rows) + "\n")
    result = _run(runner, "import-creators", SLUG, path)
    _error(result, "big.csv: line 2400, country")
    assert result.stdout == "imported 0, duplicate 0, invalid 1\n"
    assert _count(session, Creator) == 0
    assert _count(session, Eligibility) == 0

    result = _ok(_run(runner, "import-creators", SLUG, path, "--skip-invalid"))
    assert result.stdout == "imported 2499, duplicate 0, invalid 1\n"
    assert _count(session, Eligibility) == 2499


def test_import_creators_stores_formulas_and_markup_verbatim(runner, session, program, tmp_path):
    names = ['=HYPERLINK("http://x","y")', "<script>alert(1)</script>", "+1+1", "@SUM(A1)",
             "Zoë 李 🙂"]
    body = "".join(f'@n{i},n{i}@example.com,PK,"{n.replace(chr(34), chr(34) * 2)}"\n'
                   for i, n in enumerate(names))
    path = _write(tmp_path, "names.csv", "handle,email,country,name\n" + body)
    _ok(_run(runner, "import-creators", SLUG, path))
    assert _all(session, select(Creator.name).order_by(Creator.id)) == names

    # And the sample rows with them import under --skip-invalid.
    _ok(_run(runner, "import-creators", SLUG, CREATORS_WITH_ERRORS, "--skip-invalid"))
    stored = dict(_all(session, select(Creator.email, Creator.name)))
    assert stored["formula@example.com"] == '=HYPERLINK("http://x","y")'
    assert stored["script@example.com"] == "<script>alert(1)</script>"


def test_import_creators_unknown_program(runner, session):
    result = _run(runner, "import-creators", "no-such-program", CREATORS_SAMPLE)
    _error(result, "Error: no program with slug 'no-such-program'")
    assert result.stdout == ""
    assert _count(session, Creator) == 0


def test_import_creators_missing_file(runner, program, tmp_path):
    _error(_run(runner, "import-creators", SLUG, tmp_path / "nope.csv"), "does not exist",
           exit_code=2)


# --------------------------------------------------------------------------- import-codes


def test_import_codes_csv_sample(runner, session, program):
    result = _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--expires", "2030-12-31",
                      "--batch-name", "January batch"))
    assert result.stdout == "imported 60, duplicate 0, invalid 0\n"
    [batch] = _all(session, select(CodeBatch))
    assert batch.program_id == program.id
    assert batch.name == "January batch"
    assert batch.expires_on == date(2030, 12, 31)
    assert batch.code_count == 60
    assert batch.source_filename == "codes-sample.csv"
    codes = _all(session, select(Code).order_by(Code.id))
    assert [c.value for c in codes] == _data_lines(CODES_SAMPLE)[1:]  # no "code", no CR
    assert {(c.batch_id, c.program_id, c.status) for c in codes} == {
        (batch.id, program.id, "available")}
    assert _audit_actions(session)[-1] == "codes.imported"


def test_import_codes_default_batch_name(runner, session, program):
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE))
    [batch] = _all(session, select(CodeBatch))
    assert batch.name.startswith("codes-sample.csv ") and batch.expires_on is None


def test_import_codes_plain_file_with_errors_imports_nothing(runner, session, program):
    result = _run(runner, "import-codes", SLUG, CODES_WITH_ERRORS)
    name = CODES_WITH_ERRORS.name
    _error(result,
           f"{name}: line 5, code: longer than 64 characters",
           f"{name}: line 13, code: does not match 4 to 64 ASCII letters, digits and dashes",
           f"{name}: line 16, code: does not match",
           f"{name}: line 2, code: duplicate, skipped (same code as line 1)",
           "nothing was imported")
    assert result.stdout == "imported 0, duplicate 1, invalid 3\n"
    reported = [line for line in result.stderr.splitlines() if ": line " in line]
    assert len(reported) == 4 and "line 24" not in result.stderr  # the blank line is skipped
    assert _count(session, Code) == 0
    assert _count(session, CodeBatch) == 0


def test_import_codes_plain_file_with_errors_skip_invalid(runner, session, program):
    result = _ok(_run(runner, "import-codes", SLUG, CODES_WITH_ERRORS, "--skip-invalid"))
    assert result.stdout == "imported 30, duplicate 1, invalid 3\n"
    lines = _data_lines(CODES_WITH_ERRORS)
    expected = list(dict.fromkeys(v for i, v in enumerate(lines, start=1)
                                  if v and i not in {5, 13, 16}))
    assert len(expected) == 30
    assert _code_values(session) == expected
    [batch] = _all(session, select(CodeBatch))
    assert batch.code_count == 30


def test_import_codes_json_report(runner, session, program):
    result = _run(runner, "import-codes", SLUG, CODES_WITH_ERRORS, "--json")
    assert result.exit_code == 1
    report = _json(result)
    assert {"imported", "duplicate", "invalid", "errors"} <= report.keys()
    assert (report["imported"], report["duplicate"], report["invalid"]) == (0, 1, 3)
    assert report["committed"] is False and "batch_id" not in report
    assert [(e["line"], e["field"]) for e in report["errors"]] == [
        (5, "code"), (13, "code"), (16, "code")]
    assert all(set(e) == {"line", "field", "reason"} for e in report["errors"])
    assert report["duplicates"] == [{"line": 2, "field": "code", "reason": "same code as line 1"}]

    good = _json(_ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--json")))
    assert (good["imported"], good["duplicate"], good["invalid"], good["errors"]) == (
        60, 0, 0, [])
    [batch_id] = _all(session, select(CodeBatch.id))
    assert good["batch_id"] == batch_id


def test_codes_are_stored_as_given_but_stripped(runner, session, program, tmp_path):
    plain = _write(tmp_path, "plain.txt", "  HS-abc-123  \n\tHS-Mixed-Case\t\r\nhs-lower-1")
    _ok(_run(runner, "import-codes", SLUG, plain))
    assert _code_values(session) == ["HS-abc-123", "HS-Mixed-Case", "hs-lower-1"]

    quoted = _write(tmp_path, "quoted.csv", 'code\r\n"  HS-quoted-1  "\r\n  HS-csv-2 \r\n')
    _ok(_run(runner, "import-codes", SLUG, quoted))
    assert _code_values(session)[3:] == ["HS-quoted-1", "HS-csv-2"]


def test_a_code_already_in_stock_is_a_duplicate(runner, session, program, tmp_path):
    _ok(_run(runner, "import-codes", SLUG,
             _write(tmp_path, "first.txt", "HS-AAAA-0001\nHS-AAAA-0002\n")))
    result = _ok(_run(runner, "import-codes", SLUG,
                      _write(tmp_path, "second.txt", "HS-AAAA-0003\nHS-AAAA-0002\n"), "--json"))
    report = _json(result)
    assert (report["imported"], report["duplicate"], report["invalid"]) == (1, 1, 0)
    assert report["duplicates"] == [
        {"line": 2, "field": "code", "reason": "already in this program's stock"}]
    assert sorted(_code_values(session)) == ["HS-AAAA-0001", "HS-AAAA-0002", "HS-AAAA-0003"]
    counts = _all(session, select(CodeBatch.code_count).order_by(CodeBatch.id))
    assert counts == [2, 1]

    text = _ok(_run(runner, "import-codes", SLUG, tmp_path / "second.txt"))
    assert text.stdout == "imported 0, duplicate 2, invalid 0\n"
    assert "second.txt: line 1, code: duplicate, skipped (already in this program's stock)" \
        in text.stderr
    assert _count(session, CodeBatch) == 2  # no empty batch left behind
    assert _count(session, Code) == 3


def test_codes_are_case_sensitive(runner, session, program, tmp_path):
    _ok(_run(runner, "import-codes", SLUG, _write(tmp_path, "c.txt", "HS-abcd\nHS-ABCD\n")))
    assert _code_values(session) == ["HS-abcd", "HS-ABCD"]


def test_the_same_code_in_another_program_is_fine(runner, session, factory, tmp_path):
    first = factory.program(slug="headspace-6m")
    second = factory.program(slug="calm-1y")
    path = _write(tmp_path, "codes.txt", "SHARED-0001\n")
    _ok(_run(runner, "import-codes", "headspace-6m", path))
    result = _ok(_run(runner, "import-codes", "calm-1y", path))
    assert result.stdout == "imported 1, duplicate 0, invalid 0\n"
    assert _code_values(session, first.id) == ["SHARED-0001"]
    assert _code_values(session, second.id) == ["SHARED-0001"]


def test_import_codes_refuses_an_expiry_in_the_past(runner, session, program):
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    result = _run(runner, "import-codes", SLUG, CODES_SAMPLE, "--expires", yesterday)
    _error(result, f"Error: expiry date {yesterday} is in the past")
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0

    _error(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--expires", "31/12/2030"),
           "--expires", exit_code=2)
    assert _count(session, Code) == 0


def test_import_codes_accepts_an_expiry_of_today(runner, session, program):
    today = datetime.now(UTC).date()
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--expires", today.isoformat()))
    assert _all(session, select(CodeBatch.expires_on)) == [today]


def test_a_program_code_format_is_enforced(runner, session, tmp_path):
    _ok(_run(runner, "create-program", "--slug", "calm-1y", "--name", "Calm", "--quota", 10,
             "--code-format", "[A-Z]{4}-[0-9]{4}"))
    path = _write(tmp_path, "codes.txt", "ABCD-1234\nabcd-1234\nABCD-12345\nXABCD-1234\n")
    result = _run(runner, "import-codes", "calm-1y", path)
    fmt = "does not match the program's code format [A-Z]{4}-[0-9]{4}"
    _error(result, f"line 2, code: {fmt}", f"line 3, code: {fmt}", f"line 4, code: {fmt}")
    assert "line 1," not in result.stderr
    assert _count(session, Code) == 0

    _ok(_run(runner, "import-codes", "calm-1y", path, "--skip-invalid"))
    assert _code_values(session) == ["ABCD-1234"]


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n  \n\t\n"], ids=["0-bytes", "newline",
                                                                       "blank-lines"])
def test_import_codes_empty_file(runner, session, program, tmp_path, content):
    path = _write(tmp_path, "empty.txt", content)
    result = _run(runner, "import-codes", SLUG, path)
    _error(result, "empty.txt: line 1, file: the file is empty", "nothing was imported")
    assert "--skip-invalid" not in result.stderr
    assert _count(session, CodeBatch) == 0
    report = _json(_run(runner, "import-codes", SLUG, path, "--json", "--skip-invalid"))
    assert report["committed"] is False
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(1, "file")]


def test_import_codes_header_only_csv(runner, session, program, tmp_path):
    path = _write(tmp_path, "header.csv", "code\r\n")
    assert _ok(_run(runner, "import-codes", SLUG, path)).stdout == \
        "imported 0, duplicate 0, invalid 0\n"
    assert _count(session, CodeBatch) == 0


@pytest.mark.parametrize("content", [
    'code,note\nHS-AAAA-0001,first\nHS-AAAA-0002,"second, with a comma"\n',
    'note,Code\nfirst,HS-AAAA-0001\n"x, y",HS-AAAA-0002\n',
    'batch, CODE ,note\nb1,HS-AAAA-0001,n\nb1, HS-AAAA-0002 ,n\n',
], ids=["code-first", "code-second", "code-middle"])
def test_import_codes_takes_the_code_column(runner, session, program, tmp_path, content):
    _ok(_run(runner, "import-codes", SLUG, _write(tmp_path, "codes.csv", content)))
    assert _code_values(session) == ["HS-AAAA-0001", "HS-AAAA-0002"]


def test_import_codes_csv_row_with_wrong_number_of_fields(runner, session, program, tmp_path):
    path = _write(tmp_path, "codes.csv", "code,note\nHS-AAAA-0001,a\nHS-AAAA-0002\n")
    report = _json(_run(runner, "import-codes", SLUG, path, "--json"))
    assert report["errors"] == [{"line": 3, "field": "row", "reason": "expected 2 fields, found 1"}]
    assert _count(session, Code) == 0


@pytest.mark.parametrize(("content", "line"), [
    ("\n\nHS-AAAA-0001\nbad code\n", 4),
    ("\r\n\r\ncode\r\nHS-AAAA-0001\r\nbad code\r\n", 5),
])
def test_import_codes_leading_blank_lines_keep_line_numbers(
        runner, program, tmp_path, content, line):
    path = _write(tmp_path, "codes.txt", content)
    report = _json(_run(runner, "import-codes", SLUG, path, "--json"))
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(line, "code")]


@pytest.mark.parametrize("codes_before", [1, 3000])  # in the first 8 KiB, and past a write chunk
def test_import_codes_refuses_a_file_that_is_not_utf8(
        runner, session, program, tmp_path, codes_before):
    good = "".join(f"HS-GOOD-{i:05d}\n" for i in range(codes_before))
    path = _write(tmp_path, "latin1.txt",
                  good.encode() + "HS-ÇØDÉ-0001\n".encode("latin-1") + b"HS-LAST-0001\n")
    result = _run(runner, "import-codes", SLUG, path, "--skip-invalid")
    _error(result, f"latin1.txt: line {codes_before + 1}, file: the file is not UTF-8 text",
           "nothing was imported")
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0


def test_import_codes_utf8_with_bom_and_crlf(runner, session, program, tmp_path):
    path = _write(tmp_path, "bom.csv", b"\xef\xbb\xbfcode\r\nHS-AAAA-0001\r\n")
    _ok(_run(runner, "import-codes", SLUG, path))
    assert _code_values(session) == ["HS-AAAA-0001"]


def test_import_codes_is_all_or_nothing_across_write_chunks(runner, session, program, tmp_path):
    lines = [f"HS-BULK-{i:05d}" for i in range(2500)]
    lines[2399] = "not a code"  # line 2400, after two chunks were written
    path = _write(tmp_path, "codes.txt", "\n".join(lines) + "\n")
    result = _run(runner, "import-codes", SLUG, path)
    _error(result, "codes.txt: line 2400, code: does not match")
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0


def test_import_codes_moves_the_stock_counter_by_the_codes_inserted(
        runner, session, program, tmp_path):
    _ok(_run(runner, "import-codes", SLUG,
             _write(tmp_path, "first.txt", "HS-AAAA-0001\nHS-AAAA-0002\n")))
    assert stock(session, program.id) == (2, 2)
    # One new code; one already in stock and one repeated in the file are not counted.
    _ok(_run(runner, "import-codes", SLUG,
             _write(tmp_path, "second.txt", "HS-AAAA-0003\nHS-AAAA-0002\nHS-AAAA-0003\n")))
    assert stock(session, program.id) == (3, 3)
    # All or nothing: rejected after two chunks were written, the counter rolls back with them.
    lines = [f"HS-BULK-{i:05d}" for i in range(2500)]
    lines[2399] = "not a code"
    _error(_run(runner, "import-codes", SLUG, _write(tmp_path, "bad.txt", "\n".join(lines))))
    assert stock(session, program.id) == (3, 3)
    # A file rejected as a whole (not UTF-8) after a written chunk: the same.
    _error(_run(runner, "import-codes", SLUG, _write(
        tmp_path, "latin1.txt", "\n".join(lines[:1500]).encode() + b"\nHS-\xc7-0001\n"),
        "--skip-invalid"))
    assert stock(session, program.id) == (3, 3)
    _ok(_run(runner, "import-codes", SLUG, CODES_WITH_ERRORS, "--skip-invalid"))
    assert stock(session, program.id) == (33, 33)


def test_import_codes_batch_name_too_long(runner, session, program):
    result = _run(runner, "import-codes", SLUG, CODES_SAMPLE, "--batch-name", "b" * 201)
    _error(result, "Error: batch name is longer than 200 characters")
    assert _count(session, CodeBatch) == 0
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--batch-name", "b" * 200))
    assert _all(session, select(CodeBatch.name)) == ["b" * 200]


def test_import_codes_default_batch_name_fits_for_a_long_file_name(
        runner, session, program, tmp_path):
    path = _write(tmp_path, "c" * 240 + ".txt", "HS-AAAA-0001\n")
    _ok(_run(runner, "import-codes", SLUG, path))
    [batch] = _all(session, select(CodeBatch))
    assert len(batch.name) <= 200 and batch.name.startswith("c" * 100)
    assert batch.source_filename == path.name


def test_import_codes_unknown_program(runner, session):
    _error(_run(runner, "import-codes", "no-such-program", CODES_SAMPLE),
           "Error: no program with slug 'no-such-program'")
    assert _count(session, Code) == 0


def test_import_50000_codes(runner, session, program, tmp_path):
    path = tmp_path / "big.txt"
    with path.open("w") as out:
        for i in range(50_000):
            out.write(f"BULK-{i:06d}-{i * 7919 % 100_000:05d}\n")
    result = _ok(_run(runner, "import-codes", SLUG, path, "--json"))
    assert _json(result)["imported"] == 50_000
    assert _count(session, Code, Code.program_id == program.id) == 50_000
    assert _all(session, select(CodeBatch.code_count)) == [50_000]
    # Speed is for the benchmarks (bench/), not asserted here.


# --------------------------------------------------------------------------- quota


def test_quota_after_importing_codes(runner, program):
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE))
    summary = _json(_ok(_run(runner, "quota", SLUG, "--json")))
    assert summary == {
        "program": SLUG, "name": "Headspace · 6 months", "quota": 100, "allocated": 0,
        "remaining": 100, "in_stock": 60,
        "claims": {"pending": 0, "allocated": 0, "waitlisted": 0, "refused": 0},
        "countries": {},
    }
    text = _ok(_run(runner, "quota", SLUG)).stdout
    assert text.startswith(f"Headspace · 6 months ({SLUG})\n")
    assert "  in stock          60\n" in text and "  remaining        100\n" in text


def test_quota_counts_claims_by_state(app, runner, session, factory, tmp_path):
    program = factory.program(slug=SLUG, quota=2)
    other = factory.program(slug="calm-1y")
    factory.creators(program, ["a@example.com", "b@example.com", "c@example.com",
                               "d@example.com"])
    factory.creators(other, ["outsider@example.com"])
    _ok(_run(runner, "import-codes", SLUG, _write(tmp_path, "codes.txt", "".join(
        f"HS-QUOTA-000{i}\n" for i in range(5)))))
    with app.app_context():
        db = get_session()
        ids = dict(db.exec(select(Creator.email, Creator.id)).all())
        for email in ("a@example.com", "b@example.com", "c@example.com",
                      "outsider@example.com"):
            claims.request_claim(db, program=program, creator_id=ids[email])
        # Not decided yet:
        db.add(Claim(program_id=program.id, creator_id=ids["d@example.com"], country="PK"))
        db.commit()
    states = _all(session, select(Claim.state).order_by(Claim.id))
    assert states == ["allocated", "allocated", "waitlisted", "refused", "pending"]

    summary = _json(_ok(_run(runner, "quota", SLUG, "--json")))
    assert {k: summary[k] for k in ("quota", "allocated", "remaining", "in_stock")} == {
        "quota": 2, "allocated": 2, "remaining": 0, "in_stock": 3}
    assert summary["claims"] == {"pending": 1, "allocated": 2, "waitlisted": 1, "refused": 1}
    assert _json(_ok(_run(runner, "quota", "calm-1y", "--json")))["claims"] == {
        "pending": 0, "allocated": 0, "waitlisted": 0, "refused": 0}


def test_quota_json_matches_a_direct_count(app, runner, session, factory, tmp_path):
    program = factory.program(slug=SLUG, quota=3)
    other = factory.program(slug="calm-1y", quota=5)
    factory.creators(program, [f"{c}@example.com" for c in "abcde"])
    factory.creators(other, ["outsider@example.com"])
    factory.codes(program, [f"HS-DIRECT-{i:04d}" for i in range(7)])
    factory.codes(other, ["CALM-0001", "CALM-0002"])
    with app.app_context():
        db = get_session()
        ids = dict(db.exec(select(Creator.email, Creator.id)).all())
        for email in ("a@example.com", "b@example.com", "c@example.com", "d@example.com",
                      "outsider@example.com"):
            claims.request_claim(db, program=program, creator_id=ids[email])
        claims.request_claim(db, program=other, creator_id=ids["outsider@example.com"])
        db.add(Claim(program_id=program.id, creator_id=ids["e@example.com"], country="PK"))
        db.commit()
        codes.void_code(db, program_id=program.id, value="HS-DIRECT-0006", reason="x",
                        actor="test")
        codes.reissue_claim(db, program_id=program.id, creator_email="a@example.com",
                            reason="x", actor="test")

    summary = _json(_ok(_run(runner, "quota", SLUG, "--json")))
    by_state = dict(_all(session, select(Claim.state, sa.func.count())
                         .where(Claim.program_id == program.id).group_by(Claim.state)))
    assert summary["claims"] == {state: by_state.get(state, 0)
                                 for state in ("pending", "allocated", "waitlisted", "refused")}
    assert summary["claims"] == {"pending": 1, "allocated": 3, "waitlisted": 1, "refused": 1}
    in_stock = _count(session, Code, Code.program_id == program.id, Code.status == "available")
    assert (summary["allocated"], summary["remaining"], summary["in_stock"]) == (3, 0, in_stock)
    assert in_stock == 2  # 7 imported, 3 given out, 1 voided, 1 given in a reissue
    assert _json(_ok(_run(runner, "quota", "calm-1y", "--json")))["in_stock"] == 1


@pytest.mark.parametrize("options", [[], ["--json"]])
def test_quota_unknown_program(runner, options):
    result = _run(runner, "quota", "no-such-program", *options)
    _error(result, "Error: no program with slug 'no-such-program'")
    assert result.stdout == ""


# --------------------------------------------------------------------------- seed-demo


def _seeded(session):
    return (_count(session, Program), _count(session, Creator), _count(session, Eligibility),
            _count(session, Code), _count(session, CodeBatch), _count(session, Manager))


def test_seed_demo_creates_the_demo_once(runner, session):
    first = _ok(_run(runner, "seed-demo"))
    assert "demo program demo-6m created: quota 25, 25 codes, 30 creators" in first.stdout
    [password_line] = [line for line in first.stdout.splitlines() if "password" in line]
    password = password_line.split("password ", 1)[1].removesuffix(" (shown once)")
    for text in ("Sign in as a creator:", "http://localhost/login", "creator01@example.com",
                 "press Claim"):
        assert text in first.stdout
    assert _seeded(session) == (1, 30, 30, 25, 1, 1)
    [program] = _all(session, select(Program))
    assert program.slug == "demo-6m" and program.window_state(datetime.now(UTC)) == "open"
    [manager] = _all(session, select(Manager))
    assert manager.email == "manager@example.com"
    assert check_password_hash(manager.password_hash, password)

    second = _ok(_run(runner, "seed-demo"))
    assert "demo program demo-6m already exists" in second.stdout
    assert "created" not in second.stdout and "password" not in second.stdout
    assert "Sign in as a creator:" in second.stdout
    assert _seeded(session) == (1, 30, 30, 25, 1, 1)


def test_seed_demo_keeps_an_existing_demo_manager(runner, session):
    _ok(_run(runner, "create-manager", "manager@example.com", "--password", PASSWORD))
    result = _ok(_run(runner, "seed-demo"))
    assert "demo program demo-6m created" in result.stdout
    assert "demo manager manager@example.com already exists" in result.stdout
    assert _seeded(session) == (1, 30, 30, 25, 1, 1)
    [manager] = _all(session, select(Manager))
    assert check_password_hash(manager.password_hash, PASSWORD)


# --------------------------------------------------------------------------- init-db


def test_init_db_on_a_migrated_database_is_idempotent(runner, session, program):
    for _ in range(2):
        result = _ok(_run(runner, "init-db"))
        assert result.stdout == "database is at the newest schema\n"
    assert _all(session, select(Program.slug)) == [SLUG]  # data untouched
    versions = _fresh(session).execute(sa.text("SELECT version_num FROM alembic_version"))
    head = ScriptDirectory.from_config(alembic_config("unused")).get_current_head()
    assert versions.scalars().all() == [head]


@pytest.mark.parametrize(("option", "value"), [
    ("--name", "N" * 201),
    ("--redeem-url", "https://app.example/" + "r" * 490),
    ("--code-format", "[A-Z]" * 101),
])
def test_create_program_refuses_over_long_fields(runner, session, option, value):
    args = ["create-program", "--slug", "long-6m", "--name", "Long", "--quota", "5",
            option, value]
    result = runner.invoke(args=args)
    assert result.exit_code == 1
    assert "longer than" in result.output
    session.rollback()
    assert session.exec(select(Program)).all() == []


def test_rejected_file_leaves_nothing_in_the_session(app, session, program, tmp_path):
    from io import BytesIO

    from wellness_perks.db import get_session
    from wellness_perks.services import imports

    good_then_bad = b"code\n" + b"".join(b"GOOD-%04d\n" % i for i in range(1500)) + b"\xff\xfe\n"
    with app.app_context():
        s = get_session()
        with pytest.raises(imports.FileRejected):
            imports.import_codes(s, program=s.get(Program, program.id),
                                 stream=BytesIO(good_then_bad), actor="test")
        s.commit()  # a careless caller: must not save half an import
    session.rollback()
    assert session.exec(select(Code)).all() == []
    assert session.exec(select(CodeBatch)).all() == []
