"""A program's claims as CSV: one row a claim, its code masked, or in full for an admin who
gives a reason (one audit event per export: how many codes and why, never a code).

The rows are read in keyset-paged chunks (``claim.id`` after the last one seen), so an export
of 100,000 claims never holds the table in memory; the caller streams what this yields.
Every cell that a spreadsheet would read as a formula (its first character ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) is prefixed with ``'`` (OWASP, CSV injection).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from ..db import write_transaction
from ..logs import log_event
from ..models import Claim, Code, Creator, OutboundEmail
from . import audit, code_cipher
from .codes import MAX_REVEAL_REASON_LENGTH, mask_code

HEADER = ("handle", "email", "country", "state", "reason", "requested_at", "decided_at",
          "mail_status", "code")
CHUNK = 1000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FULL_CODES_EXPORTED = "claims.exported_with_codes"

# The status of the newest code mail of the claim (redemption or reissue): the outbox's
# unique (claim_id, code_id, kind) index finds it.
_MAIL_STATUS = (sa.select(OutboundEmail.status).where(OutboundEmail.claim_id == Claim.id)
                .order_by(OutboundEmail.id.desc()).limit(1).correlate(Claim)
                .scalar_subquery())


def neutralised(value) -> str:
    """A cell as text, never a formula: one a spreadsheet would evaluate gets a ``'`` first."""
    text = "" if value is None else value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def claim_rows(session: Session, *, program_id: int, full_codes: bool = False,
               chunk: int = CHUNK) -> Iterator[tuple[str, ...]]:
    """The header, then each claim of the program in claim order, every cell neutralised.
    The code is masked unless ``full_codes`` (only ``export_claims`` asks, after its audit)."""
    yield HEADER
    cipher = code_cipher.cipher()
    query = (sa.select(Claim.id, Creator.handle, Creator.email, Claim.country, Claim.state,
                       Claim.reason, Claim.requested_at, Claim.decided_at,
                       _MAIL_STATUS.label("mail_status"), Code.value_encrypted)
             .join(Creator, Creator.id == Claim.creator_id)
             .outerjoin(Code, Code.id == Claim.code_id)
             .where(Claim.program_id == program_id, Claim.id > sa.bindparam("b_after"))
             .order_by(Claim.id).limit(chunk))
    after = 0
    while True:
        rows = session.execute(query, {"b_after": after}).all()
        session.rollback()  # a read: no transaction held between chunks
        for _claim_id, *cells, token in rows:
            code = ""
            if token is not None:
                value = cipher.decrypt(token)
                code = value if full_codes else mask_code(value)
            yield tuple(neutralised(cell) for cell in (*cells, code))
        if len(rows) < chunk:
            return
        after = rows[-1][0]


def as_csv(rows: Iterable[tuple[str, ...]]) -> Iterator[str]:
    """Each row as one line of CSV text (RFC 4180 quoting, CRLF line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def export_claims(session: Session, *, program_id: int, actor: str,
                  full_codes_reason: str | None = None) -> Iterator[str]:
    """The program's claims as CSV text, chunk by chunk. With ``full_codes_reason`` the codes
    are in full: the reason is checked and the export audited (who, how many codes, why)
    before the first line is made, so no code leaves unaudited; otherwise they are masked."""
    if full_codes_reason is None:
        return as_csv(claim_rows(session, program_id=program_id))
    reason = audit.reason_given(full_codes_reason, doing="the full codes are exported",
                                limit=MAX_REVEAL_REASON_LENGTH)
    with write_transaction(session):
        count = session.execute(sa.select(sa.func.count()).select_from(Claim).where(
            Claim.program_id == program_id, Claim.code_id.is_not(None))).scalar_one()
        audit.record(session, audit.event(actor=actor, action=FULL_CODES_EXPORTED,
                                          object_type="program", object_id=program_id,
                                          program_id=program_id,
                                          detail={"codes": count, "reason": reason}))
    log_event(FULL_CODES_EXPORTED, program_id=program_id, codes=count)
    return as_csv(claim_rows(session, program_id=program_id, full_codes=True))
