"""Mail owed and queued, not yet sent: what the queue's and the transport's tests send."""

from __future__ import annotations

from datetime import date

import pytest
from sqlmodel import select

from wellness_perks.db import get_session
from wellness_perks.models import Claim, Creator, OutboundEmail
from wellness_perks.services import allocation


@pytest.fixture
def stocked(app, factory, session):
    """20 creators with allocated claims whose mails are queued, not yet sent."""
    from wellness_perks import dispatch

    program = factory.program(quota=50)
    factory.creators(program, [f"c{i:02d}@example.com" for i in range(20)])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(20)],
                  expires_on=date(2027, 6, 30))
    session.rollback()
    creators = session.exec(select(Creator).order_by(Creator.id)).all()
    session.add_all(Claim(program_id=program.id, creator_id=c.id, country=c.country)
                    for c in creators)
    session.commit()
    held = dispatch.send_emails
    dispatch.send_emails = lambda ids: None  # keep the mails queued for the test to send
    try:
        with app.app_context():
            allocation.allocate_program(get_session(), program_id=program.id)
    finally:
        dispatch.send_emails = held
    return sorted(session.exec(select(OutboundEmail.id)).all())
