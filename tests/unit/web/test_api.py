"""The JSON API (``/api/v1``): a bearer token or 401 with ``WWW-Authenticate: Bearer``, the
token's role or 403, errors as JSON (never a page), no cookie as a credential, no cache, and
the list of programs as the command line's ``list-programs --json`` gives it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD
from tests.helpers import csrf_token
from wellness_perks import web
from wellness_perks.db import get_session, new_session
from wellness_perks.models import ApiToken
from wellness_perks.services import api_tokens, auth, programs

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

PROGRAMS = "/api/v1/programs"


@pytest.fixture
def make_token(app):
    """``make_token(role, **options)``: a new API token's text, made by an admin."""
    with app.app_context(), new_session() as session:
        admin = auth.create_manager(session, email="admin@platform.example",
                                    password=MANAGER_PASSWORD, role="admin", actor="test").id

    def _make(role: str = "viewer", **options) -> str:
        with app.app_context(), new_session() as session:
            return api_tokens.create(session, name=f"{role} script", role=role,
                                     created_by=admin, actor="test", **options).token

    _make.admin = admin
    return _make


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_programs_lists_every_program_as_list_programs_does(app, client, factory, make_token,
                                                            session):
    factory.program()
    paused = factory.program(slug="calm-1y", name="Calm", quota=5)
    with app.app_context():
        programs.pause_claims(get_session(), program_id=paused.id, actor="test")
        expected = programs.program_summaries(get_session())
    before = datetime.now(UTC)
    response = client.get(PROGRAMS, headers=_bearer(make_token("viewer")))
    assert response.status_code == 200 and response.is_json
    session.rollback()
    [used] = session.exec(select(ApiToken.last_used_at)).all()  # the use is noted
    assert used is not None and used >= before - timedelta(seconds=1)
    assert response.headers["Cache-Control"] == "no-store"
    listed = response.json["programs"]
    assert [p["program"] for p in listed] == ["calm-1y", "headspace-6m"]
    assert [p["window"] for p in listed] == ["paused", "open"]
    # "now" differs between the two reads only if a window turns in between: not here
    assert listed == expected
    expected_body = response.json
    assert "code" not in response.text
    assert set(listed[0]) == {"program", "name", "window", "opens_at", "closes_at", "quota",
                              "allocated", "remaining", "in_stock", "claims", "claims_total"}
    for role in ("manager", "admin"):  # every role includes the viewer's
        assert client.get(PROGRAMS, headers=_bearer(make_token(role))).json == expected_body


def _refused(response, status: int, code: str, challenge: str | None):
    assert response.status_code == status, response.text
    assert response.is_json and response.json["error"] == code and response.json["message"]
    assert response.headers.get("WWW-Authenticate") == challenge
    assert "<html" not in response.text


def test_no_token_or_one_that_names_no_one_is_a_401_with_a_bearer_challenge(app, client,
                                                                           make_token):
    token = make_token()
    expired = make_token(expires_in_days=1, now=datetime.now(UTC) - timedelta(days=2))
    revoked = make_token()
    with app.app_context():
        api_tokens.revoke(get_session(), prefix=revoked[4:16], revoked_by=None, actor="test")
    challenge = 'Bearer realm="wellness-perks"'
    invalid = challenge + ', error="invalid_token"'
    _refused(client.get(PROGRAMS), 401, "api_token_required", challenge)
    _refused(client.get(PROGRAMS, headers={"Authorization": f"Basic {token}"}), 401,
             "api_token_required", challenge)
    _refused(client.get(PROGRAMS, headers={"Authorization": "Bearer "}), 401,
             "api_token_required", challenge)
    for presented in (token[:-2] + "xx", "wpt_000000000000_" + token[17:], "not-a-token",
                      expired, revoked):
        _refused(client.get(PROGRAMS, headers=_bearer(presented)), 401, "api_token_invalid",
                 invalid)
    assert client.get(PROGRAMS, headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_a_signed_in_console_session_is_no_api_credential(client, manager_client):
    admin = manager_client("admin")
    assert admin.get("/manage/").status_code == 200
    _refused(admin.get(PROGRAMS), 401, "api_token_required", 'Bearer realm="wellness-perks"')


def test_a_token_is_no_console_credential_and_skips_no_console_csrf(app, make_token,
                                                                    manager_client):
    token = make_token("admin")
    browser = app.test_client()
    response = browser.get("/manage/", headers=_bearer(token))
    assert response.status_code == 302 and response.headers["Location"].startswith(
        "/manage/login")
    # A cookie session's form posts still need their CSRF token, bearer header or not.
    admin = manager_client("admin")
    page = admin.get("/manage/managers/new")
    assert csrf_token(page.text)
    response = admin.post("/manage/managers/new", headers=_bearer(token),
                          data={"email": "x@platform.example", "role": "viewer"})
    assert response.status_code == 400 and "This form has expired" in response.text


def test_the_api_alone_is_exempt_from_csrf():
    exempt = {blueprint.name for blueprint, protected in web.SURFACES if not protected}
    assert exempt == {"api"}


def test_unknown_paths_and_methods_under_the_api_answer_json(client, make_token):
    headers = _bearer(make_token())
    missing = client.get("/api/v1/no-such-thing", headers=headers)
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong = client.post(PROGRAMS, headers=headers)
    assert wrong.status_code == 405 and wrong.json["error"] == "method_not_allowed"
    assert "<html" not in missing.text + wrong.text


def test_the_token_limit_answers_429_in_json(app_config, factory, make_token):
    from wellness_perks import create_app

    limited = create_app({**app_config, "RATELIMIT_API_TOKEN": "2 per minute"})
    client = limited.test_client()
    token = make_token()
    answers = [client.get(PROGRAMS, headers=_bearer(token)).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    response = client.get(PROGRAMS, headers=_bearer(token))
    assert response.json["error"] == "too_many_api_requests" and response.headers["Retry-After"]
    limited.extensions["db_engine"].dispose()


def test_a_token_of_a_lesser_role_is_a_403(app_config, app, make_token):
    from flask import Blueprint

    from wellness_perks import create_app
    from wellness_perks.web.security import token_role_required

    probed = create_app(app_config)
    bp = Blueprint("api_admin_probe", __name__, url_prefix="/api/v1/admin-probe")

    @bp.route("/")
    @token_role_required("admin")
    def probe():
        return {"ok": True}

    web.register(probed, bp, csrf_protected=False)
    client = probed.test_client()
    for role in ("viewer", "manager"):
        _refused(client.get("/api/v1/admin-probe/", headers=_bearer(make_token(role))), 403,
                 "api_token_role_too_low",
                 'Bearer realm="wellness-perks", error="insufficient_scope"')
    assert client.get("/api/v1/admin-probe/",
                      headers=_bearer(make_token("admin"))).json == {"ok": True}
    probed.extensions["db_engine"].dispose()
