"""The ``wellness-perks`` command line (``cli.py``), run through Flask's CLI runner against the
real database: what each command prints (its report, its error message, its ``--json``
document), its exit code, and that it did (or did not) change the database. The rules behind
the commands are tested against the services, in ``tests/unit/services/``."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet
from sqlmodel import select
from werkzeug.security import check_password_hash

from tests.conftest import enter_code, sign_in_manager, totp_code
from tests.helpers import code_value
from tests.unit.services.scenarios import lost_claims
from tests.unit.services.test_verify import CASES as VERIFY_CASES
from tests.unit.services.test_verify import constraints_lifted, corrupt, healthy_program
from wellness_perks.migrate import alembic_config
from wellness_perks.models import (
    DEFAULT_CODE_PATTERN,
    AuditEvent,
    Claim,
    Code,
    CodeBatch,
    CountryQuota,
    Creator,
    Eligibility,
    Manager,
    OutboundEmail,
    Program,
)
from wellness_perks.services.code_cipher import CodeCipher
from wellness_perks.services.verify import Violation

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

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


def _rows(session, statement):
    """The rows as they are now, whatever the session loaded before."""
    return _fresh(session).exec(statement.execution_options(populate_existing=True)).all()


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


def test_create_program_in_a_time_zone_with_a_support_contact(runner, session):
    _ok(_run(runner, "create-program", "--slug", SLUG, "--name", "Headspace", "--quota", 5,
             "--time-zone", "Asia/Karachi", "--opens", "2026-12-01T09:00",
             "--closes", "2027-01-31T18:00Z", "--support-email", "Help@Headspace.example"))
    [program] = _all(session, select(Program))
    assert program.opens_at == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)  # 09:00 in Karachi
    assert program.closes_at == datetime(2027, 1, 31, 18, 0, tzinfo=UTC)  # its own zone
    assert (program.time_zone, program.support_email) == ("Asia/Karachi",
                                                           "help@headspace.example")


def test_create_program_defaults(runner, session):
    _ok(_run(runner, "create-program", "--slug", "calm-1y", "--name", "Calm", "--quota", 0))
    [program] = _all(session, select(Program))
    assert (program.quota, program.perk_months) == (0, 6)
    assert program.opens_at is None and program.closes_at is None and program.redeem_url is None
    assert program.code_pattern == DEFAULT_CODE_PATTERN


@pytest.mark.parametrize(("options", "message"), [
    # A rule of the service (all of them: services/test_programs.py), in the command's words:
    (["--slug", "Headspace 6m"], "slug must be 2 to 64 lower-case letters"),
    (["--name", "Headspace\r\nBcc: attacker@evil.example"],
     "name must be one line: it contains a line break"),
    # Times as the command reads them: with their zones, the same instant ...
    (["--opens", "2026-12-01T10:00+05:00", "--closes", "2026-12-01T05:00Z"],
     "the claim window closes before it opens"),
    # ... and what it can't read.
    (["--opens", "next tuesday"], "--opens 'next tuesday' is not an ISO 8601 date or time"),
    (["--time-zone", "Karachi", "--opens", "2026-12-01T09:00"],
     "'Karachi' is not an IANA time zone"),
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


def _create(runner, *extra):
    return _run(runner, "create-program", "--slug", SLUG, "--name", "Headspace", "--quota",
                "10", *extra)


def test_create_program_with_country_quotas(runner, session):
    result = _create(runner, "--country-quota", "PK=2", "--country-quota", "in=3")
    assert result.exit_code == 0, result.output
    assert "IN 3" in result.output and "PK 2" in result.output
    rows = _rows(session, select(CountryQuota.country, CountryQuota.quota)
                  .order_by(CountryQuota.country))
    assert rows == [("IN", 3), ("PK", 2)]
    summary = json.loads(_run(runner, "quota", SLUG, "--json").output)
    assert summary["countries"] == {"IN": {"quota": 3, "allocated": 0, "remaining": 3},
                                    "PK": {"quota": 2, "allocated": 0, "remaining": 2}}
    assert "country quotas" in _run(runner, "quota", SLUG).output


@pytest.mark.parametrize(("option", "message"), [
    ("XX=5", "'XX' is not an ISO 3166-1 alpha-2 country code"),
    ("PK:5", "must look like PK=2000"),
    ("PK=-1", "must look like PK=2000"),
    ("PK=", "must look like PK=2000"),
])
def test_create_program_refuses_bad_country_quota(runner, session, option, message):
    result = _create(runner, "--country-quota", option)
    assert result.exit_code == 1
    assert message in result.output
    assert _rows(session, select(Program)) == []


# --------------------------------------------------------------------------- create-manager


def test_create_manager_prints_the_address_not_the_password(runner, session):
    result = _ok(_run(runner, "create-manager", "Boss@Example.COM", "--password", PASSWORD))
    assert result.stdout == "manager boss@example.com created\n"
    assert PASSWORD not in result.output
    [manager] = _all(session, select(Manager))
    assert manager.email == "boss@example.com" and manager.role == "manager"
    assert check_password_hash(manager.password_hash, PASSWORD)


@pytest.mark.parametrize("role", ["viewer", "manager", "admin"])
def test_create_manager_gives_the_role_asked_for(runner, session, role):
    result = _ok(_run(runner, "create-manager", "boss@example.com", "--role", role,
                      "--password", PASSWORD))
    assert result.stdout == f"{role} boss@example.com created\n"
    [manager] = _all(session, select(Manager))
    assert manager.role == role


def test_create_manager_refuses_a_role_it_does_not_know(runner, session):
    result = _run(runner, "create-manager", "boss@example.com", "--role", "owner",
                  "--password", PASSWORD)
    assert result.exit_code == 2 and "'owner' is not one of" in result.output
    assert _count(session, Manager) == 0


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
    ("not-an-email", PASSWORD, "not a valid email address"),
])
def test_create_manager_refuses_bad_input(runner, session, email, password, message):
    result = _run(runner, "create-manager", email, "--password", password)
    _error(result, f"Error: {message}")
    assert _count(session, Manager) == 0
    assert _count(session, AuditEvent) == 0


# --------------------------------------------------------------------------- set-password

NEW_PASSWORD = "a new and longer passphrase"


@pytest.fixture
def boss(runner, session):
    _ok(_run(runner, "create-manager", "boss@example.com", "--password", PASSWORD))
    [manager] = _all(session, select(Manager))
    assert manager.session_version == 0
    return manager


def _boss_as_it_is(session) -> tuple[str, int, list[str]]:
    [manager] = _rows(session, select(Manager))
    return manager.password_hash, manager.session_version, _audit_actions(session)


def test_set_password_prompts_twice_hidden_and_ends_the_sessions(runner, session, boss):
    result = runner.invoke(args=["set-password", "Boss@Example.com"],
                           input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    _ok(result)
    assert NEW_PASSWORD not in result.output  # hidden input: the prompts echo nothing
    assert "password of boss@example.com set; their sessions have ended" in result.stdout
    [manager] = _rows(session, select(Manager))
    assert check_password_hash(manager.password_hash, NEW_PASSWORD)
    assert manager.session_version == 1  # every session begun before ends
    assert _audit_actions(session)[-1] == "manager.password_set"


def test_set_password_signs_the_manager_out_of_the_console(runner, manager_client):
    browser = manager_client("manager", address="lead@example.com")
    assert browser.get("/manage/").status_code == 200
    _ok(runner.invoke(args=["set-password", "lead@example.com", "--password-stdin"],
                      input=f"{NEW_PASSWORD}\n"))
    response = browser.get("/manage/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/manage/login")


def test_set_password_reads_one_line_from_stdin(runner, session, boss):
    _ok(runner.invoke(args=["set-password", "boss@example.com", "--password-stdin"],
                      input=f"{NEW_PASSWORD}\n"))
    [manager] = _rows(session, select(Manager))
    assert check_password_hash(manager.password_hash, NEW_PASSWORD)


def test_set_password_refuses_mismatched_prompted_passwords(runner, session, boss):
    before = _boss_as_it_is(session)
    result = runner.invoke(args=["set-password", "boss@example.com"],
                           input=f"{NEW_PASSWORD}\nsomething else entirely\n")
    assert result.exit_code != 0 and "do not match" in result.output
    assert _boss_as_it_is(session) == before


@pytest.mark.parametrize(("email", "password", "message"), [
    ("boss@example.com", "elevenchars", "password must be at least 12 characters"),
    ("boss@example.com", "", "password must be at least 12 characters"),
    ("not-an-email", NEW_PASSWORD, "not a valid email address"),
    ("nobody@example.com", NEW_PASSWORD, "no manager with email nobody@example.com"),
])
def test_set_password_refuses_bad_input_and_changes_nothing(runner, session, boss, email,
                                                            password, message):
    before = _boss_as_it_is(session)
    result = runner.invoke(args=["set-password", email, "--password-stdin"],
                           input=f"{password}\n")
    _error(result, f"Error: {message}")
    assert _boss_as_it_is(session) == before


# --------------------------------------------------------------------------- import-creators


def test_import_creators_sample(runner, session, program):
    result = _ok(_run(runner, "import-creators", SLUG, CREATORS_SAMPLE))
    assert result.stdout == "imported 40, duplicate 0, invalid 0\n"
    assert result.stderr == ""
    assert _count(session, Creator) == 40
    assert _count(session, Eligibility, Eligibility.program_id == program.id) == 40


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
    assert len(_emails(session)) == 22
    assert _count(session, Eligibility, Eligibility.program_id == program.id) == 22


def test_import_creators_json_report(runner, program):
    result = _run(runner, "import-creators", SLUG, CREATORS_WITH_ERRORS, "--json")
    assert result.exit_code == 1
    report = _json(result)
    assert {"imported", "duplicate", "invalid", "errors"} <= report.keys()
    assert (report["imported"], report["duplicate"], report["invalid"]) == (0, 1, 3)
    assert report["committed"] is False
    assert [(e["line"], e["field"]) for e in report["errors"]] == [
        (6, "country"), (8, "email"), (20, "handle")]
    assert all(set(e) == {"line", "field", "code", "params", "reason"}
               and isinstance(e["line"], int) and e["reason"] for e in report["errors"])
    assert [e["code"] for e in report["errors"]] == [
        "country_invalid", "email_invalid", "handle_empty"]
    assert report["duplicates"] == [
        {"line": 21, "field": "email", "code": "duplicate_in_file", "params": {"first_line": 2},
         "reason": "same email as line 2"}]
    assert (report["errors_not_listed"], report["duplicates_not_listed"]) == (0, 0)

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
    assert result.stderr == ""
    [batch] = _all(session, select(CodeBatch))
    assert batch.program_id == program.id
    assert batch.name == "January batch"
    assert batch.expires_on == date(2030, 12, 31)
    assert batch.code_count == 60
    assert batch.source_filename == "codes-sample.csv"
    assert _code_values(session) == _data_lines(CODES_SAMPLE)[1:]


def test_import_codes_plain_file_with_errors_imports_nothing(runner, session, program):
    result = _run(runner, "import-codes", SLUG, CODES_WITH_ERRORS, "--no-expiry")
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
    result = _ok(_run(runner, "import-codes", SLUG, CODES_WITH_ERRORS, "--no-expiry",
                      "--skip-invalid"))
    assert result.stdout == "imported 30, duplicate 1, invalid 3\n"
    assert "line 5, code" in result.stderr and "line 2, code: duplicate" in result.stderr
    assert "nothing was imported" not in result.stderr
    assert _count(session, Code) == 30
    assert _all(session, select(CodeBatch.code_count)) == [30]


def test_import_codes_json_report(runner, session, program):
    result = _run(runner, "import-codes", SLUG, CODES_WITH_ERRORS, "--no-expiry", "--json")
    assert result.exit_code == 1
    report = _json(result)
    assert {"imported", "duplicate", "invalid", "errors"} <= report.keys()
    assert (report["imported"], report["duplicate"], report["invalid"]) == (0, 1, 3)
    assert report["committed"] is False and "batch_id" not in report
    assert [(e["line"], e["field"]) for e in report["errors"]] == [
        (5, "code"), (13, "code"), (16, "code")]
    assert all(set(e) == {"line", "field", "code", "params", "reason"}
               for e in report["errors"])
    assert [e["code"] for e in report["errors"]] == ["too_long", "code_format", "code_format"]
    assert report["errors"][0]["params"] == {"limit": 64}
    assert report["duplicates"] == [{"line": 2, "field": "code", "code": "duplicate_in_file",
                                     "params": {"first_line": 1},
                                     "reason": "same code as line 1"}]

    good = _json(_ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--no-expiry", "--json")))
    assert (good["imported"], good["duplicate"], good["invalid"], good["errors"]) == (
        60, 0, 0, [])
    [batch_id] = _all(session, select(CodeBatch.id))
    assert good["batch_id"] == batch_id


def test_import_codes_refuses_an_expiry_in_the_past(runner, session, program):
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    result = _run(runner, "import-codes", SLUG, CODES_SAMPLE, "--expires", yesterday)
    _error(result, f"Error: expiry date {yesterday} is in the past")
    assert _count(session, Code) == 0 and _count(session, CodeBatch) == 0

    _error(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--expires", "31/12/2030"),
           "--expires", exit_code=2)
    assert _count(session, Code) == 0


def test_import_codes_empty_file(runner, session, program, tmp_path):
    path = _write(tmp_path, "empty.txt", b"")
    result = _run(runner, "import-codes", SLUG, path, "--no-expiry")
    _error(result, "empty.txt: line 1, file: the file is empty", "nothing was imported")
    assert "--skip-invalid" not in result.stderr
    assert _count(session, CodeBatch) == 0
    report = _json(_run(runner, "import-codes", SLUG, path, "--no-expiry", "--json",
                        "--skip-invalid"))
    assert report["committed"] is False
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(1, "file")]


def test_import_codes_unknown_program(runner, session):
    _error(_run(runner, "import-codes", "no-such-program", CODES_SAMPLE, "--no-expiry"),
           "Error: no program with slug 'no-such-program'")
    assert _count(session, Code) == 0


# --------------------------------------------------------------------------- quota


def test_quota_after_importing_codes(runner, program):
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--no-expiry"))
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


@pytest.mark.parametrize("options", [[], ["--json"]])
def test_quota_unknown_program(runner, options):
    result = _run(runner, "quota", "no-such-program", *options)
    _error(result, "Error: no program with slug 'no-such-program'")
    assert result.stdout == ""


# --------------------------------------------------------------------------- pause, resume


def test_pause_and_resume_claiming(runner, session, program):
    result = _ok(_run(runner, "pause", SLUG))
    assert "claiming of headspace-6m is paused" in result.output
    assert _rows(session, select(Program.claims_paused_at))[0] is not None
    result = _ok(_run(runner, "resume", SLUG))
    assert "claiming of headspace-6m has resumed" in result.output
    assert _rows(session, select(Program.claims_paused_at)) == [None]
    assert _rows(session, select(AuditEvent.actor, AuditEvent.action).where(
        AuditEvent.action.like("program.claims%"))) == [
        ("cli", "program.claims_paused"), ("cli", "program.claims_resumed")]


def test_pause_refuses_a_closed_program_and_an_unknown_one(runner, session, factory):
    now = datetime.now(UTC)
    factory.program(slug=SLUG, opens_at=now - timedelta(days=2),
                    closes_at=now - timedelta(days=1))
    result = _run(runner, "pause", SLUG)
    assert result.exit_code == 1 and "its claim window has closed" in result.output
    result = _run(runner, "resume", "nope")
    assert result.exit_code == 1 and "no program with slug 'nope'" in result.output
    assert _rows(session, select(Program.claims_paused_at)) == [None]


# ------------------------------------------------- set-quota, void-code, reissue, restore-code


def test_set_quota_raises_lowers_and_removes(runner, session, allocated_three, smtp_server):
    result = _run(runner, "set-quota", SLUG, "--quota", "4", "--country-quota", "IN=1")
    assert result.exit_code == 0, result.output
    assert "quota of headspace-6m changed" in result.output
    assert _rows(session, select(Program.quota)) == [4]
    by_country = dict(_rows(session, select(CountryQuota.country, CountryQuota.allocated_count)))
    assert by_country == {"PK": 2, "IN": 1}  # a new country quota counts what is there already
    result = _run(runner, "set-quota", SLUG, "--no-country-quota", "pk")
    assert result.exit_code == 0, result.output
    assert _rows(session, select(CountryQuota.country)) == ["IN"]


@pytest.mark.parametrize(("args", "message"), [
    # A rule of the service (all of them: services/test_programs.py), in the command's words:
    (["--quota", "2"], "quota 2 is below the 3 codes already allocated"),
    # The command's own: something to change, and countries it can read.
    ([], "nothing to change"),
    (["--no-country-quota", "ZZ"], "'ZZ' is not an ISO 3166-1 alpha-2 country code"),
])
def test_set_quota_refusals_change_nothing(runner, session, allocated_three, args, message):
    result = _run(runner, "set-quota", SLUG, *args)
    assert result.exit_code == 1
    assert message in result.output
    assert _rows(session, select(Program.quota)) == [10]
    assert _rows(session, select(CountryQuota.country, CountryQuota.quota)) == [("PK", 3)]


def test_import_codes_names_the_lines_of_codes_another_program_holds(runner, factory, program,
                                                                     tmp_path):
    factory.codes(factory.program(slug="calm-1y"), ["SHARED-0001", "SHARED-0002"])
    codes_file = tmp_path / "codes.txt"
    codes_file.write_text("OWN-0001\nSHARED-0002\nSHARED-0001\n")
    result = _ok(_run(runner, "import-codes", SLUG, codes_file, "--no-expiry"))
    assert result.stdout == ("imported 3, duplicate 0, invalid 0\n"
                             "2 of the codes imported are held by another program too (not an "
                             "error): lines 2, 3\n")


def test_rotate_code_key_re_encrypts_under_the_newest_key_and_says_what_is_left(
        app, runner, factory, program, session):
    old = app.config["CODE_ENCRYPTION_KEY"]
    factory.codes(program, ["HS-ROT-0001", "HS-ROT-0002", "HS-ROT-0003"])
    new = Fernet.generate_key().decode()
    app.config["CODE_ENCRYPTION_KEY"] = f"{new},{old}"
    result = _ok(_run(runner, "rotate-code-key", "--batch-size", 2))
    assert result.stdout == ("3 codes re-encrypted under the newest key; every code is under "
                             "it now\nthe older keys can now be removed from "
                             "CODE_ENCRYPTION_KEY\n")
    assert "set CODE_FINGERPRINT_KEY to what `wellness-perks rotate-code-key " \
           "--show-fingerprint-key` prints" in result.stderr
    assert [code_value(t, new) for t in _all(session, select(Code.value_encrypted)
                                                    .order_by(Code.id))] == [
        "HS-ROT-0001", "HS-ROT-0002", "HS-ROT-0003"]
    again = _ok(_run(runner, "rotate-code-key"))
    assert again.stdout.startswith("0 codes re-encrypted")
    shown = _ok(_run(runner, "rotate-code-key", "--show-fingerprint-key")).stdout.strip()
    assert shown == CodeCipher(old).fingerprint_key
    app.config["CODE_FINGERPRINT_KEY"] = "another key that is at least 32 bytes long"
    app.config["CODE_ENCRYPTION_KEY"] = f"{Fernet.generate_key().decode()},{new}"
    refused = _run(runner, "rotate-code-key")
    assert refused.exit_code == 1 and "was fingerprinted with another key" in refused.output


def test_rotate_code_key_re_encrypts_the_managers_two_factor_secrets_too(app, runner, session):
    import pyotp

    from wellness_perks.db import get_session
    from wellness_perks.models import Manager
    from wellness_perks.services import auth, two_factor

    old = app.config["CODE_ENCRYPTION_KEY"]
    with app.app_context():
        manager_id = auth.create_manager(get_session(), email="lead@platform.example",
                                         password="correct horse battery staple",
                                         actor="test").id
        secret = two_factor.start_enrollment(get_session(), manager_id=manager_id).secret
        two_factor.confirm_enrollment(get_session(), manager_id=manager_id,
                                      code=pyotp.TOTP(secret).now(), actor="test")
    new = Fernet.generate_key().decode()
    app.config["CODE_ENCRYPTION_KEY"] = f"{new},{old}"
    result = _ok(_run(runner, "rotate-code-key"))
    assert "1 manager two-factor secret re-encrypted too\n" in result.stdout
    token = _rows(session, select(Manager.totp_secret_encrypted))[0]
    assert CodeCipher(new).decrypt(token) == secret


def test_void_reissue_and_restore_commands(runner, session, allocated_three, smtp_server):
    held = [code_value(token) for token in _rows(
        session, select(Code.value_encrypted).where(Code.status == "assigned").order_by(Code.id))]
    result = _run(runner, "void-code", SLUG, held[0], "--reason", "partner: invalid")
    assert result.exit_code == 0, result.output
    assert "voided; claim #1 got code #4" in result.output
    assert held[0] not in result.output  # the CLI names codes by id, never by value
    result = _run(runner, "reissue", SLUG, "p2@example.com", "--reason", "did not work")
    assert result.exit_code == 0, result.output
    assert "claim #2: code #2 voided, code #5 mailed" in result.output
    result = _run(runner, "void-code", SLUG, "HS-CODE-0005", "--reason", "spare")
    assert result.exit_code == 0 and "it was in stock" in result.output
    result = _run(runner, "restore-code", SLUG, "HS-CODE-0005")
    assert result.exit_code == 0 and "back in stock" in result.output
    result = _run(runner, "restore-code", SLUG, held[0])
    assert result.exit_code == 1 and "can't be reused" in result.output
    result = _run(runner, "void-code", SLUG, "NOPE-0000", "--reason", "x")
    assert result.exit_code == 1 and "no such code" in result.output
    assert _run(runner, "verify", SLUG).exit_code == 0
    assert [c.state for c in _rows(session, select(Claim).order_by(Claim.id))] == [
        "allocated"] * 3


# --------------------------------------------------------------------------- sweep, verify


def test_sweep_command(runner, app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-A1-0001"])
    lost_claims(session, program, ["a@example.com"])
    result = runner.invoke(args=["sweep"])
    assert result.exit_code == 0, result.output
    assert "programs re-allocated: 1" in result.output
    assert "imports handed out: 0, interrupted imports given up: 0" in result.output
    result = runner.invoke(args=["verify", program.slug])
    assert result.exit_code == 0 and "I1-I5 hold" in result.output


def test_verify_command_exits_non_zero_on_violation(runner, app, factory, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    lost_claims(session, program, ["a@example.com"])
    [(claim_id, creator_id, requested_at)] = _all(
        session, select(Claim.id, Claim.creator_id, Claim.requested_at))
    line = f"I4: pending since {requested_at:%Y-%m-%d %H:%M:%S} (claim={claim_id} " \
           f"creator={creator_id})"
    owed = f"owed: 1 claim(s) pending past the grace period, since " \
           f"{requested_at:%Y-%m-%d %H:%M:%S} (claim #{claim_id})"
    result = runner.invoke(args=["verify", program.slug])
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout.splitlines() == [line, f"{program.slug}: 1 violation(s)", owed]
    result = runner.invoke(args=["verify", program.slug, "--json"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert _json(result) == {"program": program.slug, "ok": False, "violations": [
        {"invariant": "I4", "message": f"pending since {requested_at:%Y-%m-%d %H:%M:%S}",
         "claim_id": claim_id, "code_id": None, "creator_id": creator_id}], "owed": [
        {"kind": "overdue_claims", "count": 1, "since": requested_at.isoformat(),
         "ids": [claim_id], "message": owed}],
        "possibly_sent": []}


def test_verify_command_lists_owed_work_and_still_exits_0(runner, app, factory, session,
                                                          smtp_server):
    healthy_program(app, factory, session, smtp_server)
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.kind == "reissue")
                    .values(status="failed", last_error="550 no such user"))
    session.commit()
    [(mail_id, created_at)] = _all(session, select(OutboundEmail.id, OutboundEmail.created_at)
                                   .where(OutboundEmail.status == "failed"))
    owed = (f"owed: 1 failed code mail(s), owed since {created_at:%Y-%m-%d %H:%M:%S} "
            f"(mail #{mail_id}); resend-failed sends them again")
    result = runner.invoke(args=["verify", SLUG])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.splitlines() == [f"{SLUG}: I1-I5 hold", owed]
    result = runner.invoke(args=["verify", SLUG, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    document = _json(result)
    assert (document["ok"], document["violations"]) == (True, [])
    assert [o["message"] for o in document["owed"]] == [owed]


def test_verify_command_on_a_healthy_program(runner, app, factory, session, smtp_server):
    healthy_program(app, factory, session, smtp_server)
    result = runner.invoke(args=["verify", SLUG])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout == f"{SLUG}: I1-I5 hold\n"
    result = runner.invoke(args=["verify", SLUG, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert _json(result) == {"program": SLUG, "ok": True, "violations": [], "owed": [],
                             "possibly_sent": []}


def test_verify_command_shows_mails_possibly_sent_twice(runner, app, factory, session,
                                                        smtp_server):
    """A mail whose worker died mid-send is no violation, but verify names it."""
    healthy_program(app, factory, session, smtp_server)
    session.rollback()
    outbound_id, claim_id = _all(session, select(OutboundEmail.id, OutboundEmail.claim_id)
                                 .where(OutboundEmail.claim_id.is_not(None))
                                 .order_by(OutboundEmail.id))[0]
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == outbound_id)
                    .values(possibly_sent_at=datetime.now(UTC)))
    session.commit()
    result = runner.invoke(args=["verify", SLUG])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.splitlines() == [
        f"possibly sent twice: mail #{outbound_id} (claim={claim_id}): its worker died "
        "mid-send, a second copy with the same Message-ID may have arrived",
        f"{SLUG}: I1-I5 hold"]
    result = runner.invoke(args=["verify", SLUG, "--json"])
    assert _json(result)["possibly_sent"] == [{"outbound_id": outbound_id,
                                               "claim_id": claim_id}]


# One corruption of each invariant (tests/unit/services/test_verify.py has one per message).
@pytest.mark.both_backends
@pytest.mark.parametrize("name", [
    "I1 held code voided", "I2 country counter behind", "I3 two claims by one creator",
    "I4 refused without a reason", "I5 failed without an error", "I4 allocated without a code"])
def test_verify_command_prints_each_violation_and_exits_1(name, runner, app, factory, session,
                                                          smtp_server, backend):
    case = VERIFY_CASES[name]
    w = healthy_program(app, factory, session, smtp_server)
    with constraints_lifted(session, backend, case.lifts):
        corrupt(session, backend, case, w)
        expected = case.expected(w)
        result = runner.invoke(args=["verify", SLUG])
        assert result.exit_code == 1, (result.output, result.exception)
        # Work owed (a failed mail) follows as "owed:" lines, tested on their own.
        assert [line for line in result.stdout.splitlines() if not line.startswith("owed: ")
                ] == [*expected, f"{SLUG}: {len(expected)} violation(s)"]
        result = runner.invoke(args=["verify", SLUG, "--json"])
        assert result.exit_code == 1, (result.output, result.exception)
        document = _json(result)
        assert (document["program"], document["ok"]) == (SLUG, False)
        assert [str(Violation(**v)) for v in document["violations"]] == expected


# --------------------------------------------------------------------------- seed-demo


def _seeded(session):
    return (_count(session, Program), _count(session, Creator), _count(session, Eligibility),
            _count(session, Code), _count(session, CodeBatch), _count(session, Manager))


def _demo_password(output: str) -> str:
    [password_line] = [line for line in output.splitlines() if "password " in line
                       and "demo admin" in line]
    return password_line.split("password ", 1)[1].removesuffix(" (shown once)")


def test_seed_demo_creates_the_demo_once(runner, session):
    first = _ok(_run(runner, "seed-demo"))
    assert "demo program demo-6m created: quota 25, 25 codes, 30 creators" in first.stdout
    password = _demo_password(first.stdout)
    for text in ("Sign in as a creator:", "http://localhost/login", "creator01@example.com",
                 "press Claim", "Sign in as a manager:", "http://localhost/manage/login",
                 "sets up two-factor sign-in", "authenticator app", "recovery codes"):
        assert text in first.stdout
    assert _seeded(session) == (1, 30, 30, 25, 1, 1)
    [program] = _all(session, select(Program))
    assert program.slug == "demo-6m" and program.window_state(datetime.now(UTC)) == "open"
    [manager] = _all(session, select(Manager))
    assert manager.email == "manager@example.com" and manager.role == "admin"
    assert check_password_hash(manager.password_hash, password)

    second = _ok(_run(runner, "seed-demo"))
    assert "demo program demo-6m already exists" in second.stdout
    assert "created" not in second.stdout and password not in second.stdout
    assert "shown once" not in second.stdout
    assert "Sign in as a creator:" in second.stdout
    assert _seeded(session) == (1, 30, 30, 25, 1, 1)


def test_the_demo_admin_signs_in_to_the_console_with_the_printed_password(runner, client):
    password = _demo_password(_ok(_run(runner, "seed-demo")).stdout)
    response = sign_in_manager(client, "manager@example.com", password)
    # An admin's first sign-in sets up the second factor, as the printed steps say.
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == "/manage/login/enroll"
    enroll = client.get("/manage/login/enroll")
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', enroll.text).group(1).replace(" ", "")
    page = enter_code(client, totp_code(secret), "/manage/login/enroll")
    assert page.status_code == 200 and "recovery codes" in page.text.lower()
    assert client.get("/manage/").status_code == 200
    assert client.get("/manage/programs/demo-6m").status_code == 200


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


def test_forget_removes_a_person_and_says_what_became_of_their_mails(runner, app, factory,
                                                                      session, smtp_server):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    unknown = runner.invoke(args=["forget", "nobody@example.com", "--yes"])
    assert unknown.exit_code == 1 and "nobody with the address nobody@example.com" in unknown.output
    refused = runner.invoke(args=["forget", "ayesha@example.com"], input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    result = runner.invoke(args=["forget", "ayesha@example.com", "--yes"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "creator #1 forgotten"
    session.rollback()
    assert session.exec(select(Creator.email)).all() == ["forgotten-1@forgotten.invalid"]


def test_resend_failed_sends_a_programs_failed_code_mails_again(
        runner, app, factory, session, smtp_server):
    program = factory.program()
    factory.creators(program, ["p1@example.com", "p2@example.com"])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002"])
    smtp_server.refuse_with = "550 5.7.1 relay refused for now"
    from wellness_perks.db import get_session
    from wellness_perks.services import claims
    with app.app_context():
        for creator_id in (1, 2):
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
    smtp_server.refuse_with = None
    assert _run(runner, "resend-failed", "nope").exit_code == 1
    bad = _run(runner, "resend-failed", SLUG, "--since", "yesterday")
    assert bad.exit_code == 1 and "--since 'yesterday'" in bad.output
    later = _run(runner, "resend-failed", SLUG, "--since", "2999-01-01")
    assert later.exit_code == 0 and later.output.strip() == "no failed mail to send again"
    result = _run(runner, "resend-failed", SLUG)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "2 failed mails queued again"
    assert len(smtp_server.to("p1@example.com", "code")) == 1
    assert len(smtp_server.to("p2@example.com", "code")) == 1
    assert "HS-CODE" not in result.output
    again = _run(runner, "resend-failed", SLUG)
    assert again.output.strip() == "no failed mail to send again"
    assert _run(runner, "verify", SLUG).exit_code == 0


def test_resend_failed_says_which_invitations_it_cancelled(runner, app, factory, smtp_server):
    """A failed invitation to a creator who has claimed since is cancelled, and said so."""
    program = factory.program()
    factory.creators(program, ["p1@example.com", "p2@example.com"])
    smtp_server.refuse_with = "550 5.7.1 relay refused for now"
    _ok(_run(runner, "invite", SLUG))
    smtp_server.refuse_with = None
    from wellness_perks.db import get_session
    from wellness_perks.services import claims
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=1)
    result = _run(runner, "resend-failed", SLUG)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "1 failed mail queued again",
        "1 failed invitation(s) or reminder(s) cancelled, not sent: their creator has claimed "
        "or opted out since"]
    assert len(smtp_server.to("p2@example.com", "invited")) == 1
    assert smtp_server.to("p1@example.com", "invited") == []


def test_invite_and_remind_send_each_mail_once(runner, app, factory, session, smtp_server):
    from wellness_perks.models import Invitation

    program = factory.program()
    factory.creators(program, ["p1@example.com", "p2@example.com"])
    assert _run(runner, "invite", "nope").exit_code == 1
    result = _run(runner, "invite", SLUG)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("2 invitations queued (MAIL_RATE_LIMIT paces them); "
                                     "2 invited, 0 reminded, 0 opted out, 0 claimed of 2 on "
                                     "the list")
    assert _run(runner, "invite", SLUG).output.startswith("0 invitations queued")
    assert len(smtp_server.wait_for_mail("p1@example.com", "invited")) == 1
    assert _run(runner, "remind", SLUG).output.startswith("0 reminders queued")
    assert _run(runner, "remind", SLUG, "--after-days", "-1").exit_code == 2
    result = _run(runner, "remind", SLUG, "--after-days", "0")
    assert result.exit_code == 0 and result.output.startswith("2 reminders queued"), result.output
    assert len(smtp_server.wait_for_mail("p2@example.com", "Reminder")) == 1
    assert len(_all(session, select(Invitation))) == 2
    assert _run(runner, "remind", SLUG, "--after-days", "0").output.startswith(
        "0 reminders queued")
    assert len(_all(session, select(AuditEvent).where(
        AuditEvent.action == "program.invitations_queued", AuditEvent.actor == "cli"))) == 1


def test_invite_refuses_a_program_whose_window_has_closed(runner, factory):
    now = datetime.now(UTC)
    factory.program(opens_at=now - timedelta(days=2), closes_at=now - timedelta(days=1))
    result = _run(runner, "invite", SLUG)
    assert result.exit_code == 1 and "has closed" in result.output


# ------------------------------------------ import-codes expiry, set-batch-expiry, void-batch


@pytest.mark.parametrize(("options", "message"), [
    ([], "say when the codes expire: --expires YYYY-MM-DD, or --no-expiry"),
    (["--expires", "2030-12-31", "--no-expiry"], "give --expires or --no-expiry, not both"),
])
def test_import_codes_needs_an_expiry_or_an_explicit_none(runner, session, program, options,
                                                          message):
    _error(_run(runner, "import-codes", SLUG, CODES_SAMPLE, *options), message, exit_code=2)
    assert _count(session, CodeBatch) == 0 and _count(session, Code) == 0


def test_import_codes_with_no_expiry(runner, session, program):
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--no-expiry"))
    assert _all(session, select(CodeBatch.expires_on)) == [None]
    assert _ok(_run(runner, "verify", SLUG)).stdout == f"{SLUG}: I1-I5 hold\n"


def test_set_batch_expiry_by_id_and_by_name(runner, session, program):
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--no-expiry", "--batch-name", "May"))
    result = _ok(_run(runner, "set-batch-expiry", SLUG, "1", "--expires", "2031-01-31"))
    assert result.stdout == "batch #1 (May): expiry no expiry -> 2031-01-31\n"
    result = _ok(_run(runner, "set-batch-expiry", SLUG, "May", "--no-expiry"))
    assert result.stdout == "batch #1 (May): expiry 2031-01-31 -> no expiry\n"
    assert _all(session, select(CodeBatch.expires_on)) == [None]
    assert _audit_actions(session)[-2:] == ["code_batch.expiry_changed"] * 2
    assert _ok(_run(runner, "verify", SLUG)).stdout == f"{SLUG}: I1-I5 hold\n"


@pytest.mark.parametrize(("args", "message", "exit_code"), [
    (["June", "--no-expiry"], "this program has no batch 'June'", 1),
    (["May"], "say when the codes expire", 2),
    (["May", "--expires", "2001-01-01"], "expiry date 2001-01-01 is in the past", 1),
    (["May", "--expires", "31/01/2031"], "--expires", 2),
])
def test_set_batch_expiry_refusals_change_nothing(runner, session, program, args, message,
                                                  exit_code):
    _ok(_run(runner, "import-codes", SLUG, CODES_SAMPLE, "--expires", "2030-12-31",
             "--batch-name", "May"))
    _error(_run(runner, "set-batch-expiry", SLUG, *args), message, exit_code=exit_code)
    assert _all(session, select(CodeBatch.expires_on)) == [date(2030, 12, 31)]


def test_void_batch_voids_the_stock_and_leaves_held_codes(runner, session, allocated_three):
    result = _ok(_run(runner, "void-batch", SLUG, "1", "--reason", "partner recalled"))
    assert result.stdout == ("batch #1 (" + _all(session, select(CodeBatch.name))[0] +
                             "): 3 codes in stock voided; 3 held by creators, left alone\n")
    assert [status for status in _all(session, select(Code.status).order_by(Code.id))] == [
        "assigned"] * 3 + ["void"] * 3
    assert _ok(_run(runner, "quota", SLUG, "--json")).stdout.count('"in_stock": 0') == 1
    again = _ok(_run(runner, "void-batch", SLUG, "1", "--reason", "again"))
    assert "no code of it was in stock: nothing voided; 3 held by creators" in again.stdout
    assert _audit_actions(session).count("code_batch.voided") == 1
    assert _ok(_run(runner, "verify", SLUG)).stdout == f"{SLUG}: I1-I5 hold\n"


@pytest.mark.parametrize(("args", "message", "exit_code"), [
    (["1", "--reason", " "], "say why the batch is voided", 1),
    (["7", "--reason", "x"], "this program has no batch '7'", 1),
    (["1"], "Missing option '--reason'", 2),
])
def test_void_batch_refusals_change_nothing(runner, session, allocated_three, args, message,
                                            exit_code):
    _error(_run(runner, "void-batch", SLUG, *args), message, exit_code=exit_code)
    assert _count(session, Code, Code.status == "void") == 0
    _error(_run(runner, "void-batch", "nope", "1", "--reason", "x"), "no program with slug")


# --------------------------------------------------------------------------- list-programs


def test_list_programs_table_and_json(runner, factory, session, allocated_three):
    factory.program(slug="calm-1y", name="Calm · 1 year", quota=5,
                    opens_at=datetime.now(UTC) + timedelta(days=1))
    result = _ok(_run(runner, "list-programs"))
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["program", "name", "window", "quota", "allocated", "in", "stock",
                                "claims"]
    assert lines[1].split() == ["calm-1y", "Calm", "·", "1", "year", "not_open", "5", "0", "0",
                                "0"]
    assert lines[2].split() == [SLUG, "Headspace", "·", "6", "months", "open", "10", "3", "3",
                                "3"]
    document = _json(_ok(_run(runner, "list-programs", "--json")))
    assert [(p["program"], p["window"], p["allocated"], p["in_stock"], p["claims"]["allocated"])
            for p in document] == [("calm-1y", "not_open", 0, 0, 0), (SLUG, "open", 3, 3, 3)]
    assert document[1]["claims_total"] == 3
    for slug in ("calm-1y", SLUG):  # a read: it changes nothing
        assert _ok(_run(runner, "verify", slug)).stdout == f"{slug}: I1-I5 hold\n"


def test_list_programs_without_programs(runner):
    assert _ok(_run(runner, "list-programs")).stdout == "no program yet: create-program makes one\n"
    assert _json(_ok(_run(runner, "list-programs", "--json"))) == []


# --------------------------------------------------------------------------- show-creator


def test_show_creator_masks_the_code_and_lists_the_mails(runner, session, allocated_three,
                                                         smtp_server):
    smtp_server.wait_for_mail("p1@example.com", "code")
    [value] = _code_values_held_by(session, "p1@example.com")
    result = _ok(_run(runner, "show-creator", SLUG, "p1@example.com"))
    assert value not in result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"creator #1 p1@example.com @p1 (PK, reads en): on the list of {SLUG}"
    assert lines[1].startswith("  claim #1: allocated, requested ")
    assert lines[2].startswith(f"    code #1 HS-****-{value[-4:]} (assigned), batch #1 ")
    assert lines[2].endswith(", expires no expiry")
    assert lines[3].startswith("  mail #1 redemption: sent after 1 attempt, sent ")
    document = _json(_ok(_run(runner, "show-creator", SLUG, "p1@example.com", "--json")))
    assert value not in json.dumps(document)
    assert document["claims"][0]["code"]["masked"] == f"HS-****-{value[-4:]}"
    assert [(m["kind"], m["status"]) for m in document["mails"]] == [("redemption", "sent")]
    assert _ok(_run(runner, "verify", SLUG)).stdout == f"{SLUG}: I1-I5 hold\n"


def _code_values_held_by(session, email) -> list[str]:
    return [code_value(token) for token in _all(session, select(Code.value_encrypted)
            .join(Claim, Claim.code_id == Code.id).join(Creator, Creator.id == Claim.creator_id)
            .where(Creator.email == email))]


@pytest.mark.parametrize(("email", "message"), [
    ("nobody@example.com", "nobody with the address nobody@example.com"),
    ("not-an-address", "not a valid email address"),
])
def test_show_creator_refusals(runner, allocated_three, email, message):
    _error(_run(runner, "show-creator", SLUG, email), message)


def test_show_creator_not_on_the_list(runner, factory, allocated_three):
    other = factory.program(slug="calm-1y")
    factory.creators(other, ["outsider@example.com"])
    result = _ok(_run(runner, "show-creator", SLUG, "outsider@example.com"))
    assert result.stdout.splitlines()[1:] == ["  no claim in this program", "  no mail to them"]
    assert "not on the list of headspace-6m" in result.stdout


# --------------------------------------------------------------------------- resend


def test_resend_queues_the_code_mail_again_throttled(runner, app, session, allocated_three,
                                                     smtp_server):
    smtp_server.wait_for_mail("p1@example.com", "code")
    too_soon = _error(_run(runner, "resend", SLUG, "p1@example.com"), "try again in 10 minutes")
    assert "queued again" not in too_soon.output
    app.config["RESEND_MIN_INTERVAL_MINUTES"] = 0
    result = _ok(_run(runner, "resend", SLUG, "p1@example.com"))
    assert result.stdout == "mail #1 queued again\n"
    smtp_server.wait_for_mail("p1@example.com", "code", count=2)
    [value] = _code_values_held_by(session, "p1@example.com")
    assert value not in result.output
    assert _audit_actions(session).count("mail.resent") == 1
    assert _ok(_run(runner, "verify", SLUG)).stdout == f"{SLUG}: I1-I5 hold\n"


def test_resend_refuses_a_creator_without_a_code(runner, factory, session, allocated_three):
    factory.creators(allocated_three, ["late@example.com"])
    _error(_run(runner, "resend", SLUG, "late@example.com"),
           "late@example.com holds no code in this program")
    _error(_run(runner, "resend", "nope", "late@example.com"), "no program with slug")
    assert _audit_actions(session).count("mail.resent") == 0


# --------------------------------------------------------------------------- remove-creator


def test_remove_creator_refuses_a_waiting_claim_and_leaves_a_held_code(
        runner, app, factory, session, allocated_three):
    factory.creators(allocated_three, ["p3@example.com"], country="PK")
    session.rollback()
    p3 = session.exec(select(Creator.id).where(Creator.email == "p3@example.com")).one()
    session.add(Claim(program_id=allocated_three.id, creator_id=p3, country="PK"))
    session.commit()  # p3's claim, its allocation not run yet
    result = _ok(_run(runner, "remove-creator", SLUG, "p3@example.com", "--reason", "left"))
    assert result.stdout == (f"p3@example.com removed from the list of {SLUG}; their "
                             "pending claim #4 is refused\n")
    assert _rows(session, select(Claim.state, Claim.reason).where(Claim.id == 4)) == [
        ("refused", "removed_from_list")]
    result = _ok(_run(runner, "remove-creator", SLUG, "p1@example.com", "--reason", "left"))
    assert result.stdout == (f"p1@example.com removed from the list of {SLUG}; their claim #1 "
                             "holds a code and is left alone (reissue or void-code take it "
                             "back)\n")
    assert _rows(session, select(Claim.state).where(Claim.id == 1)) == ["allocated"]
    assert _count(session, Eligibility) == 2
    _error(_run(runner, "remove-creator", SLUG, "p1@example.com", "--reason", "again"),
           "p1@example.com is not on this program's list")
    _error(_run(runner, "remove-creator", SLUG, "p2@example.com"), "Missing option '--reason'",
           exit_code=2)
    assert _audit_actions(session).count("creator.removed_from_list") == 2
    assert _ok(_run(runner, "verify", SLUG)).stdout == f"{SLUG}: I1-I5 hold\n"
