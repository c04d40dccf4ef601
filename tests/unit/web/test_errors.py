"""Error answers: an HTML page for pages, JSON under /api/ (and for clients that ask for it),
the words from the message catalogue; CSRF is on for form posts, off for an exempted surface."""

from __future__ import annotations

import pytest
from flask import Blueprint, abort

from tests.helpers import csrf_token
from wellness_perks import create_app, web
from wellness_perks.services.errors import Conflict

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only


def _api_blueprint(name: str) -> Blueprint:
    """A surface under /api/ like the token-authenticated API to come."""
    bp = Blueprint(name, __name__, url_prefix="/api/test")

    @bp.route("/echo", methods=["POST"])
    def echo():
        return {"ok": True}

    @bp.route("/conflict")
    def conflict():
        raise Conflict("this program is already closed")

    @bp.route("/forbidden")
    def forbidden():
        abort(403)

    @bp.route("/crash")
    def crash():
        raise RuntimeError("boom")

    return bp


@pytest.fixture
def api_app(app_config):
    app = create_app(app_config)
    web.register(app, _api_blueprint("open_api"), csrf_protected=False)
    protected = _api_blueprint("protected_api")
    protected.url_prefix = "/api/protected"
    web.register(app, protected)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a crash answers as it would in production
    yield app
    app.extensions["db_engine"].dispose()


def test_a_missing_page_is_an_html_page(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "<h1>Not found</h1>" in response.text


def test_a_missing_api_path_is_json(client):
    response = client.get("/api/no-such-thing")
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.json["error"] == "not_found" and "not found" in response.json["message"]


def test_a_client_that_asks_for_json_gets_json(client):
    response = client.get("/no-such-page", headers={"Accept": "application/json"})
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_api_errors_carry_their_code_and_words(api_app):
    client = api_app.test_client()
    conflict = client.get("/api/test/conflict")
    assert conflict.status_code == 409
    assert conflict.json == {"error": "conflict", "message": "this program is already closed"}
    assert client.get("/api/test/forbidden").json["error"] == "forbidden"
    crash = client.get("/api/test/crash")
    assert crash.status_code == 500 and crash.json["error"] == "internal_error"
    assert "boom" not in crash.text
    wrong_method = client.get("/api/test/echo")
    assert wrong_method.status_code == 405 and wrong_method.json["error"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["Allow"]


def test_an_exempted_surface_takes_posts_without_a_csrf_token(api_app):
    response = api_app.test_client().post("/api/test/echo", json={})
    assert response.status_code == 200 and response.json == {"ok": True}


def test_a_protected_surface_refuses_posts_without_a_csrf_token(api_app):
    response = api_app.test_client().post("/api/protected/echo", json={})
    assert response.status_code == 400 and response.json["error"] == "form_expired"


def test_a_form_post_without_its_token_is_refused_with_a_page(client):
    response = client.post("/login", data={"email": "ayesha@example.com"})
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert "This form has expired" in response.text


def test_a_form_post_with_its_token_is_taken(client):
    page = client.get("/login")
    response = client.post("/login", data={"email": "nobody@example.com",
                                           "csrf_token": csrf_token(page.text)})
    assert response.status_code == 302
