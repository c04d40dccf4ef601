"""The program rules (``services/programs.py``), called directly: what a program may be created
with, quotas that never drop below what is allocated, and the numbers ``quota`` shows."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.unit.services.scenarios import allocate_each, stocked_program
from wellness_perks.db import get_session
from wellness_perks.models import (
    DEFAULT_CODE_PATTERN,
    AuditEvent,
    Claim,
    Code,
    CountryQuota,
    Creator,
    Program,
)
from wellness_perks.services import claims, codes, programs
from wellness_perks.services.errors import ClaimsPaused, Conflict, InvalidInput, NotOnList

SLUG = "headspace-6m"
PKT = timezone(timedelta(hours=5))


def _create(app, **given):
    arguments = {"slug": SLUG, "name": "Headspace", "quota": 10, "actor": "test"} | given
    with app.app_context():
        return programs.create_program(get_session(), **arguments)


def _fresh(session, statement):
    session.rollback()  # a fresh snapshot: SQLite's WAL keeps a reader at its first view
    return session.exec(statement.execution_options(populate_existing=True)).all()


def _count(session, model) -> int:
    [count] = _fresh(session, select(sa.func.count()).select_from(model))
    return count


# --------------------------------------------------------------------------- create_program


def test_create_program_stores_what_it_was_given(app, session):
    _create(app, name="  Headspace · 6 months ", quota=500, perk_months=12,
            opens_at=datetime(2026, 12, 1, 9, 0, tzinfo=PKT),
            closes_at=datetime(2027, 1, 31, 18, 0, tzinfo=UTC),
            redeem_url="https://headspace.example/redeem?code={code}",
            country_quotas={"PK": 200})
    [program] = _fresh(session, select(Program))
    assert program.name == "Headspace · 6 months"
    assert (program.quota, program.perk_months, program.allocated_count) == (500, 12, 0)
    assert program.opens_at == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    assert program.code_pattern == DEFAULT_CODE_PATTERN
    assert _fresh(session, select(CountryQuota.country, CountryQuota.quota,
                                  CountryQuota.allocated_count)) == [("PK", 200, 0)]
    assert _fresh(session, select(AuditEvent.action)) == ["program.created"]


@pytest.mark.parametrize(("given", "message"), [
    ({"slug": "Headspace 6m"}, "slug must be 2 to 64 lower-case letters"),
    ({"slug": "-headspace"}, "slug must be 2 to 64 lower-case letters"),
    ({"slug": "h"}, "slug must be 2 to 64 lower-case letters"),
    ({"name": "   "}, "name must not be empty"),
    ({"quota": -1}, "quota must be zero or more"),
    ({"opens_at": datetime(2026, 12, 2, tzinfo=UTC),
      "closes_at": datetime(2026, 12, 1, tzinfo=UTC)},
     "the claim window closes before it opens"),
    ({"opens_at": datetime(2026, 12, 1, 10, 0, tzinfo=PKT),
      "closes_at": datetime(2026, 12, 1, 5, 0, tzinfo=UTC)},
     "the claim window closes before it opens"),  # the same instant
    ({"opens_at": datetime(2026, 12, 1, 9, 0)}, "opens must include a time zone"),
    ({"redeem_url": "ftp://headspace.example/{code}"}, "redeem URL must be an http(s) URL"),
    ({"redeem_url": "headspace.example/redeem"}, "redeem URL must be an http(s) URL"),
    ({"redeem_url": "javascript:alert(1)"}, "redeem URL must be an http(s) URL"),
    ({"code_pattern": "HS-[A-Z"}, "code format is not a valid regular expression"),
    ({"code_pattern": "(?P<x>"}, "code format is not a valid regular expression"),
])
def test_create_program_refuses_bad_input_and_creates_nothing(app, session, given, message):
    with pytest.raises(InvalidInput) as refused:
        _create(app, **given)
    assert str(refused.value).startswith(message), str(refused.value)
    assert _count(session, Program) == 0
    assert _count(session, AuditEvent) == 0


@pytest.mark.parametrize(("given", "field"), [
    ({"name": "N" * 201}, "name"),
    ({"redeem_url": "https://app.example/" + "r" * 490}, "redeem-url"),
    ({"code_pattern": "[A-Z]" * 101}, "code-format"),
])
def test_create_program_refuses_over_long_fields(app, session, given, field):
    with pytest.raises(InvalidInput, match=f"^{field} is longer than ") as refused:
        _create(app, **({"slug": "long-6m", "name": "Long", "quota": 5} | given))
    assert refused.value.field == field
    assert _fresh(session, select(Program)) == []


BCC = "Bcc: attacker@evil.example"


@pytest.mark.parametrize("separator", ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d",
                                       "\x1e", "\x85", "\u2028", "\u2029", "\r\n\r\n"])
def test_a_line_break_in_a_program_name_is_refused(app, session, separator):
    """The name goes into every code mail's subject: a break would start headers of its own."""
    with pytest.raises(InvalidInput) as refused:
        _create(app, name=f"Headspace{separator}{BCC}")
    assert refused.value.field == "name"
    assert str(refused.value) == "name must be one line: it contains a line break"
    assert BCC not in str(refused.value)
    assert _count(session, Program) == 0 and _count(session, AuditEvent) == 0


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\t", "\x7f", "\x9b"])
def test_a_control_character_in_a_program_name_is_refused(app, session, character):
    with pytest.raises(InvalidInput, match="^name must be plain text: it contains a control "
                                           "character$") as refused:
        _create(app, name=f"Head{character}space")
    assert refused.value.field == "name"
    assert _count(session, Program) == 0


def test_white_space_around_a_name_is_trimmed_not_refused(app, session):
    _create(app, name="\n  Headspace · 6 months\r\n")
    assert _fresh(session, select(Program.name)) == ["Headspace · 6 months"]


def test_create_program_refuses_a_duplicate_slug(app, session):
    _create(app, name="First", quota=10)
    with pytest.raises(Conflict, match=f"^a program with slug '{SLUG}' already exists$"):
        _create(app, name="Second", quota=20)
    [program] = _fresh(session, select(Program))
    assert (program.name, program.quota) == ("First", 10)
    assert _fresh(session, select(AuditEvent.action)) == ["program.created"]


# --------------------------------------------------------------------------- set_quota


def test_set_quota_raises_lowers_and_removes(app, session, allocated_three):
    with app.app_context():
        programs.set_quota(get_session(), program_id=allocated_three.id, quota=4,
                           country_quotas={"IN": 1}, actor="test")
    assert _fresh(session, select(Program.quota)) == [4]
    by_country = dict(_fresh(session, select(CountryQuota.country, CountryQuota.allocated_count)))
    assert by_country == {"PK": 2, "IN": 1}  # a new country quota counts what is there already
    with app.app_context():
        programs.set_quota(get_session(), program_id=allocated_three.id,
                           country_quotas={"PK": None}, actor="test")
    assert _fresh(session, select(CountryQuota.country)) == ["IN"]
    assert _fresh(session, select(AuditEvent.action).where(
        AuditEvent.action == "program.quota_changed")) == ["program.quota_changed"] * 2


@pytest.mark.parametrize(("change", "message"), [
    ({"quota": 2}, "quota 2 is below the 3 codes already allocated"),
    ({"country_quotas": {"PK": 1}}, "PK quota 1 is below the 2 codes already allocated there"),
    ({"country_quotas": {"IN": 0}}, "IN quota 0 is below the 1 codes already allocated there"),
    ({"country_quotas": {"IN": -1}}, "IN quota must be zero or more"),
])
def test_set_quota_refusals_change_nothing(app, session, allocated_three, change, message):
    with app.app_context(), pytest.raises(InvalidInput, match=f"^{message}$"):
        programs.set_quota(get_session(), program_id=allocated_three.id, actor="test", **change)
    assert _fresh(session, select(Program.quota)) == [10]
    assert _fresh(session, select(CountryQuota.country, CountryQuota.quota)) == [("PK", 3)]


def test_quota_cannot_drop_below_allocations(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=5, creators=3, codes=5,
                                         countries=("PK",))
    allocate_each(app, claim_ids)
    with app.app_context(), pytest.raises(InvalidInput, match="below the 3 codes"):
        programs.set_quota(get_session(), program_id=program.id, quota=2, actor="test")
    with app.app_context(), pytest.raises(InvalidInput, match="PK quota 1 is below"):
        programs.set_quota(get_session(), program_id=program.id, country_quotas={"PK": 1},
                           actor="test")
    session.rollback()
    assert session.get(Program, program.id, populate_existing=True).quota == 5


# --------------------------------------------------------------------------- quota_summary


def _summary(app, slug=SLUG) -> dict:
    with app.app_context():
        return programs.quota_summary(get_session(), programs.get_program(get_session(), slug))


def test_quota_summary_counts_claims_by_state(app, session, factory):
    program = factory.program(slug=SLUG, quota=2)
    other = factory.program(slug="calm-1y")
    factory.creators(program, ["a@example.com", "b@example.com", "c@example.com",
                               "d@example.com", "tardy@example.com"])
    factory.creators(other, ["outsider@example.com"])
    factory.codes(program, [f"HS-QUOTA-000{i}" for i in range(5)])
    with app.app_context():
        db = get_session()
        ids = dict(db.exec(select(Creator.email, Creator.id)).all())
        for email in ("a@example.com", "b@example.com", "c@example.com"):
            claims.request_claim(db, program=program, creator_id=ids[email])
        claims.request_claim(db, program=program, creator_id=ids["tardy@example.com"],
                             now=datetime.now(UTC) + timedelta(days=31))  # after it closed
        with pytest.raises(NotOnList):  # off the list: nothing to count
            claims.request_claim(db, program=program, creator_id=ids["outsider@example.com"])
        # Not decided yet:
        db.add(Claim(program_id=program.id, creator_id=ids["d@example.com"], country="PK"))
        db.commit()
    states = _fresh(session, select(Claim.state).order_by(Claim.id))
    assert states == ["allocated", "allocated", "waitlisted", "refused", "pending"]

    summary = _summary(app)
    assert {k: summary[k] for k in ("quota", "allocated", "remaining", "in_stock")} == {
        "quota": 2, "allocated": 2, "remaining": 0, "in_stock": 3}
    assert summary["claims"] == {"pending": 1, "allocated": 2, "waitlisted": 1, "refused": 1}
    assert _summary(app, "calm-1y")["claims"] == {
        "pending": 0, "allocated": 0, "waitlisted": 0, "refused": 0}


def test_quota_summary_matches_a_direct_count(app, session, factory):
    program = factory.program(slug=SLUG, quota=3)
    other = factory.program(slug="calm-1y", quota=5)
    factory.creators(program, [f"{c}@example.com" for c in "abcdef"])
    factory.creators(other, ["outsider@example.com"])
    factory.codes(program, [f"HS-DIRECT-{i:04d}" for i in range(7)])
    factory.codes(other, ["CALM-0001", "CALM-0002"])
    with app.app_context():
        db = get_session()
        ids = dict(db.exec(select(Creator.email, Creator.id)).all())
        for email in ("a@example.com", "b@example.com", "c@example.com", "d@example.com"):
            claims.request_claim(db, program=program, creator_id=ids[email])
        claims.request_claim(db, program=program, creator_id=ids["f@example.com"],
                             now=datetime.now(UTC) + timedelta(days=31))  # after it closed
        with pytest.raises(NotOnList):
            claims.request_claim(db, program=program, creator_id=ids["outsider@example.com"])
        claims.request_claim(db, program=other, creator_id=ids["outsider@example.com"])
        db.add(Claim(program_id=program.id, creator_id=ids["e@example.com"], country="PK"))
        db.commit()
        codes.void_code(db, program_id=program.id, value="HS-DIRECT-0006", reason="x",
                        actor="test")
        codes.reissue_claim(db, program_id=program.id, creator_email="a@example.com",
                            reason="x", actor="test")

    summary = _summary(app)
    by_state = dict(_fresh(session, select(Claim.state, sa.func.count())
                           .where(Claim.program_id == program.id).group_by(Claim.state)))
    assert summary["claims"] == {state: by_state.get(state, 0)
                                 for state in ("pending", "allocated", "waitlisted", "refused")}
    assert summary["claims"] == {"pending": 1, "allocated": 3, "waitlisted": 1, "refused": 1}
    [in_stock] = _fresh(session, select(sa.func.count()).select_from(Code).where(
        Code.program_id == program.id, Code.status == "available"))
    assert (summary["allocated"], summary["remaining"], summary["in_stock"]) == (3, 0, in_stock)
    assert in_stock == 2  # 7 imported, 3 given out, 1 voided, 1 given in a reissue
    assert _summary(app, "calm-1y")["in_stock"] == 1


# --------------------------------------------------------------------------- program_summaries


def _listed(app, **options) -> list[dict]:
    with app.app_context():
        return programs.program_summaries(get_session(), **options)


def test_list_programs_gives_every_programs_numbers_as_quota_summary_does(app, session,
                                                                          factory):
    test_quota_summary_matches_a_direct_count(app, session, factory)
    factory.program(slug="zen-3m", name="Zen", quota=0,
                    opens_at=datetime.now(UTC) + timedelta(days=1))
    listed = _listed(app)
    assert [p["program"] for p in listed] == ["calm-1y", SLUG, "zen-3m"]
    for entry in listed[:2]:
        summary = _summary(app, entry["program"])
        assert {k: entry[k] for k in ("name", "quota", "allocated", "remaining", "in_stock",
                                      "claims")} == {
            k: summary[k] for k in ("name", "quota", "allocated", "remaining", "in_stock",
                                    "claims")}
        assert entry["claims_total"] == sum(summary["claims"].values())
    assert [p["window"] for p in listed] == ["open", "open", "not_open"]
    assert listed[2] | {"opens_at": None, "closes_at": None} == {
        "program": "zen-3m", "name": "Zen", "window": "not_open", "opens_at": None,
        "closes_at": None, "quota": 0, "allocated": 0, "remaining": 0, "in_stock": 0,
        "claims": {"pending": 0, "allocated": 0, "waitlisted": 0, "refused": 0},
        "claims_total": 0}
    closed = _listed(app, now=datetime.now(UTC) + timedelta(days=60))
    assert [p["window"] for p in closed] == ["closed", "closed", "closed"]


def test_list_programs_is_one_statement_that_never_reads_the_codes(app, session, factory):
    """Its cost does not grow with the programs' codes or allocated claims: the counters, and
    the claims not allocated counted per program and state."""
    test_quota_summary_matches_a_direct_count(app, session, factory)
    statements: list[str] = []
    engine = app.extensions["db_engine"]

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        _listed(app)
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1, reads
    assert not any(re.search(r"\bcode\b|codeassignment|codebatch", s, re.IGNORECASE)
                   for s in reads), reads
# --------------------------------------------------------------------------- time zones


KARACHI = "Asia/Karachi"


def test_a_local_opening_time_is_read_in_the_programs_zone_and_stored_in_utc(app, session):
    _create(app, opens_at=datetime(2026, 12, 1, 9, 0), closes_at=datetime(2026, 12, 31, 21, 0),
            time_zone=KARACHI)
    [program] = _fresh(session, select(Program))
    assert program.opens_at == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    assert program.closes_at == datetime(2026, 12, 31, 16, 0, tzinfo=UTC)
    assert program.time_zone == KARACHI
    assert program.in_own_zone(program.opens_at).strftime("%H:%M") == "09:00"


@pytest.mark.parametrize(("local", "zone", "message"), [
    (datetime(2026, 12, 1, 9, 0), "Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
    (datetime(2026, 12, 1, 9, 0), "", "'' is not an IANA time zone"),
    (datetime(2027, 3, 28, 1, 30), "Europe/London", "opens: 2027-03-28 01:30 does not happen"),
    (datetime(2027, 10, 31, 1, 30), "Europe/London", "opens: 2027-10-31 01:30 happens twice"),
])
def test_a_local_time_that_is_not_one_instant_is_refused(app, session, local, zone, message):
    with pytest.raises(InvalidInput) as refused:
        _create(app, opens_at=local, time_zone=zone)
    assert str(refused.value).startswith(message), str(refused.value)
    assert refused.value.field in {"time-zone", "opens"}
    assert _count(session, Program) == 0


@pytest.mark.parametrize(("given", "field", "message"), [
    ({"redeem_url": "https://headspace.example/redeem"}, "redeem-url",
     "redeem URL must contain {code}"),
    ({"support_email": "not an address"}, "support-email", "support contact: not a valid"),
    ({"perk_months": 0}, "months", "months must be at least 1"),
])
def test_create_program_checks_the_new_settings(app, session, given, field, message):
    with pytest.raises(InvalidInput) as refused:
        _create(app, **given)
    assert refused.value.field == field and str(refused.value).startswith(message)
    assert _count(session, Program) == 0


# --------------------------------------------------------------------------- update_program


def _settings(**given) -> dict:
    return {"name": "Headspace", "quota": 10, "country_quotas": {}, "perk_months": 6,
            "opens_at": None, "closes_at": None, "time_zone": "UTC", "redeem_url": None,
            "support_email": None} | given


def _update(app, program_id, **given):
    with app.app_context():
        return programs.update_program(get_session(), program_id=program_id,
                                       actor="manager:7", **_settings(**given))


def _audits(session, action=None):
    statement = select(AuditEvent).order_by(AuditEvent.id)
    if action:
        statement = statement.where(AuditEvent.action == action)
    return [(e.actor, e.action, e.detail) for e in _fresh(session, statement)]


def test_update_program_changes_the_settings_and_audits_before_and_after(app, session):
    program = _create(app)
    _update(app, program.id, name="Headspace · 12 months", perk_months=12,
            opens_at=datetime(2026, 12, 1, 9, 0), time_zone=KARACHI,
            redeem_url="https://headspace.example/r/{code}",
            support_email="Help@Headspace.example")
    [stored] = _fresh(session, select(Program))
    assert (stored.name, stored.perk_months, stored.time_zone) == (
        "Headspace · 12 months", 12, KARACHI)
    assert stored.opens_at == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    assert stored.support_email == "help@headspace.example"
    [(actor, _, detail)] = _audits(session, "program.updated")
    assert actor == "manager:7"
    assert json.loads(detail) == {
        "name": ["Headspace", "Headspace · 12 months"], "perk_months": [6, 12],
        "opens_at": [None, "2026-12-01 04:00:00+00:00"], "time_zone": ["UTC", KARACHI],
        "redeem_url": [None, "https://headspace.example/r/{code}"],
        "support_email": [None, "help@headspace.example"]}


def test_an_edit_that_changes_nothing_records_nothing(app, session):
    program = _create(app)
    _update(app, program.id)
    assert _audits(session) == [("test", "program.created", _audits(session)[0][2])]


def test_update_program_adds_changes_and_removes_country_quotas_as_set_quota_does(
        app, session, allocated_three):
    _update(app, allocated_three.id, name="Headspace · 6 months", quota=12,
            country_quotas={"PK": 5, "IN": 1})
    assert dict(_fresh(session, select(CountryQuota.country, CountryQuota.quota))) == {
        "PK": 5, "IN": 1}
    [(_, _, detail)] = _audits(session, "program.quota_changed")
    assert json.loads(detail) == {"quota": [10, 12], "PK": [3, 5], "IN": [None, 1]}
    _update(app, allocated_three.id, name="Headspace · 6 months", quota=12,
            country_quotas={"IN": 1})
    assert _fresh(session, select(CountryQuota.country)) == ["IN"]
    assert json.loads(_audits(session, "program.quota_changed")[-1][2]) == {"PK": [5, None]}


@pytest.mark.parametrize(("given", "field", "message"), [
    ({"quota": 2}, "quota", "quota 2 is below the 3 codes already allocated"),
    ({"country_quotas": {"PK": 1}}, "country-quota", "PK quota 1 is below the 2 codes"),
    ({"name": "Head\nBcc: x@evil.example"}, "name", "name must be one line"),
    ({"redeem_url": "javascript:alert('{code}')"}, "redeem-url", "redeem URL must be an http"),
    ({"opens_at": datetime(2026, 12, 2, 9), "closes_at": datetime(2026, 12, 2, 8)}, "closes",
     "the claim window closes before it opens"),
    ({"time_zone": "Karachi"}, "time-zone", "'Karachi' is not an IANA time zone"),
])
def test_update_program_refusals_change_nothing(app, session, allocated_three, given, field,
                                                message):
    before = _audits(session)
    with pytest.raises(InvalidInput) as refused:
        _update(app, allocated_three.id, **({"name": "Headspace · 6 months",
                                             "country_quotas": {"PK": 3}} | given))
    assert refused.value.field == field and str(refused.value).startswith(message)
    [program] = _fresh(session, select(Program))
    assert (program.name, program.quota, program.time_zone) == ("Headspace · 6 months", 10, "UTC")
    assert _fresh(session, select(CountryQuota.country, CountryQuota.quota)) == [("PK", 3)]
    assert _audits(session) == before


# --------------------------------------------------------------------------- open, pause, close


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _claiming(app, action, program_id, **kw):
    with app.app_context():
        return getattr(programs, f"{action}_claims")(get_session(), program_id=program_id,
                                                     actor="manager:7", **kw)


def _state(session, now=NOW) -> str:
    [program] = _fresh(session, select(Program))
    return program.window_state(now)


def test_open_now_moves_a_later_opening_to_now(app, session):
    program = _create(app, opens_at=NOW + timedelta(days=3))
    assert _state(session) == "not_open"
    _claiming(app, "open", program.id, now=NOW)
    assert _state(session) == "open"
    _claiming(app, "open", program.id, now=NOW + timedelta(minutes=1))  # already open
    [(actor, _, detail)] = _audits(session, "program.claims_opened")
    assert actor == "manager:7"
    assert json.loads(detail) == {"opens_at": [str(NOW + timedelta(days=3)), str(NOW)]}


def test_pause_refuses_new_claims_until_resumed(app, session, factory):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    factory.codes(program, ["HS-PAUSE-0001", "HS-PAUSE-0002"])
    with app.app_context():
        claims.request_claim(get_session(), program=program.slug, creator_id=2)
    _claiming(app, "pause", program.id)
    _claiming(app, "pause", program.id)  # a second pause changes nothing
    assert _state(session, datetime.now(UTC)) == "paused"
    with app.app_context(), pytest.raises(ClaimsPaused) as refused:
        claims.request_claim(get_session(), program=program.slug, creator_id=1)
    assert refused.value.code == "claims_paused"
    assert refused.value.params == {"name": "Headspace · 6 months"}
    assert _fresh(session, select(Claim.creator_id)) == [2]  # nothing recorded for ayesha
    with app.app_context():  # a claim made before the pause stands as it was
        assert claims.request_claim(get_session(), program=program.slug,
                                    creator_id=2).state == "allocated"
    _claiming(app, "resume", program.id)
    with app.app_context():
        assert claims.request_claim(get_session(), program=program.slug,
                                    creator_id=1).state in {"pending", "allocated"}
    assert [a for _, a, _ in _audits(session) if a.startswith("program.claims")] == [
        "program.claims_paused", "program.claims_resumed"]


def test_close_now_closes_and_ends_a_pause_and_nothing_reopens_it_but_an_edit(app, session):
    program = _create(app, opens_at=NOW - timedelta(days=1), closes_at=NOW + timedelta(days=9))
    _claiming(app, "pause", program.id, now=NOW)
    _claiming(app, "close", program.id, now=NOW)
    [stored] = _fresh(session, select(Program))
    assert (stored.closes_at, stored.claims_paused_at) == (NOW, None)
    assert stored.window_state(NOW) == "closed"
    for action, code in (("open", "program_closed"), ("pause", "program_closed")):
        with pytest.raises(Conflict) as refused:
            _claiming(app, action, program.id, now=NOW)
        assert refused.value.code == code
    _claiming(app, "close", program.id, now=NOW)  # closed already: nothing changes
    assert len(_audits(session, "program.claims_closed")) == 1


def test_closing_a_window_not_open_yet_closes_it_without_opening(app, session):
    program = _create(app, opens_at=NOW + timedelta(days=1))
    _claiming(app, "close", program.id, now=NOW)
    assert _state(session) == "closed"
    assert _state(session, NOW + timedelta(days=2)) == "closed"


def test_open_now_while_paused_asks_to_resume_first(app, session):
    program = _create(app, opens_at=NOW + timedelta(days=1))
    _claiming(app, "pause", program.id, now=NOW)
    with pytest.raises(Conflict) as refused:
        _claiming(app, "open", program.id, now=NOW)
    assert refused.value.code == "program_paused"
    assert _state(session) == "paused"
