"""The audit log at /manage/audit: every event (manager actions, code reveals) newest first,
filtered by actor, action, program and dates, page by page on the keyset (at, id); read only
(its one form is a GET); details shown as escaped text; never a code in clear."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Code
from wellness_perks.services import audit, codes

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _record(app, *events):
    with app.app_context():
        session = get_session()
        audit.record(session, *(audit.event(**e) for e in events))
        session.commit()


def _ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-event="(\d+)"', page)]


@pytest.fixture
def events(app, factory, session):
    one, two = factory.program(slug="headspace-6m"), factory.program(slug="calm-1y")
    session.rollback()
    _record(app,
            {"actor": "manager:1", "action": "program.claims_paused", "object_type": "program",
             "object_id": one.id, "program_id": one.id, "at": T0},
            {"actor": "manager:2", "action": "program.claims_paused", "object_type": "program",
             "object_id": two.id, "program_id": two.id, "at": T0 + timedelta(days=1)},
            {"actor": "manager:1", "action": "mail.resent", "object_type": "outbound_email",
             "object_id": 7, "program_id": one.id, "at": T0 + timedelta(days=2),
             "detail": {"note": "<script>alert(1)</script>"}},
            # Two events in the same instant: the id breaks the tie.
            {"actor": "manager:2", "action": "manager.created", "object_type": "manager",
             "object_id": 3, "at": T0 + timedelta(days=3)},
            {"actor": "manager:2", "action": "manager.disabled", "object_type": "manager",
             "object_id": 3, "at": T0 + timedelta(days=3)})
    session.rollback()
    return [e.id for e in session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()
            if e.actor in ("manager:1", "manager:2")]


def test_events_are_listed_newest_first_with_who_what_when(manager_client, events):
    page = manager_client("viewer").get("/manage/audit")
    assert page.status_code == 200
    shown = [i for i in _ids(page.text) if i in events]  # (the sign-ins are events too)
    a, b, c, d, e = events
    assert shown == [e, d, c, b, a]
    assert "manager.disabled" in page.text and "2026-11-04 12:00:00" in page.text
    assert "outbound_email #7" in page.text and "headspace-6m" in page.text
    # Detail is text: the markup in it is escaped, never run.
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    # Read only: its form is a GET, no form on it posts (but signing out).
    forms = re.findall(r'<form method="(\w+)" action="([^"]+)"', page.text)
    assert ("get", "/manage/audit") in forms
    assert [f for f in forms if f[0] == "post"] == [("post", "/manage/logout")]


@pytest.mark.parametrize(("query", "expected"), [
    ("actor=manager:1", [2, 0]),
    ("action=program.claims_paused", [1, 0]),
    ("program=calm-1y", [1]),
    ("program=headspace-6m&actor=manager:1&action=mail.resent", [2]),
    ("since=2026-11-02&until=2026-11-03", [2, 1]),
    ("since=2026-11-04", [4, 3]),
    ("until=2026-11-01", [0]),
    ("actor=nobody", []),
])
def test_the_filters(manager_client, events, query, expected):
    page = manager_client("viewer").get(f"/manage/audit?{query}")
    assert page.status_code == 200
    shown = [i for i in _ids(page.text) if i in events]
    assert shown == [events[i] for i in expected]
    if not expected:
        assert "No events match." in page.text


@pytest.mark.parametrize(("query", "field"), [
    ("since=yesterday", "since"), ("until=2026-13-01", "until"),
    ("program=no-such-program", "program"), ("actor=" + "x" * 201, "actor"),
    ("before=garbage", "before"), ("before=2026-11-01T12:00:00_x", "before"),
])
def test_a_bad_filter_is_a_400_saying_which(manager_client, events, query, field):
    page = manager_client("viewer").get(f"/manage/audit?{query}")
    assert page.status_code == 400
    assert f'data-field="{field}"' in page.text
    assert "Traceback" not in page.text


def test_pages_follow_the_keyset_at_then_id(app, manager_client, events):
    browser = manager_client("viewer")
    seen = []
    with app.app_context():
        page = audit.search(get_session(), audit.AuditFilter(actor="manager:2"), limit=2)
        seen += [e.id for e in page.events]
        assert page.next_before is not None
        page = audit.search(get_session(), audit.AuditFilter(actor="manager:2"), limit=2,
                            before=page.next_before)
        seen += [e.id for e in page.events]
        assert page.next_before is None
    assert seen == [events[4], events[3], events[1]]  # the tie at day 3 split across pages
    # The page's own link to older events carries the filters on.
    _record(app, *({"actor": "bulk", "action": "test.event", "object_type": "test",
                    "object_id": i, "at": T0 + timedelta(minutes=i)} for i in range(60)))
    first = browser.get("/manage/audit?actor=bulk")
    assert len(_ids(first.text)) == audit.AUDIT_PAGE
    link = re.search(r'<a rel="next" href="([^"]+)"', first.text).group(1).replace("&amp;", "&")
    assert "actor=bulk" in link
    second = browser.get(link)
    assert second.status_code == 200
    assert len(_ids(second.text)) == 60 - audit.AUDIT_PAGE
    assert not set(_ids(first.text)) & set(_ids(second.text))
    assert 'rel="next"' not in second.text


def test_a_code_reveal_is_listed_without_the_code(app, manager_client, factory, session):
    program = factory.program(slug="headspace-6m")
    factory.codes(program, ["HS-SECRET-7K2Q"])
    code_id = session.exec(select(Code.id)).one()
    session.rollback()
    with app.app_context():
        assert codes.reveal_code(get_session(), code_id, actor="manager:9",
                                 reason="support case") == "HS-SECRET-7K2Q"
        get_session().commit()
    page = manager_client("viewer").get("/manage/audit")
    assert "manager:9" in page.text
    assert "HS-SECRET-7K2Q" not in page.text and "SECRET" not in page.text
