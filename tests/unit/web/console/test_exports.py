"""The console's claims export and a claim's reveal: streamed CSV with codes masked for every
role; full codes only for an admin who gives a reason (audited once); a reveal of one code
with a reason, shown once on a page no cache keeps; no code in clear in any log line."""

from __future__ import annotations

import csv
import io
import json
import logging

import pytest
from sqlmodel import select

from tests.helpers import csrf_token
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent
from wellness_perks.services import claims, codes, exports

SLUG = "headspace-6m"
EXPORT = f"/manage/programs/{SLUG}/export"
CSV = f"/manage/programs/{SLUG}/export.csv"
REVEAL = f"/manage/programs/{SLUG}/claims/{{}}/reveal"
CODES = ["HS-ABCD-0001", "HS-EFGH-0002"]


@pytest.fixture
def served(app, factory, smtp_server):
    """a@ and b@ hold the two codes (claims 1 and 2), c@ waits (claim 3)."""
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com", "c@example.com"])
    factory.codes(program, CODES)
    with app.app_context():
        s = get_session()
        for creator_id in (1, 2, 3):
            claims.request_claim(s, program=program, creator_id=creator_id)
    return program


def _events(session, action):
    session.rollback()
    return session.exec(select(AuditEvent).where(AuditEvent.action == action)).all()


def _rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


@pytest.mark.parametrize("role", ["viewer", "manager", "admin"])
def test_every_role_downloads_the_claims_streamed_with_codes_masked(served, manager_client,
                                                                    session, role, caplog):
    caplog.set_level(logging.DEBUG)
    response = manager_client(role).get(CSV)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed  # a generator, not a body made in memory first
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="{SLUG}-claims.csv"')
    assert response.headers["Cache-Control"] == "no-store"
    header, *rows = _rows(response)
    assert tuple(header) == exports.HEADER
    assert [(r[1], r[3], r[8]) for r in rows] == [
        ("a@example.com", "allocated", "HS-****-0001"),
        ("b@example.com", "allocated", "HS-****-0002"),
        ("c@example.com", "waitlisted", "")]
    body = response.get_data(as_text=True)
    assert not any(code in body or code in caplog.text for code in CODES)
    assert _events(session, exports.FULL_CODES_EXPORTED) == []


def test_the_dashboard_links_to_the_export_page(served, manager_client):
    viewer = manager_client("viewer")
    assert f'href="{EXPORT}"' in viewer.get(f"/manage/programs/{SLUG}").text
    page = viewer.get(EXPORT)
    assert page.status_code == 200 and f'href="{CSV}"' in page.text
    assert 'name="reason"' not in page.text  # full codes are an admin's
    admin_page = manager_client("admin").get(EXPORT)
    assert 'name="reason"' in admin_page.text and f'action="{CSV}"' in admin_page.text


def _post(browser, path, **data):
    page = browser.get(EXPORT if path == CSV else path)
    return browser.post(path, data={"csrf_token": csrf_token(page.text), **data})


def test_an_admin_with_a_reason_gets_full_codes_audited_once(served, manager_client, session,
                                                             caplog):
    caplog.set_level(logging.DEBUG)
    admin = manager_client("admin")
    response = _post(admin, CSV, reason="reconcile with the partner")
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="{SLUG}-claims-full-codes.csv"')
    _header, *rows = _rows(response)
    assert [r[8] for r in rows] == [*CODES, ""]
    [event] = _events(session, exports.FULL_CODES_EXPORTED)
    assert event.actor == f"manager:{admin.manager_id}"
    assert json.loads(event.detail) == {"codes": 2, "reason": "reconcile with the partner"}
    assert not any(code in caplog.text for code in CODES)


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_full_codes_without_a_reason_are_refused_with_the_form(served, manager_client, session,
                                                               reason):
    response = _post(manager_client("admin"), CSV, reason=reason)
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert 'id="reason-error"' in response.text
    assert ("Say why" in response.text) or ("500 characters" in response.text)
    assert not any(code in response.text for code in CODES)
    assert _events(session, exports.FULL_CODES_EXPORTED) == []


@pytest.mark.parametrize("role", ["viewer", "manager"])
def test_a_viewer_or_manager_asking_for_full_codes_gets_403(served, manager_client, session,
                                                            role):
    browser = manager_client(role)
    response = browser.post(CSV, data={
        "csrf_token": csrf_token(browser.get("/manage/security").text), "reason": "curious"})
    assert response.status_code == 403
    assert not any(code in response.text for code in CODES)
    assert _events(session, exports.FULL_CODES_EXPORTED) == []


def test_a_manager_reveals_one_code_with_a_reason_once(served, manager_client, session,
                                                      caplog):
    caplog.set_level(logging.DEBUG)
    manager = manager_client("manager")
    page = manager.get(REVEAL.format(1))
    assert page.status_code == 200 and "HS-****-0001" in page.text
    assert CODES[0] not in page.text
    response = _post(manager, REVEAL.format(1), reason="creator says the code fails")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert f'<code id="revealed-code">{CODES[0]}</code>' in response.text
    [event] = _events(session, codes.REVEALED)
    assert event.actor == f"manager:{manager.manager_id}"
    assert json.loads(event.detail) == {"reason": "creator says the code fails"}
    assert CODES[0] not in caplog.text
    assert CODES[0] not in manager.get(REVEAL.format(1)).text  # once: the page masks again


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_reveal_without_a_reason_is_refused_and_audits_nothing(served, manager_client,
                                                                 session, reason):
    response = _post(manager_client("manager"), REVEAL.format(1), reason=reason)
    assert response.status_code == 400 and 'id="reason-error"' in response.text
    assert "Say why" in response.text and CODES[0] not in response.text
    assert _events(session, codes.REVEALED) == []


def test_a_claim_without_a_code_or_unknown_reveals_nothing(served, manager_client, session):
    manager = manager_client("manager")
    page = manager.get(REVEAL.format(3))
    assert page.status_code == 200 and "holds no code" in page.text
    response = manager.post(REVEAL.format(3), data={
        "csrf_token": csrf_token(manager.get("/manage/security").text), "reason": "why"})
    assert response.status_code == 400 and "holds no code" in response.text
    assert manager.get(REVEAL.format(999)).status_code == 404
    assert _events(session, codes.REVEALED) == []
