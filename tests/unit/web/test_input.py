"""What an attacker sends instead of a form: a body far over the size limit (413, a readable
page or JSON, never echoed), a file upload or JSON in place of a text field (400, never 500),
in every POST form the pages have; nothing is recorded and no mail goes out."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from flask import Blueprint, request
from sqlmodel import select

from tests.conftest import MANAGER_PASSWORD, enroll_two_factor, sign_in_manager
from tests.helpers import csrf_token, sign_in_link
from wellness_perks import create_app, web
from wellness_perks.db import get_session, new_session
from wellness_perks.models import AuditEvent, Claim, ImportJob, Program
from wellness_perks.services import api_tokens, auth, claims, invitations, managers, programs

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

TWENTY_MB = 20 * 1024 * 1024


def _claims(session):
    session.rollback()
    return session.exec(select(Claim)).all()


def _audit(session):
    session.rollback()
    return [e.action for e in session.exec(select(AuditEvent)).all()]


# --------------------------------------------------------------------------- size


def test_the_size_limit_is_a_setting_of_64_kib_by_default(app):
    assert app.config["MAX_CONTENT_LENGTH"] == 64 * 1024


def test_a_20_mb_field_is_too_large_and_never_echoed(client, smtp_server):
    token = csrf_token(client.get("/login").text)
    marker = "ayesha-" + "x" * 40
    response = client.post("/login", data={"csrf_token": token,
                                           "email": marker + "y" * TWENTY_MB + "@example.com"})
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert "too large" in response.text and "64 KiB" in response.text
    assert marker not in response.text and len(response.data) < 10_000
    assert smtp_server.messages == []


def test_a_20_mb_upload_is_too_large(client, factory, signed_in, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    signed_in("ayesha@example.com")
    token = csrf_token(client.get("/programs/headspace-6m").text)
    body = (f'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            '--b\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
            ).encode() + b"x" * TWENTY_MB + b"\r\n--b--\r\n"
    response = client.post("/programs/headspace-6m/claim", data=body,
                           content_type="multipart/form-data; boundary=b")
    assert response.status_code == 413
    assert _claims(session) == []


def test_a_body_just_under_the_limit_is_read(client):
    token = csrf_token(client.get("/login").text)
    response = client.post("/login", data={"csrf_token": token,
                                           "email": "x" * (60 * 1024) + "@example.com"})
    assert response.status_code == 400  # the form's own answer: too long an address
    assert "cannot be longer than 320 characters" in response.text


@pytest.fixture
def api_app(app_config):
    app = create_app(app_config)
    api = Blueprint("sized_api", __name__, url_prefix="/api/sized")

    @api.route("/echo", methods=["POST"])
    def echo():
        return {"length": len(request.get_data())}

    web.register(app, api, csrf_protected=False)
    yield app
    app.extensions["db_engine"].dispose()


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream",
                                          "application/x-www-form-urlencoded"])
def test_a_20_mb_body_under_api_is_a_json_413(api_app, content_type):
    client = api_app.test_client()
    body = b'{"x": "' + b"y" * TWENTY_MB + b'"}'
    for path in ("/api/sized/echo", "/api/no-such-thing"):
        response = client.post(path, data=body, content_type=content_type)
        assert response.status_code == 413, path
        assert response.json["error"] == "too_large"
        assert "64 KiB" in response.json["message"] and len(response.data) < 1000
    assert client.post("/api/sized/echo", data=b"{}", content_type=content_type).status_code == 200


# --------------------------------------------------------------------------- wrong types


FILE = "<file>"  # a file input's value, as _Forms records it


class _Forms(HTMLParser):
    """Every POST form of a page: its action and the names of its fields (a file input's
    value is ``FILE``)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form" and (attributes.get("method") or "").lower() == "post":
            self.forms.append((attributes["action"], {}))
        elif tag in ("input", "textarea", "select") and attributes.get("name") and self.forms:
            value = FILE if attributes.get("type") == "file" else attributes.get("value")
            self.forms[-1][1][attributes["name"]] = value or ""


def _post_forms(client, paths) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200, path
        parser = _Forms()
        parser.feed(page.text)
        found.update(parser.forms)
    return found


def _form_rules(app) -> set[str]:
    return {rule.rule for rule in app.url_map.iter_rules()
            if "POST" in rule.methods and not rule.rule.startswith("/api/")}


def _filled(action: str, fields: dict[str, str]) -> dict:
    """Each field filled: a text field with text, a file field with a file."""
    return {name: (io.BytesIO(b"HS-AAAA-0002\n"), "codes.txt") if value == FILE
            else value or ("ayesha@example.com" if name == "email" else "x")
            for name, value in fields.items()}


def _wrong_shape(value):
    """What a field gets instead of what it takes: a file for text, text for a file."""
    if isinstance(value, tuple):
        return "x"
    return (io.BytesIO(value.encode()), "field.txt")


def test_every_post_form_answers_400_for_a_file_in_any_field(
        app, client, factory, signed_in, session, smtp_server, manager_client):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    # Bilal holds the code (his claim's reveal page has a form); Ayesha has not claimed.
    with app.app_context():
        held = claims.request_claim(get_session(), program=program, creator_id=2)
    reveal_path = f"/manage/programs/headspace-6m/claims/{held.id}/reveal"
    claims_before = [(c.id, c.state) for c in _claims(session)]
    # The console's claiming buttons show by state: one program not open yet, one paused.
    later = datetime.now(UTC) + timedelta(days=1)
    factory.program(slug="calm-1y", opens_at=later, closes_at=later + timedelta(days=30))
    paused = factory.program(slug="quiet-1m")
    with app.app_context():
        programs.pause_claims(get_session(), program_id=paused.id, actor="test")
    # Ayesha, who has not claimed, is invited: her invitation's opt-out page has a form.
    with app.app_context():
        invitations.send_invitations(get_session(), program_id=program.id, actor="test")
    [invitation] = smtp_server.wait_for_mail("ayesha@example.com", "invited")
    opt_out_path = invitation["List-Unsubscribe"].strip("<>").replace("http://localhost", "")
    anonymous = app.test_client()
    sign_in_forms = _post_forms(anonymous, ["/login", opt_out_path])
    anonymous.post("/login", data={"email": "ayesha@example.com",
                                   "csrf_token": csrf_token(anonymous.get("/login").text)})
    link = sign_in_link(smtp_server.wait_for_mail("ayesha@example.com", "sign-in")[-1])
    link_path = link.replace("http://localhost", "")
    sign_in_forms.update(_post_forms(anonymous, [link_path]))
    signed_in("ayesha@example.com")
    portal_forms = _post_forms(client, ["/", "/programs/headspace-6m", "/me"])
    forms = [(anonymous, action, fields) for action, fields in sign_in_forms.items()]
    forms += [(client, action, fields) for action, fields in portal_forms.items()
              if action != "/login"]
    console_sign_in = app.test_client()
    forms += [(console_sign_in, action, fields)
              for action, fields in _post_forms(console_sign_in, ["/manage/login"]).items()]
    # Each half of a sign-in: the code asked for after a password, and an admin's enrollment.
    with app.app_context(), new_session() as db:
        with_code = auth.create_manager(db, email="code@managers.example",
                                        password=MANAGER_PASSWORD, actor="test").id
        auth.create_manager(db, email="enrol@managers.example", password=MANAGER_PASSWORD,
                            role="admin", actor="test")
        managers.disable(db, manager_id=auth.create_manager(
            db, email="gone@managers.example", password=MANAGER_PASSWORD, actor="test").id,
            actor="test", now=datetime.now(UTC))
    enroll_two_factor(app, with_code)
    console = manager_client("admin")
    batches = "/manage/programs/headspace-6m/batches"
    staged = console.post(batches, content_type="multipart/form-data", data={
        "csrf_token": csrf_token(console.get(batches).text), "no_expiry": "y",
        "file": (io.BytesIO(b"HS-AAAA-0003\nnot a code!\n"), "codes.txt")})
    report_path = staged.headers["Location"]  # a report with an invalid row: skip_invalid
    upload_token = report_path.rsplit("/", 1)[1]
    with app.app_context(), new_session() as db:  # a token, so its list has a revoke button
        api_tokens.create(db, name="script", role="viewer", created_by=console.manager_id,
                          actor="test")
    forms += [(console, action, fields) for action, fields in _post_forms(console, [
        "/manage/", "/manage/managers", "/manage/managers/new", "/manage/programs/new",
        "/manage/api-tokens", "/manage/api-tokens/new",
        *(f"/manage/programs/{slug}/edit"
          for slug in ("headspace-6m", "calm-1y", "quiet-1m")),
        batches, "/manage/programs/headspace-6m/creators/upload", report_path,
        "/manage/programs/headspace-6m/export", reveal_path,
        "/manage/programs/headspace-6m/delivery",
        "/manage/programs/headspace-6m/invitations",
        # The eligibility list (add; remove by row) and a creator's case (resend, reissue,
        # remove).
        "/manage/programs/headspace-6m/creators",
        "/manage/programs/headspace-6m/creators/1"]).items()]
    for address, page in (("code@managers.example", "/manage/login/code"),
                          ("enrol@managers.example", "/manage/login/enroll")):
        halfway = app.test_client()
        assert sign_in_manager(halfway, address).headers["Location"] == page
        forms += [(halfway, action, fields)
                  for action, fields in _post_forms(halfway, [page]).items()]
    # A manager's own Security pages: turning two-factor off, and setting it up.
    for browser, page in ((manager_client("manager", two_factor=True), "/manage/security"),
                          (manager_client("viewer"), "/manage/security/two-factor")):
        forms += [(browser, action, fields)
                  for action, fields in _post_forms(browser, [page]).items()]
    # Every POST route of the pages is tried (a new form is covered the day it appears).
    covered = {re.sub(r"^/manage/managers/\d+/", "/manage/managers/<int:manager_id>/",
                      re.sub(r"/creators/\d+/", "/creators/<int:creator_id>/",
                             re.sub(r"^/manage/api-tokens/\d+/",
                                    "/manage/api-tokens/<int:token_id>/",
                                    re.sub("headspace-6m|calm-1y|quiet-1m", "<slug>", action)
                                    .replace(link_path, "/login/<token>")
                                    .replace(opt_out_path, "/opt-out/<token>")
                                    .replace(upload_token, "<token>")
                                    .replace(f"/claims/{held.id}/",
                                             "/claims/<int:claim_id>/"))))
               for _, action, _ in forms}
    assert covered == _form_rules(app), "a POST route no page's form reaches"
    mails_before = len(smtp_server.messages)
    audit_before = len(_audit(session))
    tried = 0
    for who, action, fields in forms:
        for name in fields:
            data = _filled(action, fields)
            data[name] = _wrong_shape(data[name])
            response = who.post(action, data=data, content_type="multipart/form-data")
            assert response.status_code == 400, (action, name, response.status_code)
            tried += 1
    assert tried >= 5
    assert [(c.id, c.state) for c in _claims(session)] == claims_before
    assert "creator.deletion_requested" not in _audit(session)
    assert "creator.opted_out" not in _audit(session)
    assert [a for a in _audit(session) if a.startswith("program.")] == [
        "program.created"] * 3 + ["program.claims_paused", "program.invitations_queued"]
    # (no console form changed a thing)
    assert len(session.exec(select(Program)).all()) == 3
    assert len(smtp_server.messages) == mails_before
    assert session.exec(select(ImportJob)).all() == []  # no upload was committed
    assert console.get(report_path).status_code == 200  # nor cancelled
    assert client.get("/programs/headspace-6m").status_code == 200  # still signed in
    assert console.get("/manage/").status_code == 200
    assert _audit(session)[audit_before:] == []  # no sign-in, no change of any account


def test_the_email_as_a_file_upload_is_a_400_with_the_form(client, smtp_server):
    token = csrf_token(client.get("/login").text)
    response = client.post("/login", content_type="multipart/form-data", data={
        "csrf_token": token, "email": (io.BytesIO(b"ayesha@example.com"), "email.txt")})
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert "Enter the email address on the perk list." in response.text
    assert "Traceback" not in response.text
    assert smtp_server.messages == []


@pytest.mark.parametrize("email", [5, ["ayesha@example.com", "other@example.com"],
                                   {"address": "ayesha@example.com"}, None, True])
def test_json_in_place_of_the_form_is_a_400(client, factory, smtp_server, email):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    token = csrf_token(client.get("/login").text)
    response = client.post("/login", json={"email": email, "csrf_token": token},
                           headers={"X-CSRFToken": token})
    assert response.status_code == 400
    assert smtp_server.messages == []


def test_a_repeated_field_takes_the_first_value_only(client, factory, smtp_server):
    """Two email fields: one sign-in request for the first address, never one per value."""
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    token = csrf_token(client.get("/login").text)
    response = client.post("/login", data={"csrf_token": token,
                                           "email": ["ayesha@example.com", "bilal@example.com"]})
    assert response.status_code == 302
    smtp_server.wait_for_mail("ayesha@example.com", "sign-in")
    assert smtp_server.to("bilal@example.com") == []


def test_every_form_of_the_app_reads_form_fields_only(app):
    from flask_wtf import FlaskForm

    from wellness_perks.web.forms import Form

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = [cls for cls in subclasses(FlaskForm) if cls.__module__.startswith("wellness_perks")]
    assert len(ours) >= 3
    assert [cls.__qualname__ for cls in ours if not issubclass(cls, Form)] == []
