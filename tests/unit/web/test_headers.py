"""Security headers on every answer of the real app: portal and sign-in pages, errors, JSON and
static files; pages with no inline script or style for the policy to have to allow; HSTS only
for an https install, and no redirect to https in development."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from flask import Blueprint

from tests.helpers import FOLLOW_SCRIPT, csrf_token
from wellness_perks import create_app, dispatch, web

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

EXPECTED = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _policy(response) -> dict[str, str]:
    header = response.headers.get("Content-Security-Policy", "")
    directives = (part.strip().split(None, 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in directives}


def assert_protected(response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    policy = _policy(response)
    assert policy["default-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    for directive in ("default-src", "script-src", "style-src"):
        assert "unsafe-inline" not in policy.get(directive, "")
        assert "unsafe-eval" not in policy.get(directive, "")
    assert "Strict-Transport-Security" not in response.headers  # an http install


class _InlineFinder(HTMLParser):
    """What a policy without 'unsafe-inline' would block: inline scripts and styles, event
    handler attributes, javascript: links."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and not attributes.get("src"):
            self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith(
                    "javascript:"):
                self.found.append(f"<{tag} {name}=javascript:...>")


def assert_no_inline_code(html: str) -> None:
    finder = _InlineFinder()
    finder.feed(html)
    assert finder.found == []


@pytest.fixture
def creator_with_a_code(client, factory, signed_in):
    program = factory.program(quota=5)
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    signed_in("ayesha@example.com")
    page = client.get("/programs/headspace-6m")
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    return client


def test_sign_in_pages_carry_every_header_and_no_inline_code(client):
    token = csrf_token(client.get("/login").text)
    for response in (client.get("/login"), client.get("/login/sent"),
                     client.get("/login/not-a-token"),
                     client.post("/login", data={"csrf_token": token, "email": "nope"})):
        assert response.mimetype == "text/html"
        assert_protected(response)
        assert_no_inline_code(response.text)


def test_portal_pages_carry_every_header_and_no_inline_code(creator_with_a_code):
    client = creator_with_a_code
    for path in ("/", "/programs/headspace-6m", "/me"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert_protected(response)
        assert_no_inline_code(response.text)
    assert "HS-AAAA-0001" in client.get("/programs/headspace-6m").text  # the page with a code
    signed_out = client.post("/logout", data={"csrf_token": csrf_token(client.get("/").text)})
    assert signed_out.status_code == 302
    assert_protected(signed_out)


def test_a_page_following_its_run_takes_its_script_from_static_only(manager_client, factory,
                                                                    monkeypatch):
    """The invitations page with a send under way follows it by static/follow-progress.js
    (script-src 'self'): no inline script or handler for the policy to allow."""
    program = factory.program(slug="headspace-6m")
    factory.creators(program, ["ayesha@example.com"])
    monkeypatch.setattr(dispatch, "send_emails", lambda ids: None)  # the mail waits its turn
    browser = manager_client("manager")
    path = "/manage/programs/headspace-6m/invitations"
    browser.post(path, data={"csrf_token": csrf_token(browser.get(path).text),
                             "kind": "invitation"})
    page = browser.get(path)
    assert page.status_code == 200 and FOLLOW_SCRIPT in page.text
    assert_protected(page)
    assert_no_inline_code(page.text)
    with browser.get(FOLLOW_SCRIPT) as script:
        assert script.status_code == 200 and script.mimetype == "text/javascript"
        assert_protected(script)


def _crashing_app(app_config):
    app = create_app(app_config)
    crash = Blueprint("crash", __name__)

    @crash.route("/crash")
    def boom():
        raise RuntimeError("boom")

    @crash.route("/api/crash")
    def api_boom():
        raise RuntimeError("boom")

    web.register(app, crash)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a crash answers as it would in production
    return app


def test_error_answers_carry_every_header(app_config, client):
    app = _crashing_app(app_config)
    try:
        crashing = app.test_client()
        answers = {
            "not found": client.get("/no-such-page"),
            "not found (JSON)": client.get("/api/no-such-thing"),
            "control character": client.get("/programs/a%00b"),
            "bad query": client.get("/login?next=%00"),
            "CSRF refused": client.post("/login", data={"email": "ayesha@example.com"}),
            "wrong method": client.put("/login"),
            "not signed in": client.get("/"),
            "crash": crashing.get("/crash"),
            "crash (JSON)": crashing.get("/api/crash"),
        }
        statuses = {what: r.status_code for what, r in answers.items()}
        assert statuses == {"not found": 404, "not found (JSON)": 404, "control character": 404,
                            "bad query": 400, "CSRF refused": 400, "wrong method": 405,
                            "not signed in": 302, "crash": 500, "crash (JSON)": 500}
        for response in answers.values():
            assert_protected(response)
            if response.mimetype == "text/html":
                assert_no_inline_code(response.text)
    finally:
        app.extensions["db_engine"].dispose()


def test_static_files_and_health_checks_carry_the_headers(client):
    with client.get("/static/style.css") as stylesheet:
        assert stylesheet.status_code == 200 and stylesheet.mimetype == "text/css"
        assert_protected(stylesheet)
    assert_protected(client.get("/healthz"))


def test_development_is_served_over_http_without_hsts_or_secure_cookies(client):
    """No redirect to https (the tests and make run speak http), no HSTS that would lock a
    browser out of an http install, and a session cookie an http browser sends back."""
    response = client.get("/login")
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in client.get(
        "/login", base_url="https://localhost").headers
    cookie = response.headers.get("Set-Cookie", "")
    assert cookie.startswith("session=") and "Secure" not in cookie


def test_an_https_install_sends_hsts(app_config):
    app = create_app(app_config | {"BASE_URL": "https://perks.example"})
    try:
        client = app.test_client()
        over_https = client.get("/login", base_url="https://perks.example")
        assert over_https.status_code == 200
        hsts = over_https.headers["Strict-Transport-Security"]
        assert hsts.startswith("max-age=")
        assert int(hsts.split("=")[1].split(";")[0]) >= 365 * 24 * 3600
        behind_a_tls_front = client.get("/login", base_url="http://perks.example",
                                        headers={"X-Forwarded-Proto": "https"})
        assert behind_a_tls_front.status_code == 200  # the front did TLS: no redirect loop
        assert "Strict-Transport-Security" in behind_a_tls_front.headers
        for name, value in EXPECTED.items():
            assert over_https.headers[name] == value
    finally:
        app.extensions["db_engine"].dispose()


@pytest.mark.parametrize("html", ['<p style="color:red">x</p>', "<script>alert(1)</script>",
                                  "<style>p{}</style>", '<button onclick="go()">x</button>',
                                  '<a href=" JavaScript:go()">x</a>'])
def test_the_inline_code_finder_finds_what_the_policy_blocks(html):
    with pytest.raises(AssertionError):
        assert_no_inline_code(html)
    assert_no_inline_code('<script src="/static/app.js"></script><p class="x">ok</p>')
