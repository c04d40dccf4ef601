"""The delivery page's lists and the audit log's pages read index ranges, never a scan of the
outbox or of the log: checked on PostgreSQL with 100,000 claims and mails, nearly all sent, and
100,000 audit events (EXPLAIN ANALYZE, so the plan is the one the statement really runs)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.services.test_health_plans import GROW, explain, migrated_pg_database
from wellness_perks.db import make_engine
from wellness_perks.services import audit, verify

# The health test's programs, creators and claims; its mails, each one a claim's, of its program.
MAILS = (
    "INSERT INTO outboundemail (kind, to_email, claim_id, program_id, status, attempts, "
    "created_at, sent_at, next_attempt_at) SELECT 'redemption', 'c' || g || '@example.com', g, "
    "1 + g %% 3, "
    "CASE WHEN g %% 20000 = 3 THEN 'queued' WHEN g %% 30000 = 5 THEN 'failed' ELSE 'sent' END, "
    "1, now() - interval '1 day', now(), CASE WHEN g %% 40000 = 3 THEN now() - interval '1 day' "
    "END FROM generate_series(1, 100000) g",
    # A backlog, as a launch leaves one while mail is held or refused: the newest mails, half
    # still queued (never tried) and overdue, half failed, on the claims of every program. A
    # walk of the outbox by id would read every mail sent before reaching them; a read of
    # every mail of a status, every program's.
    "INSERT INTO outboundemail (kind, to_email, claim_id, program_id, status, attempts, "
    "last_error, created_at) SELECT 'reissue', 'c' || g || '@example.com', g, 1 + g %% 3, "
    "CASE WHEN g %% 2 = 0 THEN 'failed' ELSE 'queued' END, 0, "
    "CASE WHEN g %% 2 = 0 THEN '550 mailbox unavailable' END, now() - interval '1 hour' "
    "FROM generate_series(1, 6000) g",
    "INSERT INTO auditevent (at, actor, action, object_type, object_id, program_id) "
    "SELECT now() - g * interval '1 s', 'manager:' || (g %% 7), "
    "CASE WHEN g %% 3 = 0 THEN 'mail.resent' ELSE 'code.revealed' END, 'code', g, 1 + g %% 3 "
    "FROM generate_series(1, 100000) g",
    # A manager who did little, long ago, among the claims' events.
    "INSERT INTO auditevent (at, actor, action, object_type, object_id, program_id) "
    "SELECT now() - interval '30 days' - g * interval '1 s', 'manager:rare', 'batch.voided', "
    "'batch', g, 1 FROM generate_series(1, 5) g",
    "ANALYZE",
)

pytestmark = pytest.mark.one_process  # one grown database per module


@pytest.fixture(scope="module")
def grown_engine():
    with migrated_pg_database() as url:
        engine = make_engine(url)
        with engine.begin() as conn:
            for statement in GROW[:3] + MAILS:
                conn.exec_driver_sql(statement)
        yield engine
        engine.dispose()


@pytest.mark.parametrize("show", list(verify.Undelivered))
@pytest.mark.parametrize("after_id", [0, 50000, 100100])
def test_the_undelivered_lists_walk_their_status_index_to_the_page(grown_engine, show,
                                                                    after_id):
    """Each status's mails of the program are read in id order from the page's keyset on the
    partial index of the mails not sent, and the read stops at the page: never a walk of the
    outbox by id (the backlog is at its end), nor a read and sort of the whole backlog, nor a
    walk of other programs' backlogs (a mail is found by its own program, not its claim's)."""
    plan = explain(grown_engine, verify.undelivered_statement(
        program_id=1, show=show, after_id=after_id, limit=50,
        cutoff=datetime.now(UTC) - timedelta(minutes=2), lease=timedelta(seconds=20)))
    assert "Seq Scan on outboundemail" not in plan, plan
    assert " on claim" not in plan, plan
    assert "outboundemail_pkey" not in plan, plan
    assert "ix_outbound_undelivered" in plan, plan
    assert "Sort Method" not in plan, plan  # merged in id order, not sorted
    rows = [int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plan)]
    assert max(rows) <= 51, plan


def test_a_page_of_the_backlog_is_its_oldest_mails_after_the_keyset(grown_engine):
    """The per-status pages, merged: the same mails, in the same order, as the plain query."""
    cutoff = datetime.now(UTC) - timedelta(minutes=2)
    statement = verify.undelivered_statement(
        program_id=1, show=verify.Undelivered.overdue, after_id=100000, limit=50,
        cutoff=cutoff, lease=timedelta(seconds=20))
    with grown_engine.connect() as conn:
        ids = [row.id for row in conn.execute(statement)]
        expected = list(conn.exec_driver_sql(
            "SELECT m.id FROM outboundemail m JOIN claim c ON c.id = m.claim_id "
            "WHERE c.program_id = 1 AND m.status = 'queued' AND m.id > 100000 "
            "AND coalesce(m.next_attempt_at, m.created_at) < now() - interval '2 minutes' "
            "ORDER BY m.id LIMIT 51").scalars())
    assert len(ids) == 51 and ids == expected


NOW = datetime.now(UTC)


@pytest.mark.parametrize("filters", [
    audit.AuditFilter(),
    audit.AuditFilter(program_id=2),
    audit.AuditFilter(action="mail.resent"),
    audit.AuditFilter(actor="manager:3", since=NOW - timedelta(hours=2), until=NOW),
    audit.AuditFilter(actor="manager:rare"),
    audit.AuditFilter(action="batch.voided", program_id=1),
])
@pytest.mark.parametrize("deep", [False, True])
def test_audit_pages_walk_the_time_index(grown_engine, filters, deep):
    before = (NOW - timedelta(hours=20), 99999) if deep else None
    plan = explain(grown_engine, audit.search_statement(filters, before=before))
    assert "Seq Scan on auditevent" not in plan, plan
    # A walk down the time index that stops at the page: no sort of every match.
    rows = [int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plan)]
    assert max(rows) <= 1000, plan


# A program of 100,000 creators on its list, 3,000 of them invited (some reminded), in an outbox
# of 100,000 code mails.
INVITATIONS = (
    "INSERT INTO eligibility (program_id, creator_id, created_at) "
    "SELECT 2, g, now() FROM generate_series(1, 100000) g",
    "INSERT INTO outboundemail (kind, to_email, creator_id, program_id, status, attempts, "
    "created_at) SELECT CASE WHEN g > 3000 THEN 'reminder' ELSE 'invitation' END, "
    "'c' || g || '@example.com', g, 2, 'sent', 1, now() FROM generate_series(1, 4000) g",
    "INSERT INTO invitation (program_id, creator_id, invited_at, invitation_mail_id) "
    "SELECT 2, g, now() - interval '5 days', o.id FROM generate_series(1, 3000) g "
    "JOIN outboundemail o ON o.creator_id = g AND o.kind = 'invitation'",
    "UPDATE invitation i SET reminded_at = now(), reminder_mail_id = o.id FROM outboundemail o "
    "WHERE o.kind = 'reminder' AND o.creator_id = i.creator_id - 2000",
    "ANALYZE",
)


@pytest.fixture(scope="module")
def invited_engine(grown_engine):
    with grown_engine.begin() as conn:
        for statement in INVITATIONS:
            conn.exec_driver_sql(statement)
    return grown_engine


def test_the_invitation_mail_counts_never_walk_the_outbox(invited_engine):
    from wellness_perks.services import invitations

    plan = explain(invited_engine, invitations.mails_by_status(2))
    assert "Seq Scan on outboundemail" not in plan, plan
    assert "ix_outbound_program_kind_status" in plan, plan


@pytest.mark.parametrize("statement", ["uninvited", "reminders_due"])
def test_who_is_invited_is_found_by_the_lists_and_invitations_indexes(invited_engine,
                                                                      statement):
    from wellness_perks.services import invitations

    built = (invitations.uninvited(2) if statement == "uninvited"
             else invitations.reminders_due(2, NOW - timedelta(days=3)))
    plan = explain(invited_engine, built.limit(500))
    assert "Seq Scan on outboundemail" not in plan, plan
    assert "Seq Scan on claim" not in plan, plan
