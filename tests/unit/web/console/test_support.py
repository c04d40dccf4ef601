"""The eligibility list (search by email or handle prefix, keyset pages, add, remove or mark
ineligible) and one creator's support case (claims, mails, resend, reissue, remove) in the
console: managers act, viewers read, a refusal shows by its field with a 400 and changes
nothing, and no code is ever shown in clear."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from sqlmodel import select

from tests.helpers import csrf_token
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Claim, Code, Creator, Eligibility, OutboundEmail
from wellness_perks.services import claims, creators

SLUG = "headspace-6m"
LIST = f"/manage/programs/{SLUG}/creators"
CODES = ["HS-SUPP-AAAA-0001", "HS-SUPP-AAAA-0002", "HS-SUPP-AAAA-0003"]


def _case_path(creator_id: int) -> str:
    return f"{LIST}/{creator_id}"


def _post(browser, path, data=None, page=LIST):
    token = csrf_token(browser.get(page).text)
    return browser.post(path, data={"csrf_token": token, **(data or {})})


def _creator_id(session, email) -> int:
    session.rollback()
    return session.exec(select(Creator.id).where(Creator.email == email)).one()


def _audits(session):
    session.rollback()
    return [(e.actor, e.action) for e in session.exec(select(AuditEvent).where(
        AuditEvent.actor.like("manager:%"), AuditEvent.action != "manager.signed_in")
        .order_by(AuditEvent.id))]


def _errors(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for field, message in re.findall(r'data-field="([^"]+)">([^<]*)<', text):
        found.setdefault(field, []).append(unescape(message))
    return found


@pytest.fixture
def claimed(app, factory):
    """A program, three creators on its list, and ayesha holding a code."""
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com", "zara@example.com"])
    factory.codes(program, CODES)
    with app.app_context():
        ayesha = get_session().exec(
            select(Creator.id).where(Creator.email == "ayesha@example.com")).one()
        claims.request_claim(get_session(), program=SLUG, creator_id=ayesha)
    return program


# --------------------------------------------------------------------------- search


def test_search_finds_by_email_prefix_and_handle_prefix(claimed, manager_client):
    viewer = manager_client("viewer")
    page = viewer.get(LIST + "?q=AYE")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "ayesha@example.com" in page.text and "bilal@example.com" not in page.text
    page = viewer.get(LIST + "?q=@bil")
    assert "bilal@example.com" in page.text and "ayesha@example.com" not in page.text
    page = viewer.get(LIST + "?q=example")  # a prefix, not a substring
    assert "Nobody found." in page.text
    page = viewer.get(LIST + "?q=%25")  # a LIKE wildcard is a character like any other
    assert "Nobody found." in page.text
    everyone = viewer.get(LIST).text
    assert all(e in everyone for e in ("ayesha@", "bilal@", "zara@"))
    assert "Add one creator" not in everyone  # a viewer reads only
    assert "Remove" not in everyone


def test_search_pages_by_keyset(app, claimed, factory, session):
    factory.creators(claimed, [f"page{n:02d}@example.com" for n in range(7)])
    with app.app_context():
        first = creators.search_creators(get_session(), program_id=claimed.id, query="page",
                                         limit=3)
        second = creators.search_creators(get_session(), program_id=claimed.id,
                                          query="page", after=first.next_after, limit=3)
        third = creators.search_creators(get_session(), program_id=claimed.id,
                                         query="page", after=second.next_after, limit=3)
    emails = [c["email"] for p in (first, second, third) for c in p.creators]
    assert emails == [f"page{n:02d}@example.com" for n in range(7)]
    assert third.next_after is None and first.next_after == first.creators[-1]["id"]


def test_the_list_links_the_next_page(claimed, factory, manager_client, monkeypatch):
    monkeypatch.setattr(creators, "SEARCH_PAGE", 2)
    viewer = manager_client("viewer")
    page = viewer.get(LIST).text
    link = unescape(re.search(r'rel="next" href="([^"]+)"', page).group(1))
    assert "ayesha@" in page and "zara@" not in page
    rest = viewer.get(link).text
    assert "zara@" in rest and "ayesha@" not in rest and 'rel="next"' not in rest
    assert viewer.get(LIST + "?after=x").status_code == 400


# --------------------------------------------------------------------------- add, remove


def test_a_manager_adds_one_creator(claimed, manager_client, session):
    manager = manager_client("manager")
    response = _post(manager, LIST, {"email": "New@Example.com", "handle": "@new",
                                     "country": "pk"})
    assert response.status_code == 302
    creator_id = _creator_id(session, "new@example.com")
    assert response.headers["Location"] == _case_path(creator_id)
    assert session.exec(select(Eligibility).where(
        Eligibility.creator_id == creator_id)).one().program_id == claimed.id
    assert _audits(session)[-1] == (f"manager:{manager.manager_id}", "creator.added")


@pytest.mark.parametrize("data, field", [
    ({"email": "", "handle": "@x", "country": "PK"}, "email"),
    ({"email": "not-an-email", "handle": "@x", "country": "PK"}, "email"),
    ({"email": "x@example.com", "handle": "", "country": "PK"}, "handle"),
    ({"email": "x@example.com", "handle": "@x", "country": "Narnia"}, "country"),
])
def test_a_bad_creator_is_refused_by_its_field(claimed, manager_client, session, data, field):
    manager = manager_client("manager")
    before = _audits(session)
    response = _post(manager, LIST, data)
    assert response.status_code == 400
    assert field in _errors(response.text), response.text
    session.rollback()
    assert session.exec(select(Creator).where(Creator.email == "x@example.com")).first() is None
    assert _audits(session) == before


def test_adding_someone_already_listed_is_refused(claimed, manager_client, session):
    before = _audits(session)
    response = _post(manager_client("manager"), LIST, {
        "email": "bilal@example.com", "handle": "@bilal", "country": "PK"})
    assert response.status_code == 400
    assert "bilal@example.com is already on this program's list" in unescape(response.text)
    assert _audits(session) == before


def test_marking_ineligible_refuses_a_waiting_claim(app, claimed, manager_client, session):
    bilal = _creator_id(session, "bilal@example.com")
    with app.app_context():
        get_session().add(Claim(program_id=claimed.id, creator_id=bilal, state="pending",
                                country="PK", requested_at=datetime.now(UTC)))
        get_session().commit()
    manager = manager_client("manager")
    no_reason = _post(manager, f"{_case_path(bilal)}/remove", {"origin": "list", "reason": ""})
    assert no_reason.status_code == 400 and "reason" in _errors(no_reason.text)
    response = _post(manager, f"{_case_path(bilal)}/remove",
                     {"origin": "list", "reason": "not a creator any more"})
    assert response.status_code == 302 and response.headers["Location"] == LIST
    session.rollback()
    claim = session.exec(select(Claim).where(Claim.creator_id == bilal)).one()
    assert (claim.state, claim.reason) == ("refused", "removed_from_list")
    assert bilal not in [c for c in session.exec(select(Eligibility.creator_id))]
    case = manager.get(_case_path(bilal)).text
    assert "Refused" in case and "no longer on this program" in case
    assert "bilal@example.com" not in manager.get(LIST).text
    again = _post(manager, f"{_case_path(bilal)}/remove", {"reason": "twice"})
    assert again.status_code == 400 and "is not on this program" in unescape(again.text)


# --------------------------------------------------------------------------- support case


def test_the_case_shows_claims_and_mails_and_never_a_code_in_clear(app, claimed,
                                                                   manager_client, session):
    ayesha = _creator_id(session, "ayesha@example.com")
    for role in ("viewer", "manager", "admin"):
        browser = manager_client(role)
        page = browser.get(_case_path(ayesha))
        assert page.status_code == 200
        assert "Allocated" in page.text and "HS-****-" in page.text
        assert "Your code" in page.text  # the redemption mail, by kind
        assert ("Resend the code mail" in page.text) == (role != "viewer")
        for code in CODES:
            for path in (_case_path(ayesha), LIST, LIST + "?q=a", f"/manage/programs/{SLUG}"):
                assert code not in browser.get(path).text
    assert manager_client("viewer").get(_case_path(999999)).status_code == 404


def test_resend_is_throttled_and_the_refusal_shown(app, claimed, manager_client, session):
    ayesha = _creator_id(session, "ayesha@example.com")
    manager = manager_client("manager")
    page = _case_path(ayesha)
    before = _audits(session)
    response = _post(manager, f"{page}/resend", page=page)
    assert response.status_code == 400  # the redemption mail was queued just now
    assert "it can be sent again in" in unescape(response.text)
    assert _audits(session) == before
    session.rollback()
    for mail in session.exec(select(OutboundEmail).where(OutboundEmail.creator_id == ayesha)):
        mail.created_at = datetime.now(UTC) - timedelta(hours=2)
        session.add(mail)
    session.commit()
    response = _post(manager, f"{page}/resend", page=page)
    assert response.status_code == 302, response.text
    assert _audits(session)[-1][0] == f"manager:{manager.manager_id}"
    again = _post(manager, f"{page}/resend", page=page)
    assert again.status_code == 400 and "it can be sent again in" in unescape(again.text)
    bilal = _creator_id(session, "bilal@example.com")
    none = _post(manager, f"{_case_path(bilal)}/resend", page=_case_path(bilal))
    assert none.status_code == 400 and "holds no code" in none.text


def test_reissue_needs_a_reason_and_gives_a_new_code(app, claimed, manager_client, session):
    ayesha = _creator_id(session, "ayesha@example.com")
    manager = manager_client("manager")
    page = _case_path(ayesha)
    session.rollback()
    old = session.exec(select(Claim.code_id).where(Claim.creator_id == ayesha)).one()
    before = _audits(session)
    for reason in ("", "   "):
        response = _post(manager, f"{page}/reissue", {"reason": reason}, page=page)
        assert response.status_code == 400
        assert _errors(response.text).get("reason"), response.text
    assert _audits(session) == before
    session.rollback()
    assert session.exec(select(Claim.code_id).where(Claim.creator_id == ayesha)).one() == old
    response = _post(manager, f"{page}/reissue", {"reason": "code did not work"}, page=page)
    assert response.status_code == 302, response.text
    session.rollback()
    claim = session.exec(select(Claim).where(Claim.creator_id == ayesha)).one()
    assert claim.code_id != old and claim.state == "allocated"
    assert session.get(Code, old, populate_existing=True).status == "void"
    assert _audits(session)[-1] == (f"manager:{manager.manager_id}", "claim.reissued")
    text = manager.get(page).text
    assert "Your new code" in text and all(code not in text for code in CODES)


def test_the_dashboard_and_the_edit_page_link_the_creators(claimed, manager_client):
    manager = manager_client("manager")
    for page in (f"/manage/programs/{SLUG}", f"/manage/programs/{SLUG}/edit"):
        assert f'href="{LIST}"' in manager.get(page).text, page


def test_removing_from_the_case_page_shows_its_refusal_there(claimed, manager_client,
                                                            session):
    ayesha = _creator_id(session, "ayesha@example.com")
    manager = manager_client("manager")
    page = _case_path(ayesha)
    response = _post(manager, f"{page}/remove", {"reason": ""}, page=page)
    assert response.status_code == 400 and "reason" in _errors(response.text)
    assert "Support" in response.text  # the case page again, not the list
    response = _post(manager, f"{page}/remove", {"reason": "left the agency"}, page=page)
    assert response.status_code == 302 and response.headers["Location"] == page
    session.rollback()
    claim = session.exec(select(Claim).where(Claim.creator_id == ayesha)).one()
    assert claim.state == "allocated"  # a claim holding a code is left alone
    assert "not on the list" in manager.get(page).text
    assert _audits(session)[-1] == (f"manager:{manager.manager_id}", "creator.removed_from_list")


def test_a_reason_too_long_is_told_with_the_limit_that_was_passed(app):
    """One message for every audited action's reason: the limit is the refusal's own (200 for a
    removal or reissue, 500 for a reveal), never another action's."""
    template = app.jinja_env.from_string(
        '{% import "messages.html" as words %}{{ words.say(message) }}')
    with app.test_request_context():
        for limit in (200, 500):
            text = template.render(message={"code": "reason_too_long", "limit": limit})
            assert text == f"The reason can't be longer than {limit} characters."


def test_the_case_links_an_allocated_claims_masked_code_to_its_reveal(claimed, manager_client,
                                                                      session):
    """Managers and up follow the masked code to the audited reveal (a reason asked there);
    viewers see the masked code only; a claim holding no code links nothing."""
    ayesha = _creator_id(session, "ayesha@example.com")
    bilal = _creator_id(session, "bilal@example.com")
    session.add(Claim(program_id=claimed.id, creator_id=bilal, country="PK"))  # pending
    session.commit()
    claim_ids = dict(session.exec(select(Claim.creator_id, Claim.id)).all())
    reveal = f"/manage/programs/{SLUG}/claims/{claim_ids[ayesha]}/reveal"
    link = re.compile(r'<a href="([^"]*/claims/\d+/reveal)"[^>]*><code>HS-\*\*\*\*-[^<]*</code>')
    for role in ("viewer", "manager", "admin"):
        page = manager_client(role).get(_case_path(ayesha)).text
        assert link.findall(page) == ([] if role == "viewer" else [reveal]), page
        assert "HS-****-" in page
    manager = manager_client("manager")
    assert "/reveal" not in manager.get(_case_path(bilal)).text  # waiting: nothing to reveal
    form = manager.get(reveal)
    assert form.status_code == 200 and 'name="reason"' in form.text
    assert all(code not in form.text for code in CODES)
    assert manager_client("viewer").get(reveal).status_code == 403
