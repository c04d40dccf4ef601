"""The codes in stock of a program: finding the next ones to hand out, taking them, and the
program's counter of codes in stock.

A code in stock is ``available``. Every change of stock happens under the program's row lock
(``programs.lock_program``) and moves ``program.in_stock_count`` in its own transaction, so
the counter commits or rolls back with the change; ``verify`` checks it against the codes (I2).
Each batch's own counter (``codebatch.in_stock_count``) moves in the same transactions: ``take``
lowers those of the codes it takes, ``move_counter`` with a ``batch_id`` moves one.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from ..db import found_by_key
from ..models import Code, CodeBatch, CodeStatus, Program


def next_available(conn: sa.Connection, program_id: int, limit: int) -> list[int]:
    """The ids of the program's next ``limit`` codes in stock, oldest first, row-locked
    (``FOR UPDATE SKIP LOCKED``: codes another transaction holds are passed over)."""
    return list(conn.execute(_NEXT_AVAILABLE, {"b_program": program_id, "b_limit": limit})
                .scalars())


def take(conn: sa.Connection, program_id: int, code_ids: list[int], now: datetime) -> None:
    """Mark these codes (from ``next_available``) assigned. A code already taken is never
    handed out: our row locks make that impossible, and it is refused if it happens."""
    taken = conn.execute(_TAKE, {"b_codes": code_ids, "b_now": now}).rowcount
    if taken != len(code_ids):
        raise RuntimeError(f"program {program_id}: {len(code_ids) - taken} codes were taken "
                           "under lock")
    # The batches' counters of the codes just taken: one statement for the lot (a batch of
    # allocation takes codes from one batch, or two at a batch's end).
    conn.execute(_LOWER_BATCHES, {"b_codes": code_ids})


def move_counter(conn: sa.Connection, program_id: int, delta: int, *,
                 batch_id: int | None) -> None:
    """Move the program's counter of codes in stock by ``delta``, in the caller's transaction:
    an import raises it, a void of a code in stock and a reissue lower it, a restore raises it.
    Allocation moves it in the statement that raises ``allocated_count``.

    ``batch_id``: the batch whose counter moves too (the codes imported, voided or restored
    are its); None where ``take`` moved it already (a reissue's new code)."""
    conn.execute(_MOVE_COUNTER, {"b_program": program_id, "b_delta": delta})
    if batch_id is not None:
        conn.execute(_MOVE_BATCH_COUNTER, {"b_batch": batch_id, "b_delta": delta})


_code, _program, _batch = Code.__table__.c, Program.__table__.c, CodeBatch.__table__.c
_NEXT_AVAILABLE = (
    sa.select(_code.id)
    .where(_code.program_id == sa.bindparam("b_program"),
           _code.status == CodeStatus.available.value)
    .order_by(_code.id)
    .limit(sa.bindparam("b_limit"))
    .with_for_update(skip_locked=True)
)
_TAKE = (
    sa.update(Code.__table__)
    .where(_code.id.in_(sa.bindparam("b_codes", expanding=True)),
           found_by_key(_code.status == CodeStatus.available.value))
    .values(status=CodeStatus.assigned.value, assigned_at=sa.bindparam("b_now"))
)
_MOVE_COUNTER = (
    sa.update(Program.__table__)
    .where(_program.id == sa.bindparam("b_program"))
    .values(in_stock_count=_program.in_stock_count + sa.bindparam("b_delta"))
)
_MOVE_BATCH_COUNTER = (
    sa.update(CodeBatch.__table__)
    .where(_batch.id == sa.bindparam("b_batch"))
    .values(in_stock_count=_batch.in_stock_count + sa.bindparam("b_delta"))
)
_taken = Code.__table__.alias("taken")
_LOWER_BATCHES = (
    sa.update(CodeBatch.__table__)
    .where(_batch.id.in_(sa.select(_taken.c.batch_id)
                         .where(_taken.c.id.in_(sa.bindparam("b_codes", expanding=True)))))
    .values(in_stock_count=_batch.in_stock_count - (
        sa.select(sa.func.count()).select_from(_taken)
        .where(_taken.c.batch_id == _batch.id,
               _taken.c.id.in_(sa.bindparam("b_codes", expanding=True)))
        .scalar_subquery()))
)
