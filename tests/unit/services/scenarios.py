"""Programs with codes in stock and pending claims, allocated from parallel threads and checked
by ``verify``; claims whose task was lost: the scenarios the tests of the allocation, claims,
programs, verify and the sweeper (and of the commands that run them) share."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from wellness_perks.db import get_session
from wellness_perks.models import Claim, Creator
from wellness_perks.services import allocation
from wellness_perks.services.verify import verify_program


def stocked_program(app, factory, session, *, quota, creators, codes, countries=("PK",),
                    **program_options):
    """A program with ``codes`` in stock and ``creators`` each holding a pending claim, the
    creators' countries cycling through ``countries``; claim ids in creator order."""
    program = factory.program(quota=quota, **program_options)
    for country in countries:
        emails = [f"creator{i:03d}@example.com" for i in range(creators)
                  if countries[i % len(countries)] == country]
        if emails:
            factory.creators(program, emails, country=country)
    if codes:
        factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(codes)])
    return program, pending_claims(session, program, creators)


def pending_claims(session, program, count):
    """Each listed creator's claim, pending, as the endpoint stores it (allocation not run)."""
    creators = session.exec(select(Creator).order_by(Creator.email)).all()[:count]
    rows = [Claim(program_id=program.id, creator_id=c.id, country=c.country) for c in creators]
    session.add_all(rows)
    session.commit()
    return [c.id for c in rows]


LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


def lost_claims(session, program, emails, requested_at=LONG_AGO):
    """Claims stored whose allocation task never ran (broker down, message lost)."""
    creators = session.exec(select(Creator).where(Creator.email.in_(emails))
                            .order_by(Creator.email)).all()
    session.add_all(Claim(program_id=program.id, creator_id=c.id, country=c.country,
                          requested_at=requested_at) for c in creators)
    session.commit()


def run_in_threads(app, jobs, threads=8):
    errors, lock, queue = [], threading.Lock(), list(jobs)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            try:
                with app.app_context():
                    job(get_session())
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a worker thread hung"
    assert errors == []


def allocate_each(app, claim_ids, threads=8):
    """An allocation task for each claim's program, as many as there are claims (more than a
    launch would queue), run in parallel."""
    with app.app_context():
        programs_of = dict(get_session().exec(select(Claim.id, Claim.program_id)
                                              .where(Claim.id.in_(claim_ids))).all())
    run_in_threads(app, [lambda s, pid=programs_of[cid]: allocation.allocate_program(
                             s, program_id=pid) for cid in claim_ids], threads=threads)


def verified(app, program):
    with app.app_context():
        violations = verify_program(get_session(), program_id=program.id)
    assert violations == [], [str(v) for v in violations]


def claim_states(session, program):
    session.rollback()
    return session.exec(select(Claim.id, Claim.state, Claim.reason, Claim.country)
                        .where(Claim.program_id == program.id).order_by(Claim.id)).all()
