"""``verify`` (I1-I5) finds each broken invariant, in the words of its message, when the data
is corrupted the way a bug would.

A healthy program is built through the real services (imports, claims, allocation, a reissue,
mails sent to a real SMTP server) and verifies clean, beside a second program whose claims,
codes and mails are there to be left out. Each case of ``CASES`` then corrupts the first in
exactly one way, with SQL through the test's session, and ``verify`` must report exactly the
case's lines: one more or one fewer fails; each of ``OTHER_PROGRAM_CASES`` corrupts the second,
and ``verify`` reports it there and nothing of it in the first. Where the schema itself forbids
the corruption, the case lifts that constraint for the test (see ``constraints_lifted``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select

from tests.helpers import code_value
from tests.unit.services.scenarios import allocate_each, stocked_program, verified
from wellness_perks.db import get_session
from wellness_perks.models import (
    Claim,
    ClaimHour,
    ClaimReason,
    ClaimState,
    Code,
    CodeAssignment,
    CodeBatch,
    CodeStatus,
    CountryQuota,
    Creator,
    MailKind,
    MailProblem,
    MailStatus,
    OutboundEmail,
    Program,
)
from wellness_perks.services import claims, codes
from wellness_perks.services.errors import NotOnList
from wellness_perks.services.verify import verify_program

SLUG = "headspace-6m"
# Older than every grace period (pending claims 5 minutes, mails 30), and whole seconds, so that
# a message naming the time can be written out exactly.
LONG_AGO = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
SINCE = f"{LONG_AGO:%Y-%m-%d %H:%M:%S}"
ROLLED_HOUR = LONG_AGO.replace(minute=0, second=0)


# --------------------------------------------------------------------------- the healthy program


@dataclass
class Healthy:
    """The ids of a healthy program, by the local part of each creator's address.

    pk1, pk2 (PK) and in1 (IN) hold codes; pk1's first code was voided and reissued, so it holds
    its second; pk3 (PK) is waitlisted (PK's quota of 2 is full); tardy (PK) claimed after the
    window closed and was refused; outsider, on another program's list only, was turned away
    with nothing recorded; late is on the list and has not claimed. Two codes are in stock.

    The other program (calm-1y, IN capped at 1) has outsider and pk2 on its list: both hold one
    of its codes (all PK: had a check of the first program counted them, PK would be over its
    quota), pk2 holds claims in both programs, and one of its codes is in stock.
    """

    program_id: int
    creator: dict[str, int]
    claim: dict[str, int]
    code: dict[str, int]  # each holder's code; "voided": pk1's first one
    mail: dict[str, int]  # each holder's mail for the code it holds
    other_program_id: int
    other_claim: dict[str, int]  # outsider's and pk2's claims on the other program
    other_code: dict[str, int]  # the codes they hold; "in stock": its code in stock
    other_mail: dict[str, int]  # their mails for those codes
    made: dict[str, int] = field(default_factory=dict)  # ids of rows a corruption added


HOLDERS = ("pk1", "pk2", "in1")
OTHER_HOLDERS = ("outsider", "pk2")


def healthy_program(app, factory, session, smtp_server) -> Healthy:
    program = factory.program(slug=SLUG, quota=10, country_quotas={"PK": 2})
    factory.creators(program, [f"{n}@example.com"
                               for n in ("pk1", "pk2", "pk3", "late", "tardy")], country="PK")
    factory.creators(program, ["in1@example.com"], country="IN")
    other = factory.program(slug="calm-1y", name="Calm · 1 year", country_quotas={"IN": 1})
    factory.creators(other, ["outsider@example.com", "pk2@example.com"])
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(6)])
    factory.codes(other, [f"CALM-CODE-{i:04d}" for i in range(3)])
    session.rollback()
    creator = {email.split("@")[0]: creator_id for creator_id, email in
               session.exec(select(Creator.id, Creator.email)).all()}
    with app.app_context():
        for name in ("pk1", "pk2", "in1", "pk3"):
            claims.request_claim(get_session(), program=program, creator_id=creator[name])
        claims.request_claim(get_session(), program=program, creator_id=creator["tardy"],
                             now=datetime.now(UTC) + timedelta(days=31))  # after it closed
        with pytest.raises(NotOnList):
            claims.request_claim(get_session(), program=program, creator_id=creator["outsider"])
    session.rollback()
    name_of = {creator_id: name for name, creator_id in creator.items()}
    claim = {name_of[creator_id]: claim_id for claim_id, creator_id in session.exec(
        select(Claim.id, Claim.creator_id).where(Claim.program_id == program.id)).all()}
    first_code = session.exec(select(Code).join(Claim, Claim.code_id == Code.id)
                              .where(Claim.id == claim["pk1"])).one()
    with app.app_context():
        codes.void_code(get_session(), program_id=program.id,
                        value=code_value(first_code.value_encrypted), reason="leaked",
                        actor="test")
    session.rollback()
    code = {name: session.get(Claim, claim[name]).code_id for name in HOLDERS}
    code["voided"] = first_code.id
    mail = {name: session.exec(select(OutboundEmail.id).where(
        OutboundEmail.claim_id == claim[name], OutboundEmail.code_id == code[name])).one()
        for name in HOLDERS}
    session.rollback()
    with app.app_context():
        for name in OTHER_HOLDERS:
            claims.request_claim(get_session(), program=other, creator_id=creator[name])
    session.rollback()
    other_claim = {name_of[creator_id]: claim_id for claim_id, creator_id in session.exec(
        select(Claim.id, Claim.creator_id).where(Claim.program_id == other.id)).all()}
    other_code = {name: session.get(Claim, other_claim[name]).code_id for name in OTHER_HOLDERS}
    other_code["in stock"] = session.exec(select(Code.id).where(
        Code.program_id == other.id, Code.status == CodeStatus.available)).one()
    other_mail = {name: session.exec(select(OutboundEmail.id).where(
        OutboundEmail.claim_id == other_claim[name],
        OutboundEmail.code_id == other_code[name])).one() for name in OTHER_HOLDERS}
    session.rollback()
    for name, count in (("pk1", 2), ("pk2", 2), ("in1", 1), ("outsider", 1)):
        smtp_server.wait_for_mail(f"{name}@example.com", count=count)
    return Healthy(program.id, creator, claim, code, mail, other.id, other_claim, other_code,
                   other_mail)


def reported(app, w: Healthy, program_id: int | None = None, **options) -> list[str]:
    """What ``verify`` reports of the healthy program (or of ``program_id``)."""
    with app.app_context():
        return [str(v) for v in verify_program(get_session(), program_id=program_id or
                                               w.program_id, **options)]


def test_the_healthy_program_verifies_clean(app, factory, session, smtp_server):
    w = healthy_program(app, factory, session, smtp_server)
    states = {c.id: (c.state, c.reason) for c in session.exec(
        select(Claim).where(Claim.program_id == w.program_id)).all()}
    assert states == {
        w.claim["pk1"]: (ClaimState.allocated, None),
        w.claim["pk2"]: (ClaimState.allocated, None),
        w.claim["in1"]: (ClaimState.allocated, None),
        w.claim["pk3"]: (ClaimState.waitlisted, ClaimReason.country_quota_reached),
        w.claim["tardy"]: (ClaimState.refused, ClaimReason.window_closed),
    }
    program = session.get(Program, w.program_id)
    assert (program.allocated_count, program.in_stock_count) == (3, 2)
    assert session.exec(select(CountryQuota.country, CountryQuota.quota,
                               CountryQuota.allocated_count)
                        .where(CountryQuota.program_id == w.program_id)).all() == [("PK", 2, 2)]
    assert session.get(Code, w.code["voided"]).status == CodeStatus.void
    mails = session.exec(select(OutboundEmail.kind, OutboundEmail.status)
                         .join(Claim, Claim.id == OutboundEmail.claim_id)
                         .where(Claim.program_id == w.program_id)
                         .order_by(OutboundEmail.id)).all()
    assert mails == [(MailKind.redemption, MailStatus.sent)] * 3 + [
        (MailKind.reissue, MailStatus.sent)]
    # The other program: two codes given out (to PK creators, pk2 among them), one in stock.
    other = session.get(Program, w.other_program_id)
    assert (other.allocated_count, other.in_stock_count) == (2, 1)
    assert {session.get(Claim, i).country for i in w.other_claim.values()} == {"PK"}
    assert session.exec(select(CountryQuota.country, CountryQuota.quota,
                               CountryQuota.allocated_count)
                        .where(CountryQuota.program_id == w.other_program_id)).all() == [
        ("IN", 1, 0)]
    assert [session.get(OutboundEmail, i).status for i in w.other_mail.values()] == [
        MailStatus.sent] * 2
    session.rollback()
    assert reported(app, w) == []
    assert reported(app, w, program_id=w.other_program_id) == []


# --------------------------------------------------------------------------- lifting constraints


@dataclass(frozen=True)
class Constraint:
    name: str  # as PostgreSQL names it
    kind: str  # "unique" or "check"


# claim.code_id and codeassignment.code_id are UNIQUE without a name: PostgreSQL's names.
UNIQUE_CLAIM_CODE = Constraint("claim_code_id_key", "unique")
UNIQUE_ASSIGNMENT_CODE = Constraint("codeassignment_code_id_key", "unique")
UNIQUE_CLAIM_PER_CREATOR = Constraint("uq_claim_program_creator", "unique")
CHECK_QUOTA_ROOM = Constraint("ck_program_quota_room", "check")
CHECK_STOCK_POSITIVE = Constraint("ck_program_stock_positive", "check")
CHECK_COUNTRY_QUOTA_ROOM = Constraint("ck_country_quota_room", "check")
CHECK_BATCH_STOCK_POSITIVE = Constraint("ck_codebatch_stock_positive", "check")


_DEFINITIONS = sa.text(
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conname = ANY(:names) ORDER BY conname")


@contextmanager
def constraints_lifted(session: Session, backend: str,
                       lifts: tuple[Constraint, ...]) -> Iterator[None]:
    """The schema without these constraints while the block runs.

    PostgreSQL: each is dropped, and put back as it was afterwards, whatever happened: the
    schema is shared by every later test of the session. The corrupt rows go first (the tables
    are emptied, as before each test), or the constraint could not come back. SQLite can drop
    neither kind without rebuilding the table: a unique constraint skips the test, a CHECK is
    ignored while the corruption runs (``corrupt``).
    """
    if not lifts:
        yield
        return
    if backend == "sqlite":
        unique = [c.name for c in lifts if c.kind == "unique"]
        if unique:
            pytest.skip(f"SQLite can't drop {', '.join(unique)} without rebuilding its table; "
                        "this corruption is tested on PostgreSQL")
        yield
        return
    session.rollback()
    definitions = session.execute(_DEFINITIONS, {"names": [c.name for c in lifts]}).all()
    assert sorted(name for _, name, _ in definitions) == sorted(c.name for c in lifts)
    session.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
    for table, name, _ in definitions:
        session.execute(sa.text(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"'))
    session.commit()
    try:
        yield
    finally:
        session.rollback()
        session.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
        tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
        session.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        for table, name, definition in definitions:
            session.execute(sa.text(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}'))
        session.commit()
        assert session.execute(_DEFINITIONS, {"names": [c.name for c in lifts]}).all() == \
            definitions, "a lifted constraint did not come back as it was"
        session.rollback()


# --------------------------------------------------------------------------- the corruptions


Corruption = Callable[[Session, Healthy], None]


@dataclass(frozen=True)
class Case:
    corrupt: Corruption
    expected: Callable[[Healthy], list[str]]
    lifts: tuple[Constraint, ...] = ()


def corrupt(session: Session, backend: str, case: Case, w: Healthy) -> None:
    """The case's corruption, committed in one transaction of the test's session."""
    session.rollback()
    connection = session.connection()  # the transaction's own, until it commits
    ignore_checks = backend == "sqlite" and any(c.kind == "check" for c in case.lifts)
    if ignore_checks:
        connection.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
    try:
        case.corrupt(session, w)
    finally:
        if ignore_checks:
            connection.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")
    session.commit()


def _refs(w: Healthy, name: str, *, code: bool = True) -> str:
    """The references a violation about ``name``'s claim prints."""
    code_ref = f" code={w.code[name]}" if code else ""
    return f"(claim={w.claim[name]}{code_ref} creator={w.creator[name]})"


def _update_claim(name: str, **values) -> Corruption:
    return lambda s, w: s.execute(sa.update(Claim).where(Claim.id == w.claim[name])
                                  .values(**values))


def _update_code(name: str, **values) -> Corruption:
    return lambda s, w: s.execute(sa.update(Code).where(Code.id == w.code[name]).values(**values))


def _update_program(**values) -> Corruption:
    return lambda s, w: s.execute(sa.update(Program).where(Program.id == w.program_id)
                                  .values(**values))


def _update_country_quota(country: str, **values) -> Corruption:
    return lambda s, w: s.execute(sa.update(CountryQuota).where(
        CountryQuota.program_id == w.program_id, CountryQuota.country == country)
        .values(**values))


def _update_mail(name: str, **values) -> Corruption:
    return lambda s, w: s.execute(sa.update(OutboundEmail)
                                  .where(OutboundEmail.id == w.mail[name]).values(**values))


def _restore_given_out_code(s: Session, w: Healthy) -> None:
    # What a restore that forgot to look at the assignment history would do: the code back in
    # stock, and the stock counter counting it (so the counter check stays quiet).
    s.execute(sa.update(Code).where(Code.id == w.code["voided"])
              .values(status=CodeStatus.available.value))
    s.execute(sa.update(Program).where(Program.id == w.program_id)
              .values(in_stock_count=Program.in_stock_count + 1))
    s.execute(sa.update(CodeBatch).where(
        CodeBatch.id == sa.select(Code.batch_id).where(Code.id == w.code["voided"])
        .scalar_subquery()).values(in_stock_count=CodeBatch.in_stock_count + 1))


def _update_batch(**values) -> Corruption:
    def update(s: Session, w: Healthy) -> None:
        w.made["batch"] = s.execute(sa.select(CodeBatch.id).where(
            CodeBatch.program_id == w.program_id)).scalar_one()
        s.execute(sa.update(CodeBatch).where(CodeBatch.id == w.made["batch"]).values(**values))
    return update


def _roll_up_wrongly(s: Session, w: Healthy) -> None:
    # The hour of LONG_AGO had no claim (the program's were made since), its rollup says 4.
    s.execute(sa.insert(ClaimHour).values(program_id=w.program_id, hour=ROLLED_HOUR, claims=4))


def _assign_twice(s: Session, w: Healthy) -> None:
    # The history row of pk2's assignment written twice (the same claim: only the count is off).
    s.execute(sa.insert(CodeAssignment).values(
        code_id=w.code["pk2"], claim_id=w.claim["pk2"], program_id=w.program_id,
        assigned_at=datetime.now(UTC)))


def _insert_claim(name: str, country: str, requested_at: datetime | None = None) -> Corruption:
    def insert(s: Session, w: Healthy) -> None:
        w.made["claim"] = s.execute(sa.insert(Claim).values(
            program_id=w.program_id, creator_id=w.creator[name], country=country,
            state=ClaimState.pending.value,
            requested_at=requested_at or datetime.now(UTC)).returning(Claim.id)).scalar_one()
    return insert


def _delete_mail(name: str) -> Corruption:
    return lambda s, w: s.execute(sa.delete(OutboundEmail)
                                  .where(OutboundEmail.id == w.mail[name]))


CASES: dict[str, Case] = {
    # I1 ---------------------------------------------------------------------------------------
    # The waitlisted pk3 given pk2's code. It is not allocated, and the code's assignment names
    # pk2, so those checks report the second holder too: the three lines are one corruption.
    "I1 code held by two claims": Case(
        lambda s, w: s.execute(sa.update(Claim).where(Claim.id == w.claim["pk3"])
                               .values(code_id=w.code["pk2"])),
        lambda w: [f"I1: code held by 2 claims (code={w.code['pk2']})",
                   f"I1: waitlisted claim holds a code "
                   f"(claim={w.claim['pk3']} code={w.code['pk2']} creator={w.creator['pk3']})",
                   f"I1: claim holds a code whose assignment names another claim "
                   f"(claim={w.claim['pk3']} code={w.code['pk2']} creator={w.creator['pk3']})"],
        (UNIQUE_CLAIM_CODE,)),
    "I1 code assigned twice": Case(
        _assign_twice,
        lambda w: [f"I1: code assigned 2 times (code={w.code['pk2']})"],
        (UNIQUE_ASSIGNMENT_CODE,)),
    "I1 held code voided": Case(
        _update_code("pk2", status=CodeStatus.void.value),
        lambda w: [f"I1: claim holds a code whose status is void {_refs(w, 'pk2')}"]),
    "I1 assignment names another claim": Case(
        lambda s, w: s.execute(sa.update(CodeAssignment)
                               .where(CodeAssignment.code_id == w.code["pk2"])
                               .values(claim_id=w.claim["in1"])),
        lambda w: [f"I1: claim holds a code whose assignment names another claim "
                   f"{_refs(w, 'pk2')}"]),
    "I1 given-out code back in stock": Case(
        _restore_given_out_code,
        lambda w: [f"I1: a code given out once is back in stock (code={w.code['voided']})"]),
    # A reissue that forgot to void the code it replaced.
    "I1 code assigned to nobody": Case(
        _update_code("voided", status=CodeStatus.assigned.value),
        lambda w: [f"I1: code marked assigned but no claim holds it (code={w.code['voided']})"]),
    # I2 ---------------------------------------------------------------------------------------
    "I2 over the quota": Case(
        _update_program(quota=2),
        lambda w: ["I2: 3 allocated, quota 2"],
        (CHECK_QUOTA_ROOM,)),
    "I2 allocation counter behind": Case(
        _update_program(allocated_count=2),
        lambda w: ["I2: 3 allocated, counter says 2"]),
    "I2 stock counter ahead": Case(
        _update_program(in_stock_count=3),
        lambda w: ["I2: 2 codes in stock, counter says 3"]),
    "I2 stock counter below zero": Case(
        _update_program(in_stock_count=-1),
        lambda w: ["I2: 2 codes in stock, counter says -1"],
        (CHECK_STOCK_POSITIVE,)),
    "I2 batch stock counter ahead": Case(
        _update_batch(in_stock_count=3),
        lambda w: [f"I2: batch #{w.made['batch']}: 2 codes in stock, counter says 3"]),
    "I2 batch stock counter below zero": Case(
        _update_batch(in_stock_count=-1),
        lambda w: [f"I2: batch #{w.made['batch']}: 2 codes in stock, counter says -1"],
        (CHECK_BATCH_STOCK_POSITIVE,)),
    "I2 claims rolled up wrongly": Case(
        _roll_up_wrongly,
        lambda w: [f"I2: 0 claims in the hour of {ROLLED_HOUR:%Y-%m-%d %H}:00, "
                   "its rollup says 4"]),
    "I2 over a country quota": Case(
        _update_country_quota("PK", quota=1),
        lambda w: ["I2: PK: 2 allocated, country quota 1"],
        (CHECK_COUNTRY_QUOTA_ROOM,)),
    "I2 country counter behind": Case(
        _update_country_quota("PK", allocated_count=1),
        lambda w: ["I2: PK: 2 allocated, counter says 1"]),
    # I3 ---------------------------------------------------------------------------------------
    # A second claim by in1, just made (pending, within its grace: nothing else to report).
    "I3 two claims by one creator": Case(
        _insert_claim("in1", "IN"),
        lambda w: [f"I3: 2 claims by one creator (creator={w.creator['in1']})"],
        (UNIQUE_CLAIM_PER_CREATOR,)),
    # I4 ---------------------------------------------------------------------------------------
    # late's claim stored, its allocation task lost.
    "I4 pending too long": Case(
        _insert_claim("late", "PK", LONG_AGO),
        lambda w: [f"I4: pending since {SINCE} (claim={w.made['claim']} "
                   f"creator={w.creator['late']})"]),
    "I4 refused without a reason": Case(
        _update_claim("tardy", reason=None),
        lambda w: [f"I4: refused without a reason (claim={w.claim['tardy']} "
                   f"creator={w.creator['tardy']})"]),
    # pk2 loses its code: the code is left assigned with no holder (I1), and pk2's mail is about
    # that code, not about none (I5). One corruption, three lines.
    "I4 allocated without a code": Case(
        _update_claim("pk2", code_id=None),
        lambda w: [f"I1: code marked assigned but no claim holds it (code={w.code['pk2']})",
                   f"I4: allocated without a code {_refs(w, 'pk2', code=False)}",
                   f"I5: allocated, but no mail for its code {_refs(w, 'pk2', code=False)}"]),
    "I4 unknown state": Case(
        _update_claim("pk3", state="cancelled"),
        lambda w: [f"I4: unknown state 'cancelled' (claim={w.claim['pk3']} "
                   f"creator={w.creator['pk3']})"]),
    # I5 ---------------------------------------------------------------------------------------
    "I5 no mail for the code": Case(
        _delete_mail("pk2"),
        lambda w: [f"I5: allocated, but no mail for its code {_refs(w, 'pk2')}"]),
    # pk1's reissue mail lost: the mail about its voided code doesn't count.
    "I5 a mail for the voided code only": Case(
        _delete_mail("pk1"),
        lambda w: [f"I5: allocated, but no mail for its code {_refs(w, 'pk1')}"]),
    "I5 failed without an error": Case(
        _update_mail("pk2", status=MailStatus.failed.value),
        lambda w: [f"I5: mail #{w.mail['pk2']} failed with no error recorded {_refs(w, 'pk2')}"]),
    "I5 failed with an empty error": Case(
        _update_mail("pk2", status=MailStatus.failed.value, last_error=""),
        lambda w: [f"I5: mail #{w.mail['pk2']} failed with no error recorded {_refs(w, 'pk2')}"]),
    # The only mail for the code pk2 holds cancelled: pk2 gets no mail for its code.
    "I5 the held code's mail cancelled": Case(
        _update_mail("pk2", status=MailStatus.cancelled.value,
                     last_error=MailProblem.code_voided.value, sent_at=None),
        lambda w: [f"I5: allocated, but no mail for its code {_refs(w, 'pk2')}"]),
    "I5 unknown mail status": Case(
        _update_mail("pk2", status="bounced"),
        lambda w: [f"I5: mail #{w.mail['pk2']} has unknown status 'bounced' "
                   f"{_refs(w, 'pk2')}"]),
    # pk2 waitlisted but still holding its code; the allocation counters (global and PK's)
    # count pk2 still, so they disagree with the claims.
    "I1 a claim not allocated holds a code": Case(
        _update_claim("pk2", state=ClaimState.waitlisted.value,
                      reason=ClaimReason.out_of_stock.value),
        lambda w: [f"I1: waitlisted claim holds a code {_refs(w, 'pk2')}",
                   "I2: 2 allocated, counter says 3", "I2: PK: 1 allocated, counter says 2"]),
    # The mail's own program (what the delivery page reads it by) is not its claim's.
    "I5 mail names another program": Case(
        _update_mail("pk2", program_id=None),
        lambda w: [f"I5: mail #{w.mail['pk2']} names no program, its claim is of program "
                   f"#{w.program_id} {_refs(w, 'pk2')}"]),
    "I5 sent without a time": Case(
        _update_mail("pk2", sent_at=None),
        lambda w: [f"I5: mail #{w.mail['pk2']} sent with no time {_refs(w, 'pk2')}"]),
    # A retry due long ago that never ran.
    "I5 retry overdue": Case(
        _update_mail("pk2", status=MailStatus.queued.value, next_attempt_at=LONG_AGO),
        lambda w: [f"I5: mail #{w.mail['pk2']} queued and overdue since {SINCE} "
                   f"{_refs(w, 'pk2')}"]),
    # Owed long ago, its send task lost before any attempt.
    "I5 never attempted": Case(
        _update_mail("pk2", status=MailStatus.queued.value, attempts=0, created_at=LONG_AGO,
                     sending_started_at=None, sent_at=None, message_id=None),
        lambda w: [f"I5: mail #{w.mail['pk2']} queued and overdue since {SINCE} "
                   f"{_refs(w, 'pk2')}"]),
    # An attempt whose worker died mid-send, never taken back.
    "I5 attempt stuck": Case(
        _update_mail("pk2", status=MailStatus.sending.value, sending_started_at=LONG_AGO,
                     sent_at=None, message_id=None),
        lambda w: [f"I5: mail #{w.mail['pk2']} sending and overdue since {SINCE} "
                   f"{_refs(w, 'pk2')}"]),
}


@pytest.mark.parametrize("name", CASES)
def test_verify_reports_exactly_the_broken_rule(name, app, factory, session, smtp_server,
                                                backend):
    case = CASES[name]
    w = healthy_program(app, factory, session, smtp_server)
    with constraints_lifted(session, backend, case.lifts):
        corrupt(session, backend, case, w)
        assert reported(app, w) == case.expected(w)


# --------------------------------------------------------------------------- the other program


def _other_refs(w: Healthy, name: str, code: str | None = None) -> str:
    """The references a violation about ``name``'s claim on the other program prints (the
    code it holds, or ``code``'s)."""
    return (f"(claim={w.other_claim[name]} code={w.other_code[code or name]} "
            f"creator={w.creator[name]})")


def _hold_the_others_code(s: Session, w: Healthy) -> None:
    # outsider's claim on the other program given pk2's code there.
    s.execute(sa.update(Claim).where(Claim.id == w.other_claim["outsider"])
              .values(code_id=w.other_code["pk2"]))


def _assign_the_others_code_twice(s: Session, w: Healthy) -> None:
    s.execute(sa.insert(CodeAssignment).values(
        code_id=w.other_code["pk2"], claim_id=w.other_claim["pk2"],
        program_id=w.other_program_id, assigned_at=datetime.now(UTC)))


def _break_the_other_program(s: Session, w: Healthy) -> None:
    """Each check the healthy program passes, failed by the other program once: a held code
    back in stock and a code in stock marked assigned (the stock counter still right), a
    claim pending too long (by late, who has not claimed the first program), a code's mail
    lost and a mail failed with no error."""
    s.execute(sa.update(Code).where(Code.id == w.other_code["outsider"])
              .values(status=CodeStatus.available.value))
    s.execute(sa.update(Code).where(Code.id == w.other_code["in stock"])
              .values(status=CodeStatus.assigned.value))
    w.made["claim"] = s.execute(sa.insert(Claim).values(
        program_id=w.other_program_id, creator_id=w.creator["late"], country="PK",
        state=ClaimState.pending.value, requested_at=LONG_AGO).returning(Claim.id)).scalar_one()
    s.execute(sa.delete(OutboundEmail).where(OutboundEmail.id == w.other_mail["pk2"]))
    s.execute(sa.update(OutboundEmail).where(OutboundEmail.id == w.other_mail["outsider"])
              .values(status=MailStatus.failed.value, last_error=None))


# Corruptions of the other program: each check is scoped to the program verified, so the
# healthy program still verifies clean. The names keep the words tools/mutation.py selects
# the PostgreSQL-only cases by ("held ... two", "assigned twice").
OTHER_PROGRAM_CASES: dict[str, Case] = {
    "its code held by two claims": Case(
        _hold_the_others_code,
        lambda w: [f"I1: code held by 2 claims (code={w.other_code['pk2']})",
                   f"I1: claim holds a code whose assignment names another claim "
                   f"{_other_refs(w, 'outsider', 'pk2')}",
                   f"I1: code marked assigned but no claim holds it "
                   f"(code={w.other_code['outsider']})",
                   f"I5: allocated, but no mail for its code "
                   f"{_other_refs(w, 'outsider', 'pk2')}"],
        (UNIQUE_CLAIM_CODE,)),
    "its code assigned twice": Case(
        _assign_the_others_code_twice,
        lambda w: [f"I1: code assigned 2 times (code={w.other_code['pk2']})"],
        (UNIQUE_ASSIGNMENT_CODE,)),
    "its claims, codes and mails broken": Case(
        _break_the_other_program,
        lambda w: [f"I1: claim holds a code whose status is available "
                   f"{_other_refs(w, 'outsider')}",
                   f"I1: a code given out once is back in stock "
                   f"(code={w.other_code['outsider']})",
                   f"I1: code marked assigned but no claim holds it "
                   f"(code={w.other_code['in stock']})",
                   f"I4: pending since {SINCE} (claim={w.made['claim']} "
                   f"creator={w.creator['late']})",
                   f"I5: allocated, but no mail for its code {_other_refs(w, 'pk2')}",
                   f"I5: mail #{w.other_mail['outsider']} failed with no error recorded "
                   f"{_other_refs(w, 'outsider')}"]),
}


@pytest.mark.parametrize("name", OTHER_PROGRAM_CASES)
def test_verify_reports_another_programs_corruption_there_only(name, app, factory, session,
                                                               smtp_server, backend):
    case = OTHER_PROGRAM_CASES[name]
    w = healthy_program(app, factory, session, smtp_server)
    with constraints_lifted(session, backend, case.lifts):
        corrupt(session, backend, case, w)
        assert reported(app, w, program_id=w.other_program_id) == case.expected(w)
        assert reported(app, w) == []


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.lifts])
def test_the_lifted_constraints_are_what_forbids_the_corruption(name, app, factory, session,
                                                                smtp_server):
    """The constraints a case lifts are the right ones: with them, its corruption is refused."""
    w = healthy_program(app, factory, session, smtp_server)
    session.rollback()
    with pytest.raises(sa.exc.IntegrityError):
        CASES[name].corrupt(session, w)
        session.flush()
    session.rollback()
    assert reported(app, w) == []


# What the invariants allow: near misses of the checks above, reported as nothing.
TOLERATED: dict[str, Corruption] = {
    "a mail failed with its error recorded": _update_mail(
        "pk2", status=MailStatus.failed.value, last_error="550 5.1.1 mailbox unavailable"),
    "a mail queued within its grace": _update_mail(
        "pk2", status=MailStatus.queued.value, sent_at=None,
        next_attempt_at=datetime.now(UTC) + timedelta(minutes=1)),
    "a retry due a moment ago": _update_mail(
        "pk2", status=MailStatus.queued.value, sent_at=None,
        next_attempt_at=datetime.now(UTC) - timedelta(minutes=1)),
    "a claim pending within its grace": _insert_claim("late", "PK"),
    "a claim waitlisted for another reason": _update_claim(
        "pk3", reason=ClaimReason.out_of_stock.value),
    "a quota just full": _update_program(quota=3),
}


@pytest.mark.parametrize("name", TOLERATED)
def test_verify_tolerates_what_the_invariants_allow(name, app, factory, session, smtp_server,
                                                    backend):
    w = healthy_program(app, factory, session, smtp_server)
    corrupt(session, backend, Case(TOLERATED[name], lambda w: []), w)
    assert reported(app, w) == []


def test_verify_reports_every_broken_invariant_at_once(app, factory, session, smtp_server):
    program, claim_ids = stocked_program(app, factory, session, quota=5, creators=3, codes=5)
    allocate_each(app, claim_ids)
    verified(app, program)
    factory.creators(program, ["late@example.com"])
    session.rollback()
    late = session.exec(select(Creator).where(Creator.email == "late@example.com")).one()
    stuck = Claim(program_id=program.id, creator_id=late.id, country=late.country,
                  requested_at=LONG_AGO)
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
    batch_id = session.get(Code, third.code_id).batch_id
    # Each corruption is reported, none hides another; the code put back in stock is also a
    # code held in the wrong status, and one the stock counters (program's and batch's) don't
    # count.
    assert [str(v) for v in found] == [
        f"I1: claim holds a code whose status is available "
        f"(claim={third.id} code={third.code_id} creator={third.creator_id})",
        f"I1: a code given out once is back in stock (code={third.code_id})",
        "I2: 3 allocated, counter says 2",
        "I2: 3 codes in stock, counter says 2",
        f"I2: batch #{batch_id}: 3 codes in stock, counter says 2",
        f"I4: pending since {SINCE} (claim={stuck.id} creator={late.id})",
        f"I5: allocated, but no mail for its code "
        f"(claim={second.id} code={second.code_id} creator={second.creator_id})",
    ]


def test_verify_reads_the_counters_afresh_in_a_session_that_holds_the_program(
        app, factory, session, smtp_server):
    """The app's sessions keep what they loaded across commits: a program read before the
    corruption must not hide it."""
    w = healthy_program(app, factory, session, smtp_server)
    with app.app_context():
        own = get_session()
        held = own.get(Program, w.program_id)  # kept: the session's identity map holds it
        assert held.allocated_count == 3
        session.execute(sa.update(Program).where(Program.id == w.program_id)
                        .values(allocated_count=2))
        session.commit()
        assert [str(v) for v in verify_program(own, program_id=w.program_id)] == [
            "I2: 3 allocated, counter says 2"]


def test_a_violation_names_what_it_is_about_in_words_and_as_data():
    from wellness_perks.services.verify import Violation

    full = Violation("I1", "claim holds a code whose status is void", claim_id=7, code_id=8,
                     creator_id=9)
    assert str(full) == "I1: claim holds a code whose status is void (claim=7 code=8 creator=9)"
    assert full.as_dict() == {"invariant": "I1",
                              "message": "claim holds a code whose status is void",
                              "claim_id": 7, "code_id": 8, "creator_id": 9}
    bare = Violation("I2", "3 allocated, quota 2")
    assert str(bare) == "I2: 3 allocated, quota 2"
    assert bare.as_dict() == {"invariant": "I2", "message": "3 allocated, quota 2",
                              "claim_id": None, "code_id": None, "creator_id": None}


def test_verify_counts_the_grace_periods_to_the_second(app, factory, session, smtp_server,
                                                       backend):
    """A claim may stay pending 5 minutes and a mail wait 30 by default; one second more is
    reported."""
    w = healthy_program(app, factory, session, smtp_server)
    corrupt(session, backend, Case(_insert_claim("late", "PK", LONG_AGO), lambda w: []), w)
    corrupt(session, backend, Case(_update_mail("pk2", status=MailStatus.queued.value,
                                                next_attempt_at=LONG_AGO), lambda w: []), w)
    pending = f"I4: pending since {SINCE} (claim={w.made['claim']} creator={w.creator['late']})"
    overdue = f"I5: mail #{w.mail['pk2']} queued and overdue since {SINCE} {_refs(w, 'pk2')}"
    second = timedelta(seconds=1)
    assert reported(app, w, now=LONG_AGO + timedelta(minutes=5)) == []
    assert reported(app, w, now=LONG_AGO + timedelta(minutes=5) + second) == [pending]
    assert reported(app, w, now=LONG_AGO + timedelta(minutes=30)) == [pending]
    assert reported(app, w, now=LONG_AGO + timedelta(minutes=30) + second) == [pending, overdue]
    assert reported(app, w, now=LONG_AGO + timedelta(minutes=10), pending_grace=timedelta(
        minutes=10), mail_grace=timedelta(minutes=9)) == [overdue]
