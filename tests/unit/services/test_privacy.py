"""A creator's data: what they can see is kept, their request to be forgotten, and forgetting
them with the code accounting left whole."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel, select

from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Claim, Creator, MailStatus, OutboundEmail
from wellness_perks.services import auth, claims, privacy
from wellness_perks.services.errors import NotFound
from wellness_perks.services.tokens import mint_sign_in_token
from wellness_perks.services.verify import verify_program


@pytest.fixture
def served(app, factory, session, smtp_server):
    """Ayesha holds a code and was mailed it; Bilal's code mail is still owed (refused)."""
    program = factory.program(quota=5)
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002"])
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
        claims.request_claim(get_session(), program=program, creator_id=1)
        smtp_server.refuse_with = "451 4.3.0 try again later"
        claims.request_claim(get_session(), program=program, creator_id=2)
    smtp_server.refuse_with = None
    return program


def _every_text_value(session) -> list[str]:
    """Every string stored in any column of any table."""
    session.rollback()
    values = []
    for table in SQLModel.metadata.sorted_tables:
        for row in session.execute(sa.select(table)).all():
            values += [str(v) for v in row if isinstance(v, str)]
    session.rollback()
    return values


def test_forgetting_removes_the_person_and_keeps_the_accounting(app, served, session):
    session.rollback()
    ayesha = session.exec(select(Creator).where(Creator.email == "ayesha@example.com")).one()
    with app.app_context():
        old_link = mint_sign_in_token(ayesha)
        result = privacy.forget_creator(get_session(), email="Ayesha@Example.com", actor="test")
    assert (result.creator_id, result.mails_failed) == (ayesha.id, 0)
    assert not [v for v in _every_text_value(session) if "ayesha" in v.lower()]
    creator = session.get(Creator, ayesha.id, populate_existing=True)
    assert (creator.email, creator.handle, creator.name) == (
        f"forgotten-{ayesha.id}@forgotten.invalid", "forgotten", None)
    claim = session.exec(select(Claim).where(Claim.creator_id == ayesha.id)).one()
    assert claim.state == "allocated" and claim.code_id is not None  # still counted
    with app.app_context():
        assert verify_program(get_session(), program_id=served.id) == []
        with pytest.raises(auth.SignInLinkError):
            auth.redeem_sign_in_token(get_session(), token=old_link)
    [event] = session.exec(select(AuditEvent).where(AuditEvent.action == "creator.forgotten"))
    assert (event.object_id, event.actor) == (ayesha.id, "test")


def test_mails_still_owed_to_a_forgotten_creator_end_failed_with_the_reason(app, served,
                                                                            session):
    with app.app_context():
        result = privacy.forget_creator(get_session(), email="bilal@example.com", actor="test")
        assert verify_program(get_session(), program_id=served.id) == []
    assert result.mails_failed == 1
    session.rollback()
    [mail] = session.exec(select(OutboundEmail).where(OutboundEmail.creator_id == 2))
    assert (mail.status, mail.last_error) == (MailStatus.failed, "recipient_forgotten")
    assert mail.to_email == "forgotten-2@forgotten.invalid"


def test_forgetting_someone_unknown_changes_nothing(app, served, session):
    before = _every_text_value(session)
    with app.app_context(), pytest.raises(NotFound, match="nobody with the address"):
        privacy.forget_creator(get_session(), email="nobody@example.com", actor="test")
    assert _every_text_value(session) == before


def test_a_creator_sees_what_is_kept_and_a_deletion_request_is_recorded_once(app, served,
                                                                            session):
    with app.app_context():
        stored = privacy.stored_data(get_session(), creator_id=1)
        first = privacy.request_deletion(get_session(), creator_id=1)
        again = privacy.request_deletion(get_session(), creator_id=1)
        after = privacy.stored_data(get_session(), creator_id=1)
    assert (stored.email, stored.handle, stored.country) == ("ayesha@example.com", "@ayesha",
                                                             "PK")
    assert stored.programs == [("Headspace · 6 months", "allocated")]
    assert [(kind, status) for kind, status, _at in stored.mails] == [
        ("sign_in", "sent"), ("redemption", "sent")]
    assert stored.deletion_requested_at is None and first == again
    assert after.deletion_requested_at == first
    session.rollback()
    assert len(session.exec(select(AuditEvent).where(
        AuditEvent.action == "creator.deletion_requested")).all()) == 1
