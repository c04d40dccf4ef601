"""Who may reach what: a view names the kinds of user it lets in; a session names its user by
kind and id."""

from __future__ import annotations

import pytest
from flask import Blueprint
from sqlmodel import select

from tests.helpers import csrf_token
from wellness_perks import create_app, web
from wellness_perks.models import Claim, Creator
from wellness_perks.web.security import CreatorUser, kind_required, load_user

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only


def test_a_session_names_its_user_by_kind_id_and_session_version(app, factory, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    ayesha = session.exec(select(Creator).where(Creator.email == "ayesha@example.com")).one()
    with app.test_request_context():
        creator = load_user(f"c:{ayesha.id}:0")
        assert isinstance(creator, CreatorUser) and creator.creator_id == ayesha.id
        assert creator.email == "ayesha@example.com" and creator.locale == "en"
        assert creator.get_id() == f"c:{ayesha.id}:0" and creator.kind == "creator"
        assert load_user(f"c:{ayesha.id}:1") is None  # a version not begun yet
        assert load_user(f"c:{ayesha.id}") is None  # a session from before versions
        assert load_user("c:999999:0") is None  # nobody
        assert load_user(f"x:{ayesha.id}:0") is None  # a kind nobody has
        assert load_user("c:twelve:0") is None
        assert load_user("12") is None


@pytest.fixture
def staff_app(app, app_config):
    """An app (on the emptied tables of ``app``) with a view only another kind of user may
    see."""
    app = create_app(app_config)
    bp = Blueprint("staff", __name__)

    @bp.route("/staff-only")
    @kind_required("manager")
    def staff_only():
        return "staff"

    web.register(app, bp)
    yield app
    app.extensions["db_engine"].dispose()


def test_a_view_refuses_other_kinds_and_sends_strangers_to_sign_in(staff_app, smtp_server):
    from tests.conftest import Factory, sign_in

    client = staff_app.test_client()
    anonymous = client.get("/staff-only")
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/login")
    program = Factory(staff_app).program()
    Factory(staff_app).creators(program, ["ayesha@example.com"])
    sign_in(client, smtp_server, "ayesha@example.com")
    assert client.get("/staff-only").status_code == 403
    assert client.get("/").status_code == 200  # the creator's own pages


def test_a_claim_without_a_session_is_sent_to_sign_in_and_records_nothing(
        client, factory, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    token = csrf_token(client.get("/login").text)  # a valid token of an anonymous session
    response = client.post(f"/programs/{program.slug}/claim", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert session.exec(select(Claim)).all() == []


def test_nobody_signed_in_gets_json_401_from_the_api_and_a_sign_in_page_elsewhere(app_config,
                                                                                  app):
    staff = create_app(app_config)
    bp = Blueprint("api_probe", __name__, url_prefix="/api/probe")

    @bp.route("/")
    @kind_required("manager")
    def probe():
        return {"ok": True}

    web.register(staff, bp, csrf_protected=False)
    client = staff.test_client()
    response = client.get("/api/probe/")
    assert response.status_code == 401
    assert response.json == {"error": "sign_in_required", "message": "Sign in to see your perks."}
    page = client.get("/", follow_redirects=True)
    assert "Sign in to see your perks." in page.text and "Email me a sign-in link" in page.text
    staff.extensions["db_engine"].dispose()
