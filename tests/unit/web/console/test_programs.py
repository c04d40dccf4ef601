"""Programs in the console: admins create them, managers edit them and open, pause, resume and
close claiming; viewers and creators are turned away; bad input is answered by the field with
its message (400) and changes nothing; a paused program refuses a claim through the portal."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from sqlmodel import select

from tests.helpers import csrf_token
from wellness_perks.models import AuditEvent, Claim, CountryQuota, Manager, Program

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

SLUG = "headspace-6m"
EDIT = f"/manage/programs/{SLUG}/edit"
NEW = "/manage/programs/new"
ACTIONS = [f"/manage/programs/{SLUG}/{action}" for action in ("open", "pause", "resume",
                                                               "close")]


def _fresh(session, statement):
    session.rollback()
    return session.exec(statement.execution_options(populate_existing=True)).all()


def _program(session) -> Program:
    [program] = _fresh(session, select(Program).where(Program.slug == SLUG))
    return program


def _audits(session):
    return [(e.actor, e.action, e.detail) for e in
            _fresh(session, select(AuditEvent).where(AuditEvent.object_type == "program")
                   .order_by(AuditEvent.id))]


def _form(page_text: str) -> dict[str, str]:
    """The program form's fields as the page fills them."""
    fields = dict(re.findall(r'<input[^>]*name="([a-z_]+)"[^>]*value="([^"]*)"', page_text))
    fields |= {name: unescape(value) for name, value in
               re.findall(r'<textarea[^>]*name="([a-z_]+)"[^>]*>\s*([^<]*)</textarea>',
                          page_text)}
    [zone] = re.findall(r'<option selected value="([^"]+)"', page_text) or [
        re.search(r'<option value="([^"]+)" selected', page_text).group(1)]
    fields["time_zone"] = zone
    fields.pop("csrf_token", None)
    return {k: unescape(v) for k, v in fields.items()}


def _post(browser, path, data=None, page=None):
    token = csrf_token(browser.get(page or path).text)
    return browser.post(path, data={"csrf_token": token, **(data or {})})


NEW_PROGRAM = {"name": "Calm · 1 year", "slug": "calm-1y", "quota": "500",
               "country_quotas": "PK=200\nIN=100", "perk_months": "12",
               "opens_at": "2026-12-01T09:00", "closes_at": "2027-01-31T21:00",
               "time_zone": "Asia/Karachi", "redeem_url": "https://calm.example/r?c={code}",
               "support_email": "help@calm.example"}


# --------------------------------------------------------------------------- who may


@pytest.mark.parametrize("path", [NEW, EDIT])
def test_anonymous_visitors_are_sent_to_sign_in(client, factory, path):
    factory.program()
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/manage/login?next=")


def test_creators_get_403_everywhere(factory, signed_in):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    creator = signed_in("ayesha@example.com")
    for path in (NEW, EDIT):
        assert creator.get(path).status_code == 403, path
    token = csrf_token(creator.get(f"/programs/{SLUG}").text)
    for path in ACTIONS + [NEW, EDIT]:
        assert creator.post(path, data={"csrf_token": token}).status_code == 403, path


def test_viewers_see_the_list_but_cannot_edit_or_create(factory, manager_client, session):
    factory.program()
    viewer = manager_client("viewer")
    listing = viewer.get("/manage/")
    assert listing.status_code == 200 and EDIT not in listing.text and NEW not in listing.text
    token = csrf_token(listing.text)
    for path in (NEW, EDIT):
        assert viewer.get(path).status_code == 403, path
    for path in ACTIONS + [NEW, EDIT]:
        assert viewer.post(path, data={"csrf_token": token, "name": "x"}).status_code == 403
    assert _program(session).claims_paused_at is None


def test_managers_edit_but_do_not_create(factory, manager_client, session):
    factory.program()
    manager = manager_client("manager")
    listing = manager.get("/manage/")
    assert EDIT in listing.text and NEW not in listing.text
    assert manager.get(NEW).status_code == 403
    assert _post(manager, NEW, NEW_PROGRAM, page=EDIT).status_code == 403
    assert _fresh(session, select(Program.slug)) == [SLUG]
    assert manager.get(EDIT).status_code == 200


# --------------------------------------------------------------------------- create


def test_an_admin_creates_a_program_opening_at_nine_in_karachi(manager_client, session):
    admin = manager_client("admin")
    assert NEW in admin.get("/manage/").text
    response = _post(admin, NEW, NEW_PROGRAM)
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == "/manage/programs/calm-1y/edit"
    [program] = _fresh(session, select(Program))
    assert program.opens_at == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)  # stored in UTC
    assert program.closes_at == datetime(2027, 1, 31, 16, 0, tzinfo=UTC)
    assert (program.time_zone, program.quota, program.perk_months) == ("Asia/Karachi", 500, 12)
    assert program.support_email == "help@calm.example"
    assert dict(_fresh(session, select(CountryQuota.country, CountryQuota.quota))) == {
        "PK": 200, "IN": 100}
    [manager_id] = _fresh(session, select(Manager.id))
    [(actor, action, _)] = _audits(session)
    assert (actor, action) == (f"manager:{manager_id}", "program.created")
    page = admin.get(response.headers["Location"])
    assert "Program Calm · 1 year created." in unescape(page.text)
    # Shown back in its own zone: the form holds 09:00, the summary both.
    assert _form(page.text)["opens_at"] == "2026-12-01T09:00"
    assert "Opens 2026-12-01 09:00 Asia/Karachi (2026-12-01 04:00 UTC)" in page.text


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"slug": "Calm 1y"}, "slug", "slug must be 2 to 64 lower-case letters"),
    ({"quota": "-5"}, "quota", "Enter a whole number, zero or more."),
    ({"quota": "lots"}, "quota", "Enter a whole number, zero or more."),
    ({"opens_at": "1 December"}, "opens_at", "Enter a date and time like 2026-12-01T09:00."),
    ({"time_zone": "Asia/Lahore"}, "time_zone", "'Asia/Lahore' is not an IANA time zone"),
    ({"redeem_url": "https://calm.example/redeem"}, "redeem_url",
     "redeem URL must contain {code}"),
    ({"redeem_url": "javascript:alert('{code}')"}, "redeem_url", "redeem URL must be an http"),
    ({"support_email": "help at calm"}, "support_email", "support contact: not a valid"),
    ({"country_quotas": "PK=lots"}, "country_quotas", "country quota 'PK=lots' must look like"),
    ({"country_quotas": "XX=5"}, "country_quotas", "'XX' is not an ISO 3166-1 alpha-2"),
    ({"closes_at": "2026-11-30T09:00"}, "closes_at", "the claim window closes before it opens"),
    ({"name": ""}, "name", "Enter the program's name."),
])
def test_bad_input_is_answered_by_its_field_and_creates_nothing(manager_client, session,
                                                                change, field, message):
    admin = manager_client("admin")
    response = _post(admin, NEW, NEW_PROGRAM | change)
    assert response.status_code == 400
    errors = re.findall(r'data-field="([a-z_]+)">([^<]*)<', response.text)
    assert [(f, unescape(m)) for f, m in errors if f == field], errors
    [(_, shown)] = [(f, unescape(m)) for f, m in errors if f == field]
    assert shown.startswith(message), shown
    assert _fresh(session, select(Program)) == [] and _audits(session) == []


def test_a_slug_taken_is_answered_on_the_slug(factory, manager_client, session):
    factory.program(slug="calm-1y", name="First")
    response = _post(manager_client("admin"), NEW, NEW_PROGRAM)
    assert response.status_code == 400
    assert "a program with slug &#39;calm-1y&#39; already exists" in response.text
    assert _fresh(session, select(Program.name)) == ["First"]


# --------------------------------------------------------------------------- edit


def test_a_manager_edits_a_program_and_each_change_is_audited(factory, manager_client,
                                                              session):
    factory.program(quota=10, country_quotas={"PK": 3})
    manager = manager_client("manager")
    page = manager.get(EDIT)
    fields = _form(page.text)
    assert fields["quota"] == "10" and fields["country_quotas"] == "PK=3"
    response = _post(manager, EDIT, fields | {
        "quota": "20", "country_quotas": "IN=4", "time_zone": "Asia/Karachi",
        "opens_at": "2026-12-01T09:00", "closes_at": "", "support_email": "help@hs.example"})
    assert response.status_code == 302, response.text
    program = _program(session)
    assert (program.quota, program.opens_at, program.closes_at) == (
        20, datetime(2026, 12, 1, 4, 0, tzinfo=UTC), None)
    assert _fresh(session, select(CountryQuota.country, CountryQuota.quota)) == [("IN", 4)]
    [manager_id] = _fresh(session, select(Manager.id))
    updated, quotas = [(a, json.loads(d)) for actor, a, d in _audits(session)
                       if actor == f"manager:{manager_id}"]
    assert updated[0] == "program.updated"
    assert updated[1]["time_zone"] == ["UTC", "Asia/Karachi"]
    assert updated[1]["support_email"] == [None, "help@hs.example"]
    assert quotas == ("program.quota_changed",
                      {"quota": [10, 20], "PK": [3, None], "IN": [None, 4]})
    assert "Program Headspace · 6 months saved." in unescape(manager.get(EDIT).text)


def test_an_edit_below_what_is_allocated_is_refused_on_the_field(
        app, factory, manager_client, session):
    from wellness_perks.db import get_session
    from wellness_perks.services import claims

    program = factory.program(quota=10, country_quotas={"PK": 3})
    factory.creators(program, ["a@example.com", "b@example.com"])
    factory.codes(program, ["HS-EDIT-0001", "HS-EDIT-0002"])
    with app.app_context():
        for creator_id in (1, 2):
            claims.request_claim(get_session(), program=SLUG, creator_id=creator_id)
    manager = manager_client("manager")
    fields = _form(manager.get(EDIT).text)
    before = _audits(session)
    for change, field, message in (
            ({"quota": "1"}, "quota", "quota 1 is below the 2 codes already allocated"),
            ({"country_quotas": "PK=1"}, "country_quotas", "PK quota 1 is below the 2 codes")):
        response = _post(manager, EDIT, fields | change)
        assert response.status_code == 400
        assert re.search(f'data-field="{field}">{re.escape(message)}', unescape(response.text))
    assert (_program(session).quota, _audits(session)) == (10, before)


def test_an_unknown_program_is_404(manager_client):
    assert manager_client("manager").get("/manage/programs/nope/edit").status_code == 404


# --------------------------------------------------------------------------- claiming


def test_open_pause_resume_and_close_from_the_edit_page(factory, manager_client, session):
    factory.program(opens_at=datetime.now(UTC) + timedelta(days=2))
    manager = manager_client("manager")
    seen = []
    for action in ("open", "pause", "resume", "close"):
        page = manager.get(EDIT)
        assert f'action="/manage/programs/{SLUG}/{action}"' in page.text, action
        response = manager.post(f"/manage/programs/{SLUG}/{action}",
                                data={"csrf_token": csrf_token(page.text)})
        assert response.status_code == 302 and response.headers["Location"] == EDIT
        seen.append(_program(session).window_state(datetime.now(UTC)))
    assert seen == ["open", "paused", "open", "closed"]
    page = manager.get(EDIT)
    assert "Claiming of Headspace · 6 months is closed." in unescape(page.text)
    assert "/open\"" not in page.text and "/pause\"" not in page.text
    assert [a for _, a, _ in _audits(session)][1:] == [
        "program.claims_opened", "program.claims_paused", "program.claims_resumed",
        "program.claims_closed"]
    # Closed: pausing is refused with its reason, nothing changes.
    response = manager.post(f"/manage/programs/{SLUG}/pause",
                            data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 302
    assert "has closed: to reopen it, set a later closing time" in manager.get(EDIT).text
    assert len(_audits(session)) == 5


def test_a_paused_program_refuses_a_claim_through_the_portal(factory, manager_client,
                                                             signed_in, session):
    program = factory.program(support_email="help@hs.example")
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-PAUSE-0001"])
    creator = signed_in("ayesha@example.com")
    page = creator.get(f"/programs/{SLUG}")
    token = csrf_token(page.text)
    assert "help@hs.example" in page.text  # the support contact, on the program page
    manager = manager_client("manager")
    _post(manager, f"/manage/programs/{SLUG}/pause", page=EDIT)
    response = creator.post(f"/programs/{SLUG}/claim", data={"csrf_token": token})
    assert response.status_code == 302
    shown = unescape(creator.get(f"/programs/{SLUG}").text)
    assert "Claims for Headspace · 6 months are paused for now. Nothing was recorded" in shown
    assert "Claims are paused for now." in shown and "<button" not in shown.split("<main")[1]
    assert _fresh(session, select(Claim)) == []
    _post(manager, f"/manage/programs/{SLUG}/resume", page=EDIT)
    creator.post(f"/programs/{SLUG}/claim", data={"csrf_token": token})
    assert [c.state for c in _fresh(session, select(Claim))] == ["allocated"]


def test_creators_see_the_opening_time_in_the_programs_zone(factory, signed_in):
    program = factory.program(opens_at=datetime(2027, 12, 1, 9, 0), time_zone="Asia/Karachi",
                              closes_at=datetime(2027, 12, 31, 9, 0))
    factory.creators(program, ["ayesha@example.com"])
    page = signed_in("ayesha@example.com").get(f"/programs/{SLUG}")
    assert "Claims open on 2027-12-01 09:00 Asia/Karachi (2027-12-01 04:00 UTC)." in page.text
