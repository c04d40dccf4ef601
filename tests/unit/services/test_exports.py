"""The claims export: one neutralised row a claim, read in keyset chunks, codes masked unless
an admin's reason is audited first (once, with the count, never a code)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlmodel import select

from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Creator
from wellness_perks.services import claims, codes, exports, imports
from wellness_perks.services.errors import Conflict, InvalidInput, NotFound

CODES = ["HS-ABCD-0001", "HS-EFGH-0002"]


@pytest.fixture
def served(app, factory, smtp_server):
    """a@ and b@ hold the two codes, c@ waits (no stock)."""
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com", "c@example.com"])
    factory.codes(program, CODES)
    with app.app_context():
        s = get_session()
        for creator_id in (1, 2, 3):
            claims.request_claim(s, program=program, creator_id=creator_id)
    smtp_server.wait_for_mail("b@example.com", "code")
    return program


def _exported(app, program, **options) -> list[list[str]]:
    with app.app_context():
        lines = exports.export_claims(get_session(), program_id=program.id, actor="manager:1",
                                      **options)
        return list(csv.reader(io.StringIO("".join(lines))))


def _audit(session):
    session.rollback()
    return session.exec(select(AuditEvent).where(
        AuditEvent.action == exports.FULL_CODES_EXPORTED)).all()


def test_each_claim_is_a_row_with_its_code_masked(app, served, session):
    header, *rows = _exported(app, served)
    assert tuple(header) == exports.HEADER == (
        "handle", "email", "country", "state", "reason", "requested_at", "decided_at",
        "mail_status", "code")
    # A handle starts with "@", which a spreadsheet reads as a formula: it gets its "'" too.
    assert [r[:5] for r in rows] == [
        ["'@a", "a@example.com", "PK", "allocated", ""],
        ["'@b", "b@example.com", "PK", "allocated", ""],
        ["'@c", "c@example.com", "PK", "waitlisted", "out_of_stock"]]
    assert [r[8] for r in rows] == ["HS-****-0001", "HS-****-0002", ""]
    assert rows[0][7] in ("queued", "sending", "sent") and rows[2][7] == ""
    assert rows[0][5].startswith("20") and "T" in rows[0][5] and rows[0][6]
    assert _audit(session) == []  # a masked export reveals nothing


def test_the_rows_are_read_in_chunks_by_claim_id(app, served):
    with app.app_context():
        rows = list(exports.claim_rows(get_session(), program_id=served.id, chunk=2))
    assert [r[1] for r in rows[1:]] == ["a@example.com", "b@example.com", "c@example.com"]
    with app.app_context():  # a chunk exactly full, then an empty one
        assert len(list(exports.claim_rows(get_session(), program_id=served.id,
                                           chunk=3))) == 4


@pytest.mark.parametrize("first", ["=", "+", "-", "@", "\t", "\r"])
def test_a_cell_a_spreadsheet_would_evaluate_is_neutralised(first):
    assert exports.neutralised(f"{first}cmd|' /C calc'!A0") == f"'{first}cmd|' /C calc'!A0"


@pytest.mark.parametrize("safe", ["HS-****-0001", "ayesha", "", "a=b", " =x"])
def test_other_cells_are_left_as_they_are(safe):
    assert exports.neutralised(safe) == safe
    assert exports.neutralised(None) == ""


def test_formula_payloads_from_an_imported_list_are_exported_neutralised(app, factory,
                                                                       smtp_server):
    program = factory.program(quota=10)
    payloads = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1"]
    rows = "handle,email,country\n" + "".join(
        f'"{p}",p{i}@example.com,PK\n' for i, p in enumerate(payloads))
    with app.app_context():
        report = imports.import_creators(get_session(), program=program,
                                         stream=io.BytesIO(rows.encode()), actor="test")
    assert report.committed, report.as_dict()
    with app.app_context():
        s = get_session()
        for creator in s.exec(select(Creator).order_by(Creator.id)).all():
            claims.request_claim(s, program=program, creator_id=creator.id)
    _header, *exported = _exported(app, program)
    handles = {r[1]: r[0] for r in exported}
    stored = {c.email: c.handle for c in _creators(app)}
    assert len(handles) == len(payloads)
    for email, handle in handles.items():
        assert handle == "'" + stored[email], (email, handle)


def _creators(app):
    with app.app_context():
        return get_session().exec(select(Creator)).all()


def test_full_codes_need_a_reason_and_are_audited_once_with_the_count(app, served, session,
                                                                      caplog):
    header, *rows = _exported(app, served, full_codes_reason="  partner reconciliation  ")
    assert [r[8] for r in rows] == [*CODES, ""]
    [event] = _audit(session)
    assert (event.actor, event.object_type, event.object_id, event.program_id) == (
        "manager:1", "program", served.id, served.id)
    assert json.loads(event.detail) == {"codes": 2, "reason": "partner reconciliation"}
    assert not any(code in caplog.text or code in (event.detail or "") for code in CODES)


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_full_codes_without_a_reason_are_refused_and_audit_nothing(app, served, session,
                                                                   reason):
    with app.app_context(), pytest.raises(InvalidInput) as refused:
        exports.export_claims(get_session(), program_id=served.id, actor="manager:1",
                              full_codes_reason=reason)
    assert refused.value.field == "reason"
    assert refused.value.code in ("reason_required", "reason_too_long")
    assert _audit(session) == []


def test_a_claims_code_is_revealed_through_the_audited_reveal(app, served, session, caplog):
    with app.app_context():
        shown = codes.claim_code(get_session(), program_id=served.id, claim_id=1)
        value = codes.reveal_claim_code(get_session(), program_id=served.id, claim_id=1,
                                        actor="manager:1", reason="support case 12")
    assert (shown.handle, shown.masked) == ("@a", "HS-****-0001")
    assert value == "HS-ABCD-0001" and "HS-ABCD-0001" not in caplog.text
    session.rollback()
    [event] = session.exec(select(AuditEvent).where(AuditEvent.action == codes.REVEALED)).all()
    assert (event.object_id, json.loads(event.detail)) == (shown.code_id,
                                                          {"reason": "support case 12"})


def test_a_claim_without_a_code_or_of_another_program_reveals_nothing(app, served, factory,
                                                                     session):
    other = factory.program(slug="calm-1y")
    with app.app_context():
        with pytest.raises(Conflict):
            codes.reveal_claim_code(get_session(), program_id=served.id, claim_id=3,
                                    actor="manager:1", reason="why")
        with pytest.raises(NotFound):
            codes.reveal_claim_code(get_session(), program_id=other.id, claim_id=1,
                                    actor="manager:1", reason="why")
        with pytest.raises(InvalidInput):
            codes.reveal_claim_code(get_session(), program_id=served.id, claim_id=1,
                                    actor="manager:1", reason=" ")
    session.rollback()
    assert session.exec(select(AuditEvent).where(AuditEvent.action == codes.REVEALED)).all() \
        == []
