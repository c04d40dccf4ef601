"""CLI: country quotas, quota changes, voiding, reissuing and restoring codes."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from wellness_perks.db import get_session
from wellness_perks.models import Claim, Code, CountryQuota, Program
from wellness_perks.services import claims

SLUG = "headspace-6m"


def _invoke(runner, *args):
    return runner.invoke(args=[str(a) for a in args])


def _create(runner, *extra):
    return _invoke(runner, "create-program", "--slug", SLUG, "--name", "Headspace", "--quota",
                   "10", *extra)


def _fresh(session, statement):
    session.rollback()
    return session.exec(statement.execution_options(populate_existing=True)).all()


def test_create_program_with_country_quotas(runner, session):
    result = _create(runner, "--country-quota", "PK=2", "--country-quota", "in=3")
    assert result.exit_code == 0, result.output
    assert "IN 3" in result.output and "PK 2" in result.output
    rows = _fresh(session, select(CountryQuota.country, CountryQuota.quota)
                  .order_by(CountryQuota.country))
    assert rows == [("IN", 3), ("PK", 2)]
    summary = json.loads(_invoke(runner, "quota", SLUG, "--json").output)
    assert summary["countries"] == {"IN": {"quota": 3, "allocated": 0, "remaining": 3},
                                    "PK": {"quota": 2, "allocated": 0, "remaining": 2}}
    assert "country quotas" in _invoke(runner, "quota", SLUG).output


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
    assert _fresh(session, select(Program)) == []


@pytest.fixture
def allocated_three(app, runner, factory, session):
    """Quota 10 with PK capped at 3: two PK creators and one IN creator hold codes."""
    program = factory.program(quota=10, country_quotas={"PK": 3})
    factory.creators(program, ["p1@example.com", "p2@example.com"], country="PK")
    factory.creators(program, ["i1@example.com"], country="IN")
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(6)])
    with app.app_context():
        for creator_id in (1, 2, 3):
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
    return program


def test_set_quota_raises_lowers_and_removes(runner, session, allocated_three, smtp_server):
    result = _invoke(runner, "set-quota", SLUG, "--quota", "4", "--country-quota", "IN=1")
    assert result.exit_code == 0, result.output
    assert "quota of headspace-6m changed" in result.output
    assert _fresh(session, select(Program.quota)) == [4]
    by_country = dict(_fresh(session, select(CountryQuota.country, CountryQuota.allocated_count)))
    assert by_country == {"PK": 2, "IN": 1}  # a new country quota counts what is there already
    result = _invoke(runner, "set-quota", SLUG, "--no-country-quota", "pk")
    assert result.exit_code == 0, result.output
    assert _fresh(session, select(CountryQuota.country)) == ["IN"]


@pytest.mark.parametrize(("args", "message"), [
    (["--quota", "2"], "quota 2 is below the 3 codes already allocated"),
    (["--country-quota", "PK=1"], "PK quota 1 is below the 2 codes already allocated there"),
    (["--country-quota", "IN=0"], "IN quota 0 is below the 1 codes already allocated there"),
    ([], "nothing to change"),
    (["--no-country-quota", "ZZ"], "'ZZ' is not an ISO 3166-1 alpha-2 country code"),
])
def test_set_quota_refusals_change_nothing(runner, session, allocated_three, args, message):
    result = _invoke(runner, "set-quota", SLUG, *args)
    assert result.exit_code == 1
    assert message in result.output
    assert _fresh(session, select(Program.quota)) == [10]
    assert _fresh(session, select(CountryQuota.country, CountryQuota.quota)) == [("PK", 3)]


def test_void_reissue_and_restore_commands(runner, session, allocated_three, smtp_server):
    held = _fresh(session, select(Code.value).where(Code.status == "assigned")
                  .order_by(Code.id))
    result = _invoke(runner, "void-code", SLUG, held[0], "--reason", "partner: invalid")
    assert result.exit_code == 0, result.output
    assert "voided; claim #1 got code #4" in result.output
    assert held[0] not in result.output  # the CLI names codes by id, never by value
    result = _invoke(runner, "reissue", SLUG, "p2@example.com", "--reason", "did not work")
    assert result.exit_code == 0, result.output
    assert "claim #2: code #2 voided, code #5 mailed" in result.output
    result = _invoke(runner, "void-code", SLUG, "HS-CODE-0005", "--reason", "spare")
    assert result.exit_code == 0 and "it was in stock" in result.output
    result = _invoke(runner, "restore-code", SLUG, "HS-CODE-0005")
    assert result.exit_code == 0 and "back in stock" in result.output
    result = _invoke(runner, "restore-code", SLUG, held[0])
    assert result.exit_code == 1 and "can't be reused" in result.output
    result = _invoke(runner, "void-code", SLUG, "NOPE-0000", "--reason", "x")
    assert result.exit_code == 1 and "no such code" in result.output
    assert _invoke(runner, "verify", SLUG).exit_code == 0
    assert [c.state for c in _fresh(session, select(Claim).order_by(Claim.id))] == [
        "allocated"] * 3
