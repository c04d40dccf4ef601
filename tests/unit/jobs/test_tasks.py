"""The tasks are thin: ids in, one service call; the allocation task clears the "allocation
queued" mark before the service reads the waiting claims."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from wellness_perks import dispatch
from wellness_perks.db import get_session
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
        app.extensions["celery"].tasks[dispatch.ALLOCATE_PROGRAM].apply(args=(program.id,)).get(
            disable_sync_subtasks=False)  # an eager result: no worker to wait for
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


def test_no_task_publishes_a_countdown_the_sweeper_serves_the_retry(app, app_config, factory,
                                                                    smtp_server, monkeypatch):
    """A mail refused for now is not handed to a message held until it is due (a countdown or
    an ETA: held unacknowledged in a worker's memory, it takes the worker down when the broker
    restarts): its next attempt is a time on its row, and the sweeper sends it once due."""
    from celery import Task

    from wellness_perks import create_app
    from wellness_perks.models import Claim, Creator, OutboundEmail
    from wellness_perks.services import claims, sweeper

    program = factory.program()
    factory.creators(program, ["a@example.com", "b@example.com"])
    factory.codes(program, ["HS-AAAA-0001", "HS-AAAA-0002"])
    smtp_server.refuse_with = "451 4.3.0 try again later"
    with app.app_context():  # allocated in-process; the first attempts refused
        session = get_session()
        for creator_id in session.execute(sa.select(Creator.id)).scalars().all():
            claims.request_claim(session, program=program, creator_id=creator_id)
        ids = sorted(session.execute(sa.select(OutboundEmail.id)).scalars())
        assert session.execute(sa.select(Claim.state)).scalars().all() == ["allocated"] * 2

    published = []
    real_apply_async = Task.apply_async

    def recording(task, args=None, kwargs=None, **options):
        published.append((task.name, args, options.get("countdown"), options.get("eta")))
        return real_apply_async(task, args, kwargs, **options)

    monkeypatch.setattr(Task, "apply_async", recording)
    broker_app = create_app(app_config | {"CELERY_BROKER_URL": "memory://"})
    try:
        with broker_app.app_context():
            # As a worker runs it: the task's body, with a broker configured.
            counts = broker_app.extensions["celery"].tasks[dispatch.SEND_EMAILS].run(ids)
            assert counts["retry"] == 2
            assert published == []  # nothing waits in a worker's memory for its time
            smtp_server.refuse_with = None
            report = sweeper.sweep(get_session(), now=datetime.now(UTC) + timedelta(minutes=5))
        assert report.mails == ids
        assert published == [(dispatch.SEND_EMAILS, (ids,), None, None)]
    finally:
        broker_app.extensions["db_engine"].dispose()


def test_a_task_the_database_failed_is_tried_again_in_process(app, factory, monkeypatch):
    """A disconnect (or a deadlock) costs a try again in the worker, after a wait, not a
    message published for later; once the waits are spent the error is the task's."""
    from sqlalchemy.exc import OperationalError

    from wellness_perks.jobs import tasks

    program = factory.program()
    monkeypatch.setattr(tasks, "DATABASE_RETRY_WAITS", (0.0, 0.0))
    tries = []

    def flaky(session, *, program_id, **kwargs):
        tries.append(program_id)
        if len(tries) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return allocation.AllocationResult(program_id=program_id)

    monkeypatch.setattr(allocation, "allocate_program", flaky)
    task = app.extensions["celery"].tasks[dispatch.ALLOCATE_PROGRAM]
    with app.app_context():
        assert task.run(program.id) == 0  # as a worker runs it: the third try succeeded
        assert tries == [program.id] * 3
        tries.clear()
        monkeypatch.setattr(tasks, "DATABASE_RETRY_WAITS", (0.0,))
        with pytest.raises(OperationalError):
            task.run(program.id)
        assert tries == [program.id] * 2
