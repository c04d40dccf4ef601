"""The Celery app's queues: named by purpose, each bound by its own routing key."""

from wellness_perks import dispatch
from wellness_perks.jobs import QUEUES, TASK_ROUTES


def test_each_queue_has_its_own_routing_key(app):
    celery = app.extensions["celery"]
    queues = {q.name: q for q in celery.conf.task_queues}
    assert set(queues) == set(QUEUES)
    assert all(q.routing_key == name for name, q in queues.items())


def test_tasks_are_routed_to_consumed_queues(app):
    celery = app.extensions["celery"]
    assert TASK_ROUTES[dispatch.ALLOCATE_PROGRAM]["queue"] == "allocation"
    assert TASK_ROUTES[dispatch.SEND_EMAIL]["queue"] == "mail"
    assert TASK_ROUTES[dispatch.IMPORT_UPLOAD]["queue"] == "imports"
    # Owing a program's invitations is bulk work: never ahead of a claim or a mail.
    assert TASK_ROUTES[dispatch.SEND_INVITATIONS]["queue"] == "imports"
    assert {r["queue"] for r in TASK_ROUTES.values()} <= set(QUEUES)
    assert celery.conf.task_acks_late and celery.conf.task_reject_on_worker_lost


def test_no_broker_means_tasks_run_in_process(app):
    assert app.extensions["celery"].conf.task_always_eager is True
