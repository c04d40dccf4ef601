"""Voiding, reissuing and restoring codes: a code given out once is never given out again."""

from __future__ import annotations

import io
import json
from datetime import date

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlmodel import select

from tests.helpers import code_fingerprint, code_value, redemption_code, stock, text_body
from wellness_perks import dispatch
from wellness_perks.db import get_session
from wellness_perks.models import (
    AuditEvent,
    Claim,
    Code,
    CodeAssignment,
    CodeBatch,
    MailStatus,
    OutboundEmail,
)
from wellness_perks.services import claims, codes, imports, mail
from wellness_perks.services.code_cipher import CodeCipher, CodeKeyError, key_id
from wellness_perks.services.errors import Conflict, InvalidInput, NotFound
from wellness_perks.services.verify import verify_program


@pytest.fixture
def served(app, factory, session, smtp_server):
    """Two creators holding codes A1, A2; codes A3, A4 in stock."""
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com"])
    factory.codes(program, ["HS-A1-0001", "HS-A2-0002", "HS-A3-0003", "HS-A4-0004"])
    with app.app_context():
        s = get_session()
        for creator_id in (1, 2):
            claims.request_claim(s, program=program, creator_id=creator_id)
    return program


def _code(session, value):
    session.rollback()
    return session.exec(select(Code).where(Code.fingerprint == code_fingerprint(value))).one()


def _verified(app, program):
    with app.app_context():
        assert [str(v) for v in verify_program(get_session(), program_id=program.id)] == []


def test_voiding_a_code_in_stock_takes_it_out(app, served, session):
    with app.app_context():
        result = codes.void_code(get_session(), program_id=served.id, value="HS-A3-0003",
                                 reason="partner says invalid", actor="test")
    assert result.reissued_claim_id is None
    assert _code(session, "HS-A3-0003").status == "void"
    _verified(app, served)


def test_voiding_a_held_code_reissues_and_mails_the_new_one(app, served, session, smtp_server):
    with app.app_context():
        result = codes.void_code(get_session(), program_id=served.id, value="HS-A1-0001",
                                 reason="partner says invalid", actor="test")
    old, new = _code(session, "HS-A1-0001"), _code(session, "HS-A3-0003")
    assert (old.status, new.status) == ("void", "assigned")
    claim = session.get(Claim, result.reissued_claim_id)
    assert claim.code_id == new.id and claim.state == "allocated"
    history = session.exec(select(CodeAssignment).order_by(CodeAssignment.id)).all()
    assert [(h.code_id, h.claim_id, h.voided_at is not None) for h in history] == [
        (old.id, claim.id, True), (session.get(Code, history[1].code_id).id, 2, False),
        (new.id, claim.id, False)]
    [first, reissued] = smtp_server.to("a@example.com", "code")
    assert redemption_code(first) == "HS-A1-0001"
    assert redemption_code(reissued) == "HS-A3-0003"
    assert "new" in reissued["Subject"] and "no longer works" in text_body(reissued)
    _verified(app, served)


def test_reissue_by_creator_email(app, served, session, smtp_server):
    with app.app_context():
        codes.reissue_claim(get_session(), program_id=served.id, creator_email="B@example.com",
                            reason="code did not work", actor="test")
    assert _code(session, "HS-A2-0002").status == "void"
    assert redemption_code(smtp_server.to("b@example.com", "new")[0]) == "HS-A3-0003"
    with app.app_context(), pytest.raises(Conflict, match="holds no code"):
        codes.reissue_claim(get_session(), program_id=served.id,
                            creator_email="nobody@example.com", reason="x", actor="test")
    _verified(app, served)


def test_reissue_without_stock_changes_nothing(app, served, session):
    with app.app_context():
        for value in ("HS-A3-0003", "HS-A4-0004"):
            codes.void_code(get_session(), program_id=served.id, value=value, reason="x",
                            actor="test")
        with pytest.raises(Conflict, match="no code in stock"):
            codes.void_code(get_session(), program_id=served.id, value="HS-A1-0001",
                            reason="x", actor="test")
    assert _code(session, "HS-A1-0001").status == "assigned"
    assert stock(session, served.id) == (0, 0)
    _verified(app, served)


def test_a_voided_code_that_was_given_out_is_never_restored(app, served, session):
    with app.app_context():
        codes.void_code(get_session(), program_id=served.id, value="HS-A1-0001", reason="x",
                        actor="test")
        with pytest.raises(Conflict, match="can't be reused"):
            codes.restore_code(get_session(), program_id=served.id, value="HS-A1-0001",
                               actor="test")
    assert _code(session, "HS-A1-0001").status == "void"


def test_restoring_a_never_used_code_serves_the_waitlist(app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-ONLY-0001"])
    with app.app_context():
        codes.void_code(get_session(), program_id=program.id, value="HS-ONLY-0001", reason="x",
                        actor="test")
        claim = claims.request_claim(get_session(), program=program, creator_id=1)
    session.rollback()
    assert session.get(Claim, claim.id).state == "waitlisted"
    with app.app_context():
        codes.restore_code(get_session(), program_id=program.id, value=" HS-ONLY-0001 ",
                           actor="test")
    session.rollback()
    assert session.get(Claim, claim.id).state == "allocated"
    assert redemption_code(smtp_server.to("a@example.com", "code")[0]) == "HS-ONLY-0001"
    assert stock(session, program.id) == (0, 0)  # back in stock, then given out
    _verified(app, program)


def test_the_stock_counter_follows_voids_reissues_and_restores(app, served, session):
    assert stock(session, served.id) == (2, 2)  # 4 imported, 2 given out
    with app.app_context():
        codes.void_code(get_session(), program_id=served.id, value="HS-A3-0003", reason="x",
                        actor="test")
    assert stock(session, served.id) == (1, 1)
    with app.app_context():  # held: the claim is given HS-A4-0004
        codes.void_code(get_session(), program_id=served.id, value="HS-A1-0001", reason="x",
                        actor="test")
    assert stock(session, served.id) == (0, 0)
    with app.app_context():
        codes.restore_code(get_session(), program_id=served.id, value="HS-A3-0003",
                           actor="test")
    assert stock(session, served.id) == (1, 1)
    with app.app_context():  # by the creator: the claim is given HS-A3-0003
        codes.reissue_claim(get_session(), program_id=served.id, creator_email="b@example.com",
                            reason="x", actor="test")
    assert stock(session, served.id) == (0, 0)
    _verified(app, served)


def test_unknown_or_already_void_code(app, served):
    with app.app_context():
        with pytest.raises(NotFound):
            codes.void_code(get_session(), program_id=served.id, value="HS-NOPE-0000",
                            reason="x", actor="test")
        codes.void_code(get_session(), program_id=served.id, value="HS-A4-0004", reason="x",
                        actor="test")
        with pytest.raises(Conflict, match="already void"):
            codes.void_code(get_session(), program_id=served.id, value="HS-A4-0004",
                            reason="x", actor="test")


def test_mail_for_a_code_voided_before_sending_is_cancelled(app, factory, session, smtp_server):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-A1-0001", "HS-A2-0002"])
    smtp_server.refuse_with = "451 later"  # the first mail stays queued
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=1)
        smtp_server.refuse_with = None
        codes.void_code(get_session(), program_id=program.id, value="HS-A1-0001", reason="x",
                        actor="test")
        first = get_session().exec(select(OutboundEmail).order_by(OutboundEmail.id)).first()
        assert mail.send(get_session(), outbound_id=first.id) == MailStatus.cancelled
    [only] = smtp_server.to("a@example.com", "code")
    assert redemption_code(only) == "HS-A2-0002"
    session.rollback()
    statuses = session.exec(select(OutboundEmail.kind, OutboundEmail.status)
                            .order_by(OutboundEmail.id)).all()
    assert statuses == [("redemption", "cancelled"), ("reissue", "sent")]
    assert session.exec(select(sa.func.count()).select_from(Code)
                        .where(Code.status == "assigned")).one() == 1
    _verified(app, program)


def test_a_manager_reveal_gives_the_code_and_audits_who_which_and_why(app, served, session,
                                                                      caplog):
    held = _code(session, "HS-A1-0001")
    with app.app_context():
        value = codes.reveal_code(get_session(), held.id, actor="manager:lead@example.com",
                                  reason="partner asks which code creator a@ got")
    assert value == "HS-A1-0001"
    session.rollback()
    [event] = session.exec(select(AuditEvent).where(AuditEvent.action == "code.revealed")).all()
    assert (event.actor, event.object_type, event.object_id, event.program_id) == (
        "manager:lead@example.com", "code", held.id, served.id)
    assert json.loads(event.detail) == {"reason": "partner asks which code creator a@ got"}
    assert "HS-A1-0001" not in caplog.text


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_a_reveal_needs_a_reason_and_records_nothing_without_one(app, served, session, reason):
    held = _code(session, "HS-A1-0001")
    with app.app_context(), pytest.raises(InvalidInput) as refused:
        codes.reveal_code(get_session(), held.id, actor="manager:m@example.com", reason=reason)
    assert refused.value.field == "reason"
    with app.app_context(), pytest.raises(NotFound):
        codes.reveal_code(get_session(), 999, actor="manager:m@example.com", reason="why")
    session.rollback()
    assert session.exec(select(AuditEvent).where(AuditEvent.action == "code.revealed")).all() \
        == []


def test_claims_and_allocation_decrypt_nothing_and_each_mail_decrypts_its_code_once(
        app, factory, smtp_server, monkeypatch):
    program = factory.program(quota=10)
    factory.creators(program, [f"c{i}@example.com" for i in range(5)])
    factory.codes(program, [f"HS-DEC-{i:04d}" for i in range(6)])
    decrypted = []
    real = CodeCipher.decrypt
    monkeypatch.setattr(CodeCipher, "decrypt",
                        lambda self, token: decrypted.append(1) or real(self, token))
    owed = []  # the mails are held back: claims and allocation run alone
    monkeypatch.setattr(dispatch, "send_emails", owed.extend)
    with app.app_context():
        for creator_id in range(1, 6):
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
        assert get_session().exec(select(sa.func.count()).select_from(Claim)
                                  .where(Claim.state == "allocated")).one() == 5
        assert len(owed) == 5 and decrypted == []
        for outbound_id in owed:
            mail.send(get_session(), outbound_id=outbound_id)
    assert len(smtp_server.messages) == 5 and len(decrypted) == 5


# --------------------------------------------------------------------------- key rotation


def _tokens(session):
    session.rollback()
    return session.exec(select(Code.id, Code.value_encrypted, Code.key_id, Code.fingerprint)
                        .order_by(Code.id)).all()


def test_rotation_re_encrypts_every_code_under_the_newest_key_resumably(app, factory, session,
                                                                        smtp_server):
    old = app.config["CODE_ENCRYPTION_KEY"]
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    values = [f"HS-ROT-{i:04d}" for i in range(7)]
    factory.codes(program, values)
    before = _tokens(session)
    new = Fernet.generate_key().decode()
    app.config["CODE_ENCRYPTION_KEY"] = f"{new},{old}"
    with app.app_context():
        assert codes.codes_under_older_keys(get_session()) == 7

        def stop_after_the_first_batch(count):
            raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            codes.rotate_code_key(get_session(), actor="test", batch_size=3,
                                  progress=stop_after_the_first_batch)
        assert codes.codes_under_older_keys(get_session()) == 4  # the first batch committed
        done = []
        assert codes.rotate_code_key(get_session(), actor="test", batch_size=3,
                                     progress=done.append) == 4
        assert done == [3, 1]
        assert codes.rotate_code_key(get_session(), actor="test") == 0  # nothing left to do
    after = _tokens(session)
    assert [code_value(t, new) for _id, t, _k, _f in after] == values  # the new key alone
    assert {k for _id, _t, k, _f in after} == {key_id(new)}
    assert [f for *_, f in after] == [f for *_, f in before]  # fingerprints stay
    events = session.exec(select(AuditEvent.detail).where(
        AuditEvent.action == "codes.key_rotated")).all()
    assert [json.loads(d)["rotated"] for d in events] == [4]  # the run that finished

    # The old key retired, the fingerprint key kept: every reader of codes still works.
    app.config["CODE_FINGERPRINT_KEY"] = CodeCipher(old).fingerprint_key
    app.config["CODE_ENCRYPTION_KEY"] = new
    with app.app_context():
        report = imports.import_codes(get_session(), program=program,
                                      stream=io.BytesIO(b"HS-ROT-0003\nHS-ROT-0100\n"),
                                      expires_on=None, actor="test")
        assert (report.imported, report.duplicate) == (1, 1)
        codes.void_code(get_session(), program_id=program.id, value="HS-ROT-0006",
                        reason="x", actor="test")
        claims.request_claim(get_session(), program=program, creator_id=1)
    assert redemption_code(smtp_server.wait_for_mail("a@example.com", "code")[0]) == values[0]


def test_rotation_stops_before_writing_when_the_fingerprint_key_changed(app, factory, session):
    old = app.config["CODE_ENCRYPTION_KEY"]
    program = factory.program(quota=10)
    factory.codes(program, ["HS-ROT-0001", "HS-ROT-0002"])
    before = _tokens(session)
    app.config["CODE_ENCRYPTION_KEY"] = f"{Fernet.generate_key().decode()},{old}"
    app.config["CODE_FINGERPRINT_KEY"] = "not the key these codes were fingerprinted with"
    with app.app_context(), pytest.raises(CodeKeyError, match="code #1 was fingerprinted with "
                                                              "another key"):
        codes.rotate_code_key(get_session(), actor="test")
    assert _tokens(session) == before


# --------------------------------------------------------------------------- masking, batches


@pytest.mark.parametrize(("value", "masked"), [
    ("HS-ABCD-7K2Q", "HS-****-7K2Q"),
    ("  HS-ABCD-7K2Q ", "HS-****-7K2Q"),
    ("DEMO-A1B2C3-D4E5F6", "DEMO-****E5F6"),
    ("HSABCDEF7K2Q", "****7K2Q"),
    ("HS-AB-7K2Q", "****-7K2Q"),      # with its prefix, only 2 characters would be hidden
    ("AB-CDEFG", "****DEFG"),
    ("ABCDEFG", "****"),              # short: nothing of it shows
    ("", "****"),
])
def test_mask_code_keeps_the_prefix_and_the_last_four(value, masked):
    assert codes.mask_code(value) == masked


def test_a_masked_code_always_hides_four_characters():
    for length in range(0, 40):
        for value in ("X" * length, ("AB-" + "C" * length), ("C" * length + "-ABCD")):
            shown = codes.mask_code(value).replace(codes.MASK, "")
            assert len(value.strip()) - len(shown) >= min(4, len(value.strip())), value


def _batch_events(session, action):
    session.rollback()
    return [json.loads(e.detail or "{}") | {"actor": e.actor, "object_id": e.object_id}
            for e in session.exec(select(AuditEvent).where(AuditEvent.action == action)
                                  .order_by(AuditEvent.id))]


def test_voiding_a_batch_voids_its_stock_only_and_lowers_the_counter(app, served, session):
    with app.app_context():
        result = codes.void_batch(get_session(), program_id=served.id, batch="1",
                                  reason="partner recalled", actor="manager:1")
    assert (result.batch_id, result.voided, result.held) == (1, 2, 2)
    session.rollback()
    assert [c.status for c in session.exec(select(Code).order_by(Code.id))] == [
        "assigned", "assigned", "void", "void"]
    assert stock(session, served.id) == (0, 0)
    assert _batch_events(session, codes.BATCH_VOIDED) == [
        {"voided": 2, "held": 2, "reason": "partner recalled", "actor": "manager:1",
         "object_id": 1}]
    _verified(app, served)
    with app.app_context():  # again: nothing left in stock, nothing changes, nothing audited
        again = codes.void_batch(get_session(), program_id=served.id, batch="1",
                                 reason="again", actor="manager:1")
    assert (again.voided, again.held) == (0, 2)
    assert len(_batch_events(session, codes.BATCH_VOIDED)) == 1
    _verified(app, served)


def test_voiding_a_batch_leaves_the_other_batches_and_programs_alone(app, factory, served,
                                                                    session):
    factory.codes(served, ["HS-B1-0001"])
    other = factory.program(slug="calm-1y")
    factory.codes(other, ["HS-C1-0001"])
    session.execute(sa.update(CodeBatch).where(CodeBatch.id == 1).values(name="January"))
    session.commit()
    with app.app_context():
        assert codes.void_batch(get_session(), program_id=served.id, batch="January",
                                reason="recalled", actor="test").voided == 2
        with pytest.raises(NotFound):  # the other program's batch is not this program's
            codes.void_batch(get_session(), program_id=served.id, batch="3", reason="x",
                             actor="test")
    assert stock(session, served.id) == (1, 1)
    assert stock(session, other.id) == (1, 1)
    _verified(app, served)
    _verified(app, other)


@pytest.mark.parametrize(("batch", "reason", "error", "message"), [
    ("1", "  ", InvalidInput, "say why"),
    ("1", "r" * 201, InvalidInput, "longer than 200"),
    ("9", "recalled", NotFound, "no batch '9'"),
    ("no such batch", "recalled", NotFound, "no batch 'no such batch'"),
])
def test_voiding_a_batch_refused_changes_nothing(app, served, session, batch, reason, error,
                                                 message):
    with app.app_context(), pytest.raises(error, match=message):
        codes.void_batch(get_session(), program_id=served.id, batch=batch, reason=reason,
                         actor="test")
    assert stock(session, served.id) == (2, 2)


def test_a_batch_name_shared_by_two_batches_needs_the_id(app, factory, served, session):
    session.rollback()
    name = session.get(CodeBatch, 1).name
    with app.app_context():
        imports.import_codes(get_session(), program=served, stream=io.BytesIO(b"HS-B1-0001\n"),
                             batch_name=name, expires_on=None, actor="test")
        with pytest.raises(Conflict, match=r"2 batches are named .* \(#1, #2\): give the batch"):
            codes.set_batch_expiry(get_session(), program_id=served.id, batch=name,
                                   expires_on=None, actor="test")


def test_setting_a_batchs_expiry_after_the_fact(app, served, session, smtp_server):
    with app.app_context():
        change = codes.set_batch_expiry(get_session(), program_id=served.id, batch="1",
                                        expires_on=date(2031, 3, 31), actor="manager:1")
    assert (change.before, change.after) == (None, date(2031, 3, 31))
    session.rollback()
    assert session.get(CodeBatch, 1).expires_on == date(2031, 3, 31)
    assert _batch_events(session, codes.EXPIRY_CHANGED) == [
        {"before": None, "after": "2031-03-31", "actor": "manager:1", "object_id": 1}]
    with app.app_context():  # and back to no expiry
        change = codes.set_batch_expiry(get_session(), program_id=served.id, batch="1",
                                        expires_on=None, actor="manager:1")
    assert (change.before, change.after) == (date(2031, 3, 31), None)
    session.rollback()
    assert session.get(CodeBatch, 1).expires_on is None
    _verified(app, served)


def test_a_batchs_expiry_can_not_be_set_in_the_past(app, served, session):
    with app.app_context(), pytest.raises(InvalidInput, match="in the past") as refused:
        codes.set_batch_expiry(get_session(), program_id=served.id, batch="1",
                               expires_on=date(2026, 1, 1), actor="test",
                               today=date(2026, 1, 2))
    assert refused.value.field == "expires"
    session.rollback()
    assert session.get(CodeBatch, 1).expires_on is None
    assert _batch_events(session, codes.EXPIRY_CHANGED) == []
