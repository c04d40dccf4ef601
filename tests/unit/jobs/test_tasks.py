"""The tasks are thin: ids in, one service call; the allocation task clears the "allocation
queued" mark before the service reads the waiting claims."""

from __future__ import annotations

import pytest

from wellness_perks import dispatch
from wellness_perks.services import allocation


def test_allocation_task_clears_the_queued_mark_before_the_service_reads(app, factory,
                                                                         monkeypatch):
    program = factory.program()
    calls = []
    real_allocate = allocation.allocate_program
    monkeypatch.setattr(dispatch, "allocation_starting",
                        lambda program_id: calls.append(("mark cleared", program_id)))

    def allocate(session, *, program_id, **kwargs):
        calls.append(("service", program_id))
        return real_allocate(session, program_id=program_id, **kwargs)

    monkeypatch.setattr(allocation, "allocate_program", allocate)
    with app.app_context():
        app.extensions["celery"].tasks[dispatch.ALLOCATE_PROGRAM].apply(args=(program.id,)).get()
    assert calls == [("mark cleared", program.id), ("service", program.id)]


def test_the_allocation_service_leaves_the_queue_alone(app, factory, monkeypatch):
    program = factory.program()
    monkeypatch.setattr(dispatch, "allocation_starting",
                        lambda program_id: (_ for _ in ()).throw(AssertionError(program_id)))
    with app.app_context():
        from wellness_perks.db import get_session

        assert not allocation.allocate_program(get_session(), program_id=program.id).changed


@pytest.mark.tasks_may_fail
def test_a_task_that_raises_in_process_is_caught_for_the_test(app, factory, monkeypatch):
    """With no broker the request that queued a task goes on when it raises (its rows wait
    for the sweeper); the tests' guard (tests/conftest.py) still sees it, and fails any test
    not marked ``tasks_may_fail``."""
    from tests import conftest

    program = factory.program()

    def broken(session, *, program_id, **kwargs):
        raise RuntimeError("allocation broke")

    monkeypatch.setattr(allocation, "allocate_program", broken)
    with app.app_context():
        dispatch.allocate_program(program.id)  # returns: the caller is not failed
    assert [f for f in conftest._task_failures if "allocation broke" in f]
