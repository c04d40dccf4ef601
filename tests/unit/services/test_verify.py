"""``verify`` (I1-I5) finds each broken invariant, in the words of its message, when the data
is corrupted the way a bug would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from tests.unit.services.scenarios import allocate_each, stocked_program, verified
from wellness_perks.db import get_session
from wellness_perks.models import Claim, Code, Creator, OutboundEmail, Program
from wellness_perks.services.verify import verify_program


def test_verify_reports_each_broken_invariant(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=5, creators=3, codes=5)
    allocate_each(app, claim_ids)
    verified(app, program)
    factory.creators(program, ["late@example.com"])
    session.rollback()
    late = session.exec(select(Creator).where(Creator.email == "late@example.com")).one()
    stuck = Claim(program_id=program.id, creator_id=late.id, country=late.country,
                  requested_at=datetime.now(UTC) - timedelta(hours=1))
    session.add(stuck)
    session.commit()
    _first, second, third = (session.get(Claim, i) for i in claim_ids)
    # Break things the way a bug would.
    session.execute(sa.update(Code).where(Code.id == third.code_id).values(status="available"))
    session.execute(sa.update(Program).where(Program.id == program.id)
                    .values(allocated_count=2))
    session.execute(sa.delete(OutboundEmail).where(OutboundEmail.claim_id == second.id))
    session.commit()
    with app.app_context():
        found = verify_program(get_session(), program_id=program.id)
    text = "\n".join(str(v) for v in found)
    assert {v.invariant for v in found} == {"I1", "I2", "I4", "I5"}, text
    assert f"code={third.code_id}" in text and "back in stock" in text
    assert "3 allocated, counter says 2" in text
    assert "I4: pending since" in text and f"claim={stuck.id}" in text
    assert f"I5: allocated, but no mail for its code (claim={second.id}" in text


def test_verify_reports_a_wrong_stock_counter(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=5, creators=3, codes=5)
    allocate_each(app, claim_ids)
    verified(app, program)
    session.execute(sa.update(Program).where(Program.id == program.id)
                    .values(in_stock_count=Program.in_stock_count + 1))
    session.commit()
    with app.app_context():
        found = verify_program(get_session(), program_id=program.id)
    assert [str(v) for v in found] == ["I2: 2 codes in stock, counter says 3"]
