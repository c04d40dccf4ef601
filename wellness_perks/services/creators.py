"""One creator as a manager sees them in a program (a support case), and taking a creator off a
program's list.

A manager never sees a code in clear here: a claim's code is masked (``codes.mask_code``);
``codes.reveal_code`` is the one, audited, way to see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from ..db import write_transaction
from ..logs import log_event
from ..models import (
    Claim,
    ClaimReason,
    ClaimState,
    Code,
    CodeBatch,
    Creator,
    Eligibility,
    MailKind,
    OutboundEmail,
)
from . import audit, code_cipher
from .codes import MAX_REASON_LENGTH, mask_code
from .emails import normalise_email
from .errors import Conflict, NotFound
from .programs import lock_program

WAITING = (ClaimState.pending, ClaimState.waitlisted)


def _creator(session: Session, email: str | None, creator_id: int | None = None) -> Creator:
    if creator_id is not None:
        creator = session.exec(select(Creator).where(Creator.id == creator_id)
                               .execution_options(populate_existing=True)).first()
        if creator is None:
            raise NotFound(f"no creator #{creator_id}", creator_id=creator_id)
        return creator
    address = normalise_email(email)
    creator = session.exec(select(Creator).where(Creator.email == address)
                           .execution_options(populate_existing=True)).first()
    if creator is None:
        raise NotFound(f"nobody with the address {address}", email=address)
    return creator


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def creator_case(session: Session, *, program_id: int, email: str | None = None,
                 creator_id: int | None = None) -> dict:
    """The creator (handle, country, locale, on the program's list or not), their claim in the
    program with its state, reason and times and its code masked, and every mail to them that
    belongs to the program (the code mails of their claim, its invitation and reminder) or to no
    program (sign-in links):
    kind, status, attempts, last error, when sent, and whether it may have arrived twice.

    The creator is named by ``email`` or by ``creator_id``. A document of plain values (what
    the CLI's ``--json`` prints and the API will send)."""
    creator = _creator(session, email, creator_id)
    on_list = session.exec(select(Eligibility.id).where(
        Eligibility.program_id == program_id, Eligibility.creator_id == creator.id)).first()
    claims = []
    for claim, code, batch in session.execute(
            sa.select(Claim, Code, CodeBatch)
            .outerjoin(Code, Code.id == Claim.code_id)
            .outerjoin(CodeBatch, CodeBatch.id == Code.batch_id)
            .where(Claim.program_id == program_id, Claim.creator_id == creator.id)
            .order_by(Claim.id)):
        held = None
        if code is not None:
            held = {"id": code.id, "status": code.status,
                    "masked": mask_code(code_cipher.cipher().decrypt(code.value_encrypted)),
                    "batch_id": batch.id, "batch": batch.name,
                    "expires_on": batch.expires_on.isoformat() if batch.expires_on else None}
        claims.append({"id": claim.id, "state": claim.state, "reason": claim.reason,
                       "country": claim.country, "requested_at": _when(claim.requested_at),
                       "decided_at": _when(claim.decided_at), "code": held})
    claim_ids = [c["id"] for c in claims]
    mails = [
        {"id": mail.id, "kind": mail.kind, "status": mail.status, "attempts": mail.attempts,
         "claim_id": mail.claim_id, "code_id": mail.code_id, "last_error": mail.last_error,
         "created_at": _when(mail.created_at), "sent_at": _when(mail.sent_at),
         "possibly_sent": mail.possibly_sent_at is not None}
        for mail in session.scalars(
            sa.select(OutboundEmail)
            .where(OutboundEmail.creator_id == creator.id,
                   sa.or_(OutboundEmail.claim_id.in_(claim_ids),
                          OutboundEmail.program_id == program_id,
                          OutboundEmail.kind == MailKind.sign_in.value))
            .order_by(OutboundEmail.id))]
    session.rollback()  # a read: nothing held
    return {"creator": {"id": creator.id, "email": creator.email, "handle": creator.handle,
                        "name": creator.name, "country": creator.country,
                        "locale": creator.locale, "on_list": on_list is not None},
            "claims": claims, "mails": mails}


@dataclass(frozen=True)
class Removal:
    creator_id: int
    email: str
    was_on_list: bool
    claim_id: int | None = None
    claim_state: str | None = None  # the claim's state before (None: no claim)
    refused: bool = False           # the claim was waiting, and is refused now


REMOVED = "creator.removed_from_list"


def remove_from_list(session: Session, *, program_id: int, email: str, reason: str,
                     actor: str, now: datetime | None = None) -> Removal:
    """Take a creator off a program's list (they become ineligible): their eligibility goes,
    and a claim of theirs still waiting (pending or waitlisted) is refused with the reason
    ``removed_from_list``. An allocated claim is left alone (``reissue``/``void-code`` take a
    code back); a refused one stays refused. Put back on the list (``import-creators``), they
    may claim again.

    Under the program's row lock, the lock allocation serves claims under: the claim is
    locked, then looked at, then refused, so allocation can't hand it a code meanwhile. A
    claim recorded as they were being removed (after this looked) is refused by allocation,
    which reads the list with the claims it serves (``allocation._WAITING_CLAIMS``), or by
    running this again.
    """
    reason = audit.reason_given(reason, doing="the creator is removed", limit=MAX_REASON_LENGTH)
    now = now or datetime.now(UTC)
    with write_transaction(session):
        lock_program(session, program_id)
        creator = _creator(session, email)
        eligibility = session.exec(
            select(Eligibility).where(Eligibility.program_id == program_id,
                                      Eligibility.creator_id == creator.id)
            .with_for_update()).first()
        claim = session.exec(
            select(Claim).where(Claim.program_id == program_id, Claim.creator_id == creator.id)
            .with_for_update().execution_options(populate_existing=True)).first()
        waiting = claim is not None and claim.state in WAITING
        if eligibility is None and not waiting:
            raise Conflict(f"{creator.email} is not on this program's list", email=creator.email)
        removal = Removal(creator.id, creator.email, eligibility is not None,
                          claim.id if claim else None, claim.state if claim else None, waiting)
        if eligibility is not None:
            session.delete(eligibility)
        if waiting:
            claim.state, claim.reason = ClaimState.refused, ClaimReason.removed_from_list
            claim.decided_at = now
        session.flush()
        audit.record(session, audit.event(
            actor=actor, action=REMOVED, object_type="creator", object_id=creator.id,
            program_id=program_id, at=now,
            detail={"reason": reason, "claim_id": removal.claim_id,
                    "claim_state": removal.claim_state, "claim_refused": waiting}))
    log_event(REMOVED, creator_id=removal.creator_id, program_id=program_id,
              claim_id=removal.claim_id, refused=waiting)
    return removal


SEARCH_PAGE = 50
_TOP = "\U0010ffff"  # above every character: ``q <= value < q + _TOP`` is "starts with q"


def _prefix(column, text: str):
    """``column`` starts with ``text``, as an index range (the LIKE only re-checks the rows
    the range found, so a collation's ordering can never widen the match)."""
    return sa.and_(column >= text, column < text + _TOP,
                   column.startswith(text, autoescape=True))


@dataclass(frozen=True)
class SearchPage:
    creators: list[dict]
    next_after: int | None  # the keyset of the next page (None: this is the last)


def search_creators(session: Session, *, program_id: int, query: str = "",
                    after: int | None = None, limit: int = SEARCH_PAGE) -> SearchPage:
    """The creators on a program's list whose email or handle starts with ``query`` (all of
    them for an empty query), in the order of their ids, ``limit`` a page: a page starts after
    the id ``after`` (keyset paging, never an offset). Each lookup is an index range (the
    email's unique index, ``ix_creator_handle``) joined to the list's ``uq_eligibility``."""
    text = (query or "").strip()[:320]
    statement = (
        sa.select(Creator.id, Creator.email, Creator.handle, Creator.country)
        .join(Eligibility, sa.and_(Eligibility.creator_id == Creator.id,
                                   Eligibility.program_id == program_id)))
    if text:
        statement = statement.where(sa.or_(_prefix(Creator.email, text.lower()),
                                           _prefix(Creator.handle, text)))
    if after is not None:
        statement = statement.where(Creator.id > after)
    rows = session.execute(statement.order_by(Creator.id).limit(limit + 1)).all()
    session.rollback()  # a read: nothing held
    found = [{"id": r.id, "email": r.email, "handle": r.handle, "country": r.country}
             for r in rows[:limit]]
    return SearchPage(found, found[-1]["id"] if len(rows) > limit else None)
