"""``verify``'s owed work (``owed_work``): a program's failed code mails, its mails overdue and
its claims pending past ``HEALTH_GRACE_SECONDS``, one line per kind, apart from the invariants.

Each case changes the healthy program of ``test_verify`` in one way and expects exactly its
owed lines and exactly its violations (none, until the work is late by the invariants' own,
longer, grace periods)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from tests.unit.services.test_verify import Healthy, _update_mail, healthy_program, reported
from wellness_perks.db import get_session
from wellness_perks.models import Claim, MailProblem, MailStatus, OutboundEmail
from wellness_perks.services.verify import Owed, OwedKind, owed_work

NOW = datetime.now(UTC).replace(microsecond=0)
MINUTES_AGO = {n: NOW - timedelta(minutes=n) for n in (1, 3, 10, 120)}


def at(minutes: int) -> str:
    return f"{MINUTES_AGO[minutes]:%Y-%m-%d %H:%M:%S}"


def _late_claims(minutes: int):
    def insert(s: Session, w: Healthy) -> None:
        claim = Claim(program_id=w.program_id, creator_id=w.creator["late"], country="PK",
                      requested_at=MINUTES_AGO[minutes])
        s.add(claim)
        s.flush()
        w.made["claim"] = claim.id
    return insert


def _fail_the_voided_codes_mail(s: Session, w: Healthy) -> None:
    s.execute(sa.update(OutboundEmail).where(OutboundEmail.code_id == w.code["voided"])
              .values(status=MailStatus.failed.value, last_error="550 no such user"))


@dataclass(frozen=True)
class Case:
    change: Callable[[Session, Healthy], object]
    owed: Callable[[Healthy], list[str]]
    violations: Callable[[Healthy], list[str]] = lambda w: []


CASES = {
    "nothing owed": Case(lambda s, w: None, lambda w: []),
    "a failed code mail": Case(
        _update_mail("pk2", status=MailStatus.failed.value, last_error="550 no such user",
                     created_at=MINUTES_AGO[10], sent_at=None),
        lambda w: [f"owed: 1 failed code mail(s), owed since {at(10)} (mail #{w.mail['pk2']}); "
                   "resend-failed sends them again"]),
    "failed code mails, oldest first": Case(
        lambda s, w: [_update_mail(name, status=MailStatus.failed.value, last_error="451 later",
                                   created_at=MINUTES_AGO[minutes], sent_at=None)(s, w)
                      for name, minutes in (("pk2", 3), ("in1", 10))],
        lambda w: [f"owed: 2 failed code mail(s), owed since {at(10)} (mail #{w.mail['in1']}, "
                   f"#{w.mail['pk2']}); resend-failed sends them again"]),
    # Not owed: the mail is about a code voided since (its reissue mail carries the new one),
    # or to a creator who asked to be forgotten.
    "a failed mail of a voided code": Case(_fail_the_voided_codes_mail, lambda w: []),
    "a failed mail to a forgotten creator": Case(
        _update_mail("pk2", status=MailStatus.failed.value,
                     last_error=MailProblem.recipient_forgotten.value),
        lambda w: []),
    "a mail never attempted, past the grace period": Case(
        _update_mail("pk2", status=MailStatus.queued.value, created_at=MINUTES_AGO[10],
                     next_attempt_at=None, sent_at=None),
        lambda w: [f"owed: 1 mail(s) overdue, due since {at(10)} (mail #{w.mail['pk2']})"]),
    "a retry due past the grace period": Case(
        _update_mail("pk2", status=MailStatus.queued.value, next_attempt_at=MINUTES_AGO[3],
                     sent_at=None),
        lambda w: [f"owed: 1 mail(s) overdue, due since {at(3)} (mail #{w.mail['pk2']})"]),
    "a retry due within the grace period": Case(
        _update_mail("pk2", status=MailStatus.queued.value, next_attempt_at=MINUTES_AGO[1],
                     sent_at=None),
        lambda w: []),
    "a retry not yet due": Case(
        _update_mail("pk2", status=MailStatus.queued.value, sent_at=None,
                     next_attempt_at=NOW + timedelta(hours=1), created_at=MINUTES_AGO[120]),
        lambda w: []),
    # The lease (MAIL_SENDING_TIMEOUT_SECONDS, 300 s) ended 5 minutes ago.
    "a send attempt past its lease and the grace period": Case(
        _update_mail("pk2", status=MailStatus.sending.value, sending_started_at=MINUTES_AGO[10],
                     sent_at=None),
        lambda w: [f"owed: 1 mail(s) overdue, due since "
                   f"{MINUTES_AGO[10] + timedelta(seconds=300):%Y-%m-%d %H:%M:%S} "
                   f"(mail #{w.mail['pk2']})"]),
    "a send attempt within its lease": Case(
        _update_mail("pk2", status=MailStatus.sending.value, sending_started_at=MINUTES_AGO[3],
                     sent_at=None),
        lambda w: []),
    "a claim pending past the grace period": Case(
        _late_claims(3),
        lambda w: [f"owed: 1 claim(s) pending past the grace period, since {at(3)} "
                   f"(claim #{w.made['claim']})"]),
    "a claim pending within the grace period": Case(_late_claims(1), lambda w: []),
    # Late beyond I4's own grace period (5 minutes): owed, and a violation too.
    "a claim pending for hours": Case(
        _late_claims(120),
        lambda w: [f"owed: 1 claim(s) pending past the grace period, since {at(120)} "
                   f"(claim #{w.made['claim']})"],
        lambda w: [f"I4: pending since {at(120)} (claim={w.made['claim']} "
                   f"creator={w.creator['late']})"]),
}


def owed(app, w: Healthy) -> list[Owed]:
    with app.app_context():
        return owed_work(get_session(), program_id=w.program_id, now=NOW)


@pytest.mark.parametrize("name", CASES)
def test_owed_work_is_listed_apart_from_the_invariants(name, app, factory, session,
                                                       smtp_server):
    case = CASES[name]
    w = healthy_program(app, factory, session, smtp_server)
    session.rollback()
    case.change(session, w)
    session.commit()
    assert [str(o) for o in owed(app, w)] == case.owed(w)
    assert reported(app, w, now=NOW) == case.violations(w)


def test_owed_work_as_json(app, factory, session, smtp_server):
    w = healthy_program(app, factory, session, smtp_server)
    _late_claims(3)(session, w)
    session.commit()
    [line] = owed(app, w)
    assert line.as_dict() == {
        "kind": "overdue_claims", "count": 1, "since": MINUTES_AGO[3].isoformat(),
        "ids": [w.made["claim"]], "message": str(line)}
    assert line.kind == OwedKind.overdue_claims


def test_at_most_ten_ids_are_named():
    line = Owed(OwedKind.overdue_mails, 12, MINUTES_AGO[3], tuple(range(1, 13)))
    assert str(line) == (f"owed: 12 mail(s) overdue, due since {at(3)} (mail #1, #2, #3, #4, "
                         "#5, #6, #7, #8, #9, #10, ...)")
