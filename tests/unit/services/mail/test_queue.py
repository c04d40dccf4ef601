"""The mail queue (``mail/queue.py``): each owed mail sent once; failures recorded and retried
with backoff, then failed for good; a batch never sends a mail taken back meanwhile, and costs
one write a message."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from wellness_perks import create_app, dispatch
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Code, Creator, MailKind, OutboundEmail, Program
from wellness_perks.services import auth, claims, codes, mail, privacy
from wellness_perks.services.mail import transport


@pytest.fixture
def allocated(app, factory, smtp_server, session):
    """A creator with an allocated claim whose redemption mail is queued but not yet sent."""
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    creator_id = session.exec(select(Creator.id)).one()
    session.rollback()
    smtp_server.refuse_with = "451 4.3.0 try again later"
    with app.app_context():  # allocated, and its first attempt refused
        claims.request_claim(get_session(), program=program, creator_id=creator_id)
    outbound = session.exec(select(OutboundEmail).where(OutboundEmail.kind == "redemption")).one()
    return outbound.id


def _row(session, outbound_id):
    session.rollback()
    return session.get(OutboundEmail, outbound_id, populate_existing=True)


def test_refused_mail_is_recorded_and_retried_later(app, allocated, session, smtp_server):
    row = _row(session, allocated)
    assert (row.status, row.attempts) == ("queued", 1)
    assert "451" in row.last_error
    # Due one backoff (MAIL_RETRY_BASE_SECONDS, 1 s here) after the attempt, whenever we look.
    assert row.next_attempt_at >= row.sending_started_at + timedelta(seconds=1)

    with app.app_context(), pytest.raises(mail.MailRetryLater) as later:
        mail.send(get_session(), outbound_id=allocated)
    assert later.value.countdown == 2  # backoff doubles: 1 s, 2 s, ...
    assert _row(session, allocated).attempts == 2

    smtp_server.refuse_with = None
    with app.app_context():
        assert mail.send(get_session(), outbound_id=allocated) == "sent"
        assert mail.send(get_session(), outbound_id=allocated) == "sent"  # no second send
    row = _row(session, allocated)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert len(smtp_server.to("ayesha@example.com", "code")) == 1


def test_mail_fails_for_good_once_its_retries_span_the_window(app_config, allocated, session,
                                                               smtp_server):
    """Retried until the waits between its attempts span MAIL_RETRY_WINDOW_SECONDS: with a
    1 s base and a 7 s window, attempts 1-3 are followed by waits of 1, 2 and 4 s (7 s in all),
    so the fourth failure is the last."""
    app_config["MAIL_RETRY_WINDOW_SECONDS"] = 7
    app = create_app(app_config)
    with app.app_context():
        for attempt in (2, 3):
            with pytest.raises(mail.MailRetryLater) as later:
                mail.send(get_session(), outbound_id=allocated)
            assert later.value.countdown == 2 ** (attempt - 1)
        assert mail.send(get_session(), outbound_id=allocated) == "failed"
        assert mail.send(get_session(), outbound_id=allocated) == "failed"
    row = _row(session, allocated)
    assert (row.status, row.attempts) == ("failed", 4)
    assert "451" in row.last_error and row.next_attempt_at is None
    assert smtp_server.refused == 4
    app.extensions["db_engine"].dispose()


def test_the_default_window_outlasts_a_provider_incident(app):
    """Hours, not minutes: at the default base and cap, a mail is still being retried after
    five hours of refusals, and each wait is at most MAIL_RETRY_MAX_DELAY_SECONDS."""
    from wellness_perks.services.mail.queue import gives_up_after, retry_delay

    with app.app_context():
        app.config["MAIL_RETRY_BASE_SECONDS"] = 30
        attempts = gives_up_after()
        waits = [retry_delay(n) for n in range(1, attempts)]
    assert sum(waits) >= 5 * 3600
    assert max(waits) <= 3600
    assert waits[:3] == [30, 60, 120]


def test_permanent_refusal_fails_at_once(app, allocated, session, smtp_server):
    smtp_server.refuse_with = "550 5.1.1 no such mailbox"
    with app.app_context():
        assert mail.send(get_session(), outbound_id=allocated) == "failed"
    row = _row(session, allocated)
    assert (row.status, row.attempts) == ("failed", 2)
    assert "550" in row.last_error


def test_unreachable_smtp_server_is_retried(app_config, allocated, session):
    app_config["SMTP_PORT"] = 1  # nothing listens there
    app = create_app(app_config)
    with app.app_context(), pytest.raises(mail.MailRetryLater):
        mail.send(get_session(), outbound_id=allocated)
    row = _row(session, allocated)
    assert row.status == "queued" and "Refused" in row.last_error
    app.extensions["db_engine"].dispose()


@pytest.fixture
def slow_batch(app_config, stocked):
    """An app whose batches renew their leases all the time (every 10 ms), as a batch does
    every third of MAIL_SENDING_TIMEOUT_SECONDS."""
    app_config["MAIL_SENDING_TIMEOUT_SECONDS"] = 0
    app = create_app(app_config)
    yield app
    app.extensions["db_engine"].dispose()


@pytest.mark.parametrize("lease", ["fresh", "renewed"])
@pytest.mark.parametrize("taken_back", ["requeued", "retaken"])
def test_a_mail_taken_back_meanwhile_is_not_sent(request, stocked, session, smtp_server,
                                                 taken_back, lease):
    """The sweeper re-queued one mail of a batch in progress (and maybe another worker re-took
    it): the batch must skip it rather than send it a second time, whether it checks the
    message alone (a fresh lease) or renews the lease of all it has left."""
    app = request.getfixturevalue("app" if lease == "fresh" else "slow_batch")
    victim = stocked[3]
    real_send_all = transport.SmtpPool.send_all

    def send_all(pool, outgoing, ledger):
        session.rollback()
        took_back = {"status": "queued"} if taken_back == "requeued" else {
            "status": "sending", "attempts": OutboundEmail.attempts + 1}
        session.execute(sa.update(OutboundEmail).where(OutboundEmail.id == victim)
                        .values(**took_back))
        session.commit()
        real_send_all(pool, outgoing, ledger)

    with app.app_context():
        transport.SmtpPool.send_all = send_all
        try:
            outcome = mail.send_batch(get_session(), outbound_ids=stocked)
        finally:
            transport.SmtpPool.send_all = real_send_all
    assert victim not in outcome.sent and len(outcome.sent) == 19
    assert len(smtp_server.messages) == 19


def _outbound_updates(app):
    """The statements that write outboundemail while the block runs."""
    engine = app.extensions["db_engine"]
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        if "UPDATE OUTBOUNDEMAIL" in statement.upper():
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", count)


def _leases(session, ids):
    session.rollback()
    return session.exec(select(OutboundEmail.sending_started_at)
                        .where(OutboundEmail.id.in_(ids))
                        .execution_options(populate_existing=True)).all()


def test_the_writes_a_batch_costs(app, stocked, session, smtp_server):
    """A healthy batch: the take, then one record a message (on PostgreSQL the same statement
    reads whether the next message is still ours); its lease outlasts it, never renewed."""
    seen, stop = _outbound_updates(app)
    try:
        with app.app_context():
            outcome = mail.send_batch(get_session(), outbound_ids=stocked)
    finally:
        stop()
    assert len(outcome.sent) == 20
    assert len(seen) == 1 + 20
    assert len(set(_leases(session, stocked))) == 1


def test_a_slow_message_keeps_its_batchs_lease(app_config, stocked, session, smtp_server,
                                               monkeypatch):
    """One message takes the server longer than the whole lease (0.6 s here): the batch's
    lease is renewed meanwhile, in the background, so a sweep then takes nothing back and
    nothing is sent twice; the rest of the batch shares the renewed lease."""
    from sqlmodel import Session

    from wellness_perks.services import sweeper

    app_config["MAIL_SENDING_TIMEOUT_SECONDS"] = 0.6
    app = create_app(app_config)
    real_transact = transport.transact
    sweeps = []
    handed_out = []  # what the sweep would hand to other workers
    monkeypatch.setattr(dispatch, "send_emails", handed_out.extend)

    def slow_second(connection, from_addr, to_addr, raw):
        if len(smtp_server.messages) == 1 and not sweeps:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:  # the server is slow to answer
                time.sleep(0.05)
            with Session(app.extensions["db_engine"]) as other, app.app_context():
                sweeps.append(sweeper.sweep(other))
        real_transact(connection, from_addr, to_addr, raw)

    try:
        with app.app_context():
            transport.transact = slow_second
            try:
                outcome = mail.send_batch(get_session(), outbound_ids=stocked)
            finally:
                transport.transact = real_transact
    finally:
        app.extensions["db_engine"].dispose()
    assert [report.interrupted_mails for report in sweeps] == [[]]
    assert handed_out == []
    assert len(outcome.sent) == 20
    assert sorted(m["To"] for m in smtp_server.messages) == [
        f"c{i:02d}@example.com" for i in range(20)]
    assert len(set(_leases(session, stocked))) > 1  # renewed for those left after the first


def test_a_failed_lease_renewal_is_tried_again_within_a_tenth_of_a_beat(app, stocked,
                                                                         session):
    """The database was away at a renewal (the database cut twice in a row would make two
    failed beats, the lease then two thirds old): the next try comes a tenth of a beat later,
    on a new connection, and renews the lease; then the beat is a third of the timeout again."""
    import threading

    from wellness_perks.services.mail.queue import _Lease

    session.execute(sa.update(OutboundEmail).values(status="sending", attempts=1))
    session.commit()
    before = set(_leases(session, stocked))
    engine = app.extensions["db_engine"]
    waits: list[float] = []
    renewed = threading.Event()

    class Away:  # the engine as a renewal sees it: away once, then back
        failures = 1

        def begin(self):
            if self.failures:
                self.failures -= 1
                raise sa.exc.OperationalError("UPDATE", {}, Exception("connection ended"))
            if waits.count(lease.every) >= 1 and lease.retry_every in waits:
                renewed.set()
            return engine.begin()

    class Beats(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            if renewed.is_set() and len(waits) > 3:
                return True  # stop once renewed and the beat asked again
            return super().wait(0.001)

    with app.app_context():
        lease = _Lease(Away(), {i: 1 for i in stocked})
    lease.stopped = Beats()
    lease.thread.start()
    lease.thread.join(timeout=30)
    assert not lease.thread.is_alive()
    assert waits[:3] == [lease.every, lease.retry_every, lease.every]
    assert lease.retry_every == lease.every / 10
    assert set(_leases(session, stocked)).isdisjoint(before)  # renewed, all of them
    assert all(lease.holds(i) for i in stocked)


def test_the_outcome_is_kept_until_the_database_answers(app, backend, stocked, session,
                                                        smtp_server):
    """The database ends every connection of the app right after the server took a message
    (``pg_terminate_backend``), before it is recorded ``sent``: the batch keeps the outcome,
    records it on a new connection and goes on. Every message is sent once, and recorded."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL ends connections; SQLite has none to lose")
    real_transact = transport.transact

    def cut_off_after_the_fifth(connection, from_addr, to_addr, raw):
        real_transact(connection, from_addr, to_addr, raw)
        if len(smtp_server.messages) == 5:
            with app.extensions["db_engine"].connect() as admin:
                own = admin.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                admin.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> :own"), {"own": own})

    with app.app_context():
        transport.transact = cut_off_after_the_fifth
        try:
            outcome = mail.send_batch(get_session(), outbound_ids=stocked)
        finally:
            transport.transact = real_transact
    assert sorted(outcome.sent) == stocked
    assert len(smtp_server.messages) == len({m["Message-ID"] for m in smtp_server.messages}) == 20
    session.invalidate()
    app.extensions["db_engine"].dispose()  # the pooled connections were ended too
    rows = session.exec(select(OutboundEmail.status, OutboundEmail.attempts)).all()
    assert set(rows) == {("sent", 1)}


def _speaks(session, email: str, locale: str) -> None:
    session.execute(sa.update(Creator).where(Creator.email == email).values(locale=locale))
    session.commit()


def test_each_kind_of_mail_records_its_creators_language(app, factory, session, smtp_server):
    program = factory.program(quota=5)
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002", "HS-CODE-0003"])
    _speaks(session, "ayesha@example.com", "ur")
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
        auth.request_sign_in(get_session(), email="bilal@example.com")
        for creator_id in (1, 2):
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
        codes.reissue_claim(get_session(), program_id=program.id,
                            creator_email="ayesha@example.com", reason="test", actor="test")
    session.rollback()
    recorded = session.exec(select(OutboundEmail.to_email, OutboundEmail.kind,
                                   OutboundEmail.locale).order_by(OutboundEmail.id)).all()
    assert sorted(recorded) == sorted([
        ("ayesha@example.com", MailKind.sign_in, "ur"),
        ("bilal@example.com", MailKind.sign_in, "en"),
        ("ayesha@example.com", MailKind.redemption, "ur"),
        ("bilal@example.com", MailKind.redemption, "en"),
        ("ayesha@example.com", MailKind.reissue, "ur")])


def _fail_for_good(app, outbound_id, smtp_server):
    smtp_server.refuse_with = "550 5.7.1 relay refused for now"
    with app.app_context():
        assert mail.send(get_session(), outbound_id=outbound_id) == "failed"
    smtp_server.refuse_with = None


def test_failed_code_mails_are_sent_again_on_request(app, allocated, session, smtp_server):
    _fail_for_good(app, allocated, smtp_server)
    program_id = session.exec(select(Program.id)).one()
    with app.app_context():
        resent = mail.resend_failed(get_session(), program_id=program_id, actor="cli")
        again = mail.resend_failed(get_session(), program_id=program_id, actor="cli")
    assert resent.mail_ids == [allocated] and again.mail_ids == []  # a sent mail is not resent
    row = _row(session, allocated)
    assert (row.status, row.last_error) == ("sent", None)
    assert len(smtp_server.to("ayesha@example.com", "code")) == 1
    [event] = session.exec(select(AuditEvent).where(AuditEvent.action == "mail.resent")).all()
    assert (event.actor, event.program_id, event.object_id) == ("cli", program_id, allocated)


def test_a_failed_mail_of_a_code_voided_since_is_not_sent(
        app, allocated, factory, session, smtp_server):
    """Its claim got a new code (and a mail of its own): the voided code must not go out."""
    _fail_for_good(app, allocated, smtp_server)
    program = session.exec(select(Program)).one()
    program_id = program.id
    session.rollback()
    factory.codes(program, ["HS-AAAA-0002"])
    with app.app_context():
        codes.reissue_claim(get_session(), program_id=program_id,
                            creator_email="ayesha@example.com", reason="test", actor="cli")
        assert mail.resend_failed(get_session(), program_id=program_id, actor="cli").mail_ids == []
    assert _row(session, allocated).status == "failed"
    assert [m.kind for m in session.exec(select(OutboundEmail).where(
        OutboundEmail.status == "sent")).all()] == ["reissue"]
    assert _row(session, allocated).status == "failed"


def test_resend_failed_leaves_other_programs_and_older_failures(
        app, allocated, factory, session, smtp_server):
    _fail_for_good(app, allocated, smtp_server)
    program_id = session.exec(select(Program.id)).one()
    other = factory.program(slug="calm-6m")
    with app.app_context():
        assert mail.resend_failed(get_session(), program_id=other.id, actor="cli").mail_ids == []
        earlier = _row(session, allocated).created_at - timedelta(minutes=1)
        assert mail.resend_failed(get_session(), program_id=other.id, actor="cli",
                                  since=earlier).mail_ids == []
        later = _row(session, allocated).created_at + timedelta(minutes=1)
        assert mail.resend_failed(get_session(), program_id=program_id, actor="cli",
                                  since=later).mail_ids == []
    assert _row(session, allocated).status == "failed"


def test_a_forgotten_creators_failed_mail_is_not_resent(app, allocated, session, smtp_server):
    _fail_for_good(app, allocated, smtp_server)
    program_id = session.exec(select(Program.id)).one()
    with app.app_context():
        privacy.forget_creator(get_session(), email="ayesha@example.com", actor="cli")
        assert mail.resend_failed(get_session(), program_id=program_id, actor="cli").mail_ids == []


@pytest.mark.parametrize(("base", "window", "last_attempt"), [
    (1, 1, 2),   # waits of 1 s: the first wait spans the window
    (1, 2, 3),   # 1 + 2 s
    (1, 3, 3),
    (1, 4, 4),   # 1 + 2 + 4 s
    (0, 3, 4),   # a zero base waits (at least) a second a time, and still ends
])
def test_the_attempt_that_fails_for_good_is_the_first_whose_waits_span_the_window(
        app, base, window, last_attempt):
    from wellness_perks.services.mail.queue import gives_up_after

    with app.app_context():
        app.config.update(MAIL_RETRY_BASE_SECONDS=base, MAIL_RETRY_WINDOW_SECONDS=window)
        assert gives_up_after() == last_attempt


def test_the_backoff_doubles_up_to_its_cap(app):
    from wellness_perks.services.mail.queue import retry_delay

    with app.app_context():
        app.config.update(MAIL_RETRY_BASE_SECONDS=30, MAIL_RETRY_MAX_DELAY_SECONDS=100)
        assert [retry_delay(n) for n in (0, 1, 2, 3, 4)] == [30, 30, 60, 100, 100]


def test_a_failure_is_recorded_with_its_kind_and_at_most_a_thousand_characters():
    from wellness_perks.services.mail.queue import BatchOutcome, _record_failure
    from wellness_perks.services.mail.transport import Outgoing, PermanentMailError

    booked: list[dict] = []
    outcome = BatchOutcome()
    item = Outgoing(outbound_id=7, to_email="a@example.com", attempts=1, kind="redemption",
                    claim_id=3)
    _record_failure(lambda _statement, params: booked.append(params) or {7},
                    item, PermanentMailError("550 " + "x" * 2000), outcome)
    [params] = booked
    assert params["b_error"] == ("PermanentMailError: 550 " + "x" * 2000)[:1000]
    assert (params["b_id"], params["b_status"], params["b_next_attempt_at"]) == (
        7, "failed", None)
    assert (outcome.failed, outcome.retry) == ([7], {})


def test_a_mail_that_is_not_there_is_unknown(app):
    with app.app_context():
        assert mail.send(get_session(), outbound_id=424242) == "unknown"


def test_a_batchs_outcome_counts_each_fate_and_a_retry_says_when():
    from wellness_perks.services.mail.queue import BatchOutcome

    outcome = BatchOutcome(sent=[1, 2, 3], failed=[4], cancelled=[5, 6], retry={7: 30, 8: 60})
    assert outcome.counts() == {"sent": 3, "retry": 2, "failed": 1, "cancelled": 2}
    assert str(mail.MailRetryLater(30)) == "retry in 30s"


def test_a_mail_sent_again_starts_a_new_run_of_attempts_now(app, allocated, session,
                                                            smtp_server, monkeypatch):
    """What resend_failed writes, before a worker sends it: queued, no attempt yet, due now,
    no lease; one audit event a mail, dated now. Only code mails of the program are resent,
    created at or after ``since``."""
    _fail_for_good(app, allocated, smtp_server)
    program_id = session.exec(select(Program.id)).one()
    smtp_server.refuse_with = "550 5.7.1 relay refused for now"
    with app.app_context():  # a failed sign-in mail is not a code mail
        sign_in = auth.request_sign_in(get_session(), email="ayesha@example.com")
    smtp_server.refuse_with = None
    assert _row(session, sign_in).status == "failed"
    created_at = _row(session, allocated).created_at
    handed_out: list[list[int]] = []
    monkeypatch.setattr("wellness_perks.dispatch.send_emails", handed_out.append)
    with app.app_context():
        assert mail.resend_failed(get_session(), program_id=program_id, actor="cli",
                                  since=created_at).mail_ids == [allocated]
    assert handed_out == [[allocated]]
    row = _row(session, allocated)
    assert (row.status, row.attempts, row.sending_started_at) == ("queued", 0, None)
    [event] = session.exec(select(AuditEvent).where(AuditEvent.action == "mail.resent")).all()
    assert (event.object_type, event.object_id) == ("outbound_email", allocated)
    assert row.next_attempt_at == event.at
    assert _row(session, sign_in).status == "failed"


def test_a_batch_cancels_the_mails_of_voided_codes_and_sends_the_rest(app, stocked, session,
                                                                      smtp_server):
    voided = stocked[:2]
    session.execute(sa.update(Code).where(Code.id.in_(
        select(OutboundEmail.code_id).where(OutboundEmail.id.in_(voided)))).values(status="void"))
    session.commit()
    with app.app_context():
        outcome = mail.send_batch(get_session(), outbound_ids=stocked)
    assert (outcome.cancelled, outcome.sent) == (voided, stocked[2:])
    assert len(smtp_server.messages) == 18
    session.rollback()
    rows = {r.id: (r.status, r.last_error) for r in session.exec(
        select(OutboundEmail).execution_options(populate_existing=True)).all()}
    assert [rows[i] for i in voided] == [("cancelled", "code_voided")] * 2
    assert {rows[i] for i in stocked[2:]} == {("sent", None)}


def test_a_mail_that_cannot_be_rendered_is_retried_and_the_batch_goes_on(
        app, stocked, session, smtp_server, monkeypatch):
    from wellness_perks.services.mail import queue

    broken = stocked[:2]
    real_render = queue.render

    def render(outbound, *rest):
        if outbound.id in broken:
            raise RuntimeError("template missing")
        return real_render(outbound, *rest)

    monkeypatch.setattr(queue, "render", render)
    with app.app_context():
        outcome = mail.send_batch(get_session(), outbound_ids=stocked)
    assert (sorted(outcome.retry), outcome.sent) == (broken, stocked[2:])
    assert outcome.not_taken == [] and len(smtp_server.messages) == 18
    session.rollback()
    rows = {r.id: r for r in session.exec(
        select(OutboundEmail).execution_options(populate_existing=True)).all()}
    assert {(rows[i].status, rows[i].attempts, rows[i].last_error) for i in broken} == {
        ("queued", 1, "RuntimeError: template missing")}


def test_a_batch_leaves_alone_the_mails_it_did_not_take(app, stocked, session, smtp_server):
    with app.app_context():
        first = mail.send_batch(get_session(), outbound_ids=stocked[:5])
        again = mail.send_batch(get_session(), outbound_ids=stocked[:10])
    assert (first.not_taken, first.sent) == ([], stocked[:5])
    assert (again.not_taken, again.sent) == (stocked[:5], stocked[5:10])
    assert len(smtp_server.messages) == 10


def test_on_postgresql_recording_a_message_also_checks_the_next_one(app, stocked, session,
                                                                    smtp_server, backend):
    """One statement a message: it records the message sent and reads whether the next one is
    still the batch's; only the first message is checked alone. (SQLite has no UPDATE in a
    WITH: there recording and checking are two statements.)"""
    engine = app.extensions["db_engine"]
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        if "outboundemail" in statement.lower():
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with app.app_context():
            outcome = mail.send_batch(get_session(), outbound_ids=stocked)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(outcome.sent) == 20
    # the take, the load of what the mails say, the first message's check, then per message
    per_message = 1 if backend == "postgresql" else 2
    assert len(seen) == 3 + 19 * per_message + 1, "\n".join(seen)
