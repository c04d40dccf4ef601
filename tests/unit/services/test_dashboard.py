"""The dashboard's numbers are the program's: equal to direct counts of its rows (and to a
clean ``verify``), with claims in every state, batches expiring and not, hours rolled up and
not; the stock warnings and the estimate of when stock runs out follow the counters."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from tests.unit.services.scenarios import pending_claims
from wellness_perks.db import get_session
from wellness_perks.models import (
    Claim,
    ClaimHour,
    ClaimReason,
    ClaimState,
    Code,
    CodeBatch,
    CodeStatus,
    Creator,
    MailStatus,
    OutboundEmail,
    Program,
)
from wellness_perks.services import claims, dashboard, sweeper
from wellness_perks.services.verify import verify_program

TODAY = datetime.now(UTC).date()


def _dashboard(app, program, now=None) -> dashboard.Dashboard:
    with app.app_context():
        return dashboard.program_dashboard(get_session(), program=program, now=now)


def _creator_ids(session, country=None) -> list[int]:
    session.rollback()
    query = select(Creator.id).order_by(Creator.email)
    if country:
        query = query.where(Creator.country == country)
    found = list(session.exec(query).all())
    session.rollback()  # no snapshot kept: the app writes next
    return found


def test_the_numbers_equal_direct_counts_with_claims_in_every_state(app, factory, session,
                                                                    smtp_server):
    program = factory.program(quota=20, country_quotas={"PK": 3, "IN": 5})
    factory.creators(program, [f"pk{i}@example.com" for i in range(6)], country="PK")
    factory.creators(program, [f"in{i}@example.com" for i in range(3)], country="IN")
    factory.codes(program, [f"HS-SOON-{i:04d}" for i in range(4)],
                  expires_on=TODAY + timedelta(days=10))
    factory.codes(program, [f"HS-LATE-{i:04d}" for i in range(5)])
    pk, india = _creator_ids(session, "PK"), _creator_ids(session, "IN")
    with app.app_context():
        for creator_id in pk[:4] + india[:2]:  # PK's quota of 3: the fourth waits
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
        claims.request_claim(get_session(), program=program, creator_id=pk[4],
                             now=datetime.now(UTC) + timedelta(days=31))  # refused: closed
    smtp_server.wait_for_mail("in1@example.com")
    session.rollback()
    session.add(Claim(program_id=program.id, creator_id=india[2], country="IN"))  # pending
    session.commit()
    # One code mail owed (queued), one failed: as the outbox leaves them.
    mails = session.exec(select(OutboundEmail.id).order_by(OutboundEmail.id)).all()
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == mails[0])
                    .values(status=MailStatus.failed.value, last_error="550 no such user"))
    session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == mails[1])
                    .values(status=MailStatus.queued.value, sent_at=None))
    session.commit()

    d = _dashboard(app, program)

    by_state = dict(session.execute(sa.select(Claim.state, sa.func.count())
                                    .where(Claim.program_id == program.id)
                                    .group_by(Claim.state)).all())
    mail_of = {status: n for status, n in session.execute(
        sa.select(OutboundEmail.status, sa.func.count())
        .join(Claim, sa.and_(Claim.id == OutboundEmail.claim_id,
                             Claim.code_id == OutboundEmail.code_id))
        .where(Claim.program_id == program.id).group_by(OutboundEmail.status)).all()}
    assert d.claims == {
        "pending": by_state["pending"], "allocated": by_state["allocated"],
        "waitlisted": by_state["waitlisted"], "refused": by_state["refused"],
        "mailed": mail_of["sent"], "mail_owed": mail_of["queued"],
        "mail_failed": mail_of["failed"]}
    assert d.claims == {"pending": 1, "allocated": 5, "waitlisted": 1, "refused": 1,
                        "mailed": 3, "mail_owed": 1, "mail_failed": 1}
    in_stock = dict(session.execute(sa.select(Code.batch_id, sa.func.count())
                                    .where(Code.status == CodeStatus.available)
                                    .group_by(Code.batch_id)).all())
    assert [(b.batch_id, b.in_stock) for b in d.batches] == [
        (b.batch_id, in_stock.get(b.batch_id, 0)) for b in d.batches]
    assert [(b.code_count, b.in_stock, b.expires_soon, b.expired) for b in d.batches] == [
        (4, 0, True, False), (5, 4, False, False)]
    assert (d.quota, d.allocated, d.remaining, d.in_stock) == (20, 5, 15, 4)
    assert d.expiring_soon == 0 and d.expired == 0
    assert [(c.country, c.quota, c.allocated, c.remaining) for c in d.countries] == [
        ("IN", 5, 2, 3), ("PK", 3, 3, 0)]
    assert [w.code for w in d.warnings] == ["stock_below_quota", "code_mails_failed"]
    assert d.warnings[0].params == {"in_stock": 4, "remaining": 15, "short": 11}
    # Every claim made in this hour, counted live; the refused one is dated a month ahead.
    assert sum(n for _hour, n in d.per_hour) == sum(n for _day, n in d.per_day) == 7
    with app.app_context():
        violations = verify_program(get_session(), program_id=program.id)
    assert [str(v) for v in violations if v.invariant == "I2"] == []


def _claims_at(session, program, creator_ids, times, state=ClaimState.refused):
    session.add_all(Claim(program_id=program.id, creator_id=creator_id, country="PK",
                          state=state.value, reason=ClaimReason.not_eligible.value,
                          requested_at=at, decided_at=at)
                    for creator_id, at in zip(creator_ids, times, strict=True))
    session.commit()


NOW = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)


def test_claims_per_hour_are_the_same_rolled_up_or_counted_live(app, factory, session):
    program = factory.program(quota=100)
    factory.creators(program, [f"c{i:02d}@example.com" for i in range(12)])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(50)])
    ids = _creator_ids(session)
    times = [NOW - timedelta(hours=30, minutes=5)] * 2 + [  # 06:25 the day before
        NOW - timedelta(hours=2)] * 3 + [  # 10:30
        NOW - timedelta(minutes=40)] * 4 + [  # 11:50
        NOW - timedelta(minutes=10)] * 2 + [  # 12:20, this hour
        NOW - timedelta(days=20)]  # older than every chart
    _claims_at(session, program, ids, times)

    live = _dashboard(app, program, NOW)
    hours = dict(live.per_hour)
    assert len(live.per_hour) == dashboard.HOURS_SHOWN
    assert live.per_hour[-1][0] == datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert hours[datetime(2026, 12, 5, 6, tzinfo=UTC)] == 2
    assert hours[datetime(2026, 12, 6, 10, tzinfo=UTC)] == 3
    assert hours[datetime(2026, 12, 6, 11, tzinfo=UTC)] == 4
    assert hours[datetime(2026, 12, 6, 12, tzinfo=UTC)] == 2
    assert sum(hours.values()) == 11
    days = dict(live.per_day)
    assert len(live.per_day) == dashboard.DAYS_SHOWN
    assert (days[date(2026, 12, 5)], days[date(2026, 12, 6)]) == (2, 9)

    with app.app_context():
        assert dashboard.roll_up(get_session(), now=NOW) == [program.id]
        assert dashboard.roll_up(get_session(), now=NOW) == []  # nothing new to roll up
    session.rollback()
    rows = session.exec(select(ClaimHour.hour, ClaimHour.claims, ClaimHour.in_stock)
                        .order_by(ClaimHour.hour)).all()
    # Every hour before 12:00 with claims, and 11:00, the last, with the stock; not 12:00.
    assert [(hour, n) for hour, n, _stock in rows] == [
        (datetime(2026, 11, 16, 12, tzinfo=UTC), 1), (datetime(2026, 12, 5, 6, tzinfo=UTC), 2),
        (datetime(2026, 12, 6, 10, tzinfo=UTC), 3), (datetime(2026, 12, 6, 11, tzinfo=UTC), 4)]
    assert [stock for _h, _n, stock in rows] == [None, None, None, 50]

    rolled = _dashboard(app, program, NOW)
    assert rolled.per_hour == live.per_hour and rolled.per_day == live.per_day
    assert rolled.stock_over_time == [(datetime(2026, 12, 6, 12, tzinfo=UTC), 50), (NOW, 50)]
    # A claim after the last rolled-up hour is counted live.
    factory.creators(program, ["late@example.com"])
    [late] = [i for i in _creator_ids(session) if i not in ids]
    _claims_at(session, program, [late], [NOW - timedelta(minutes=1)])
    assert dict(_dashboard(app, program, NOW).per_hour)[
        datetime(2026, 12, 6, 12, tzinfo=UTC)] == 3
    with app.app_context():
        assert [v for v in verify_program(get_session(), program_id=program.id)
                if v.invariant == "I2"] == []


def test_an_hour_is_rolled_up_only_once_its_margin_has_passed(app, factory, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    _claims_at(session, program, _creator_ids(session), [NOW - timedelta(minutes=31)])  # 11:59
    with app.app_context():
        dashboard.roll_up(get_session(), now=NOW.replace(minute=4))  # 12:04: 11:00 not over
    session.rollback()
    assert [h for h, in session.execute(sa.select(ClaimHour.hour)).all()] == [
        datetime(2026, 12, 6, 10, tzinfo=UTC)]
    with app.app_context():
        assert dashboard.roll_up(get_session(), now=NOW.replace(minute=6)) == [program.id]
    session.rollback()
    assert session.execute(sa.select(ClaimHour.claims).where(
        ClaimHour.hour == datetime(2026, 12, 6, 11, tzinfo=UTC))).scalar_one() == 1


def test_the_sweeper_rolls_up_every_programs_hours(app, factory, session):
    first = factory.program(quota=10)
    second = factory.program(slug="calm-1y", quota=10)
    with app.app_context():
        report = sweeper.sweep(get_session(), now=NOW)
    assert report.rolled_up == [first.id, second.id]
    session.rollback()
    assert session.execute(sa.select(ClaimHour.program_id, ClaimHour.hour, ClaimHour.claims)
                           .order_by(ClaimHour.program_id)).all() == [
        (first.id, datetime(2026, 12, 6, 11, tzinfo=UTC), 0),
        (second.id, datetime(2026, 12, 6, 11, tzinfo=UTC), 0)]


def test_the_rate_of_the_last_hours_says_when_stock_runs_out(app, factory, session):
    program = factory.program(quota=100)
    factory.creators(program, [f"c{i:02d}@example.com" for i in range(14)])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(14)])
    ids = _creator_ids(session)
    # 14 claims in the last 3.5 hours (09:00 to 12:30): 4 an hour. Refused, so none waits.
    _claims_at(session, program, ids, [NOW - timedelta(minutes=10 * i) for i in range(14)])
    d = _dashboard(app, program, NOW)
    assert d.rate_per_hour == 4.0
    assert not d.quota_fills_first
    assert d.stock_runs_out_at == NOW + timedelta(hours=14 / 4)
    assert [w.code for w in d.warnings] == ["stock_below_quota"]


def test_claims_waiting_take_the_stock_first(app, factory, session):
    program = factory.program(quota=100)
    factory.creators(program, [f"c{i:02d}@example.com" for i in range(6)])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(4)])
    pending_claims(session, program, 6)  # pending: allocation has not run
    d = _dashboard(app, program)
    assert d.waiting == 6
    assert d.stock_runs_out_at is not None and d.stock_runs_out_at <= datetime.now(UTC)
    assert [(w.code, w.params) for w in d.warnings] == [
        ("stock_below_quota", {"in_stock": 4, "remaining": 100, "short": 96}),
        ("stock_below_waiting", {"in_stock": 4, "waiting": 6, "short": 2})]


def test_stock_that_covers_the_quota_never_runs_out(app, factory, session):
    program = factory.program(quota=3)
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(5)],
                  expires_on=TODAY + timedelta(days=1))
    session.execute(sa.update(CodeBatch).values(expires_on=TODAY - timedelta(days=1)))
    session.commit()  # as time passing would have it
    d = _dashboard(app, program)
    assert d.quota_fills_first and d.stock_runs_out_at is None
    assert d.expired == 5 and d.expiring_soon == 0
    assert [(w.code, w.params) for w in d.warnings] == [("codes_expired_in_stock",
                                                         {"count": 5})]
    assert d.rate_per_hour == 0


def test_batch_counters_follow_allocation_voids_and_restores(app, factory, session):
    from wellness_perks.services import codes

    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    factory.codes(program, ["HS-FIRST-0001"])
    factory.codes(program, ["HS-SECOND-0001", "HS-SECOND-0002"])
    [creator_id] = _creator_ids(session)
    with app.app_context():
        claims.request_claim(get_session(), program=program, creator_id=creator_id)
        # Its code (the first batch's) voided: the reissue takes one of the second batch's.
        codes.reissue_claim(get_session(), program_id=program.id,
                            creator_email="a@example.com", reason="leaked", actor="test")
        codes.void_code(get_session(), program_id=program.id, value="HS-SECOND-0002",
                        reason="typo", actor="test")
    assert [b.in_stock for b in _dashboard(app, program).batches] == [0, 0]
    with app.app_context():
        codes.restore_code(get_session(), program_id=program.id, value="HS-SECOND-0002",
                           actor="test")
    assert [b.in_stock for b in _dashboard(app, program).batches] == [0, 1]
    session.rollback()
    assert session.get(Program, program.id).in_stock_count == 1


def test_a_write_committed_while_the_rollup_reads_does_not_fail_it(app, factory, session,
                                                                  monkeypatch):
    """Another process writes while the rollup reads the hours (a mail batch renewing its
    lease, a claim): the rollup still writes them. On SQLite a reader cannot become a writer
    once another writer has committed, so the rollup takes the write lock before it reads; the
    other writer then waits for it instead."""
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    _claims_at(session, program, _creator_ids(session), [NOW - timedelta(hours=2)])
    session.rollback()
    engine = app.extensions["db_engine"]
    other_wrote = threading.Event()

    def other_writer():
        with engine.begin() as connection:
            connection.execute(sa.update(Program).where(Program.id == program.id)
                               .values(name=Program.name + " (renamed)"))
        other_wrote.set()

    real = dashboard.claims_by_hour
    writers = []

    def read_while_another_writes(*args, **kwargs):
        counts = real(*args, **kwargs)
        writer = threading.Thread(target=other_writer)
        writer.start()
        writers.append(writer)
        other_wrote.wait(timeout=1)  # it commits at once unless the rollup holds the lock
        return counts

    monkeypatch.setattr(dashboard, "claims_by_hour", read_while_another_writes)
    with app.app_context():
        assert dashboard.roll_up(get_session(), now=NOW) == [program.id]
    for writer in writers:
        writer.join(timeout=30)
    assert other_wrote.is_set()  # the other writer went on once the rollup had committed
    session.rollback()
    assert session.execute(sa.select(sa.func.sum(ClaimHour.claims))).scalar_one() == 1
