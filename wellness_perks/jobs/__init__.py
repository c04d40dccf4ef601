"""Background work: the Celery app, built from the Flask app (Flask's Celery pattern), its queues
and routes, and the tasks (``jobs.tasks``).

Queues are named by purpose so a mail backlog never delays allocation. With no broker URL the
app is eager: tasks run in-process, which is the embedded default for ``make run``. The task
names are ``dispatch``'s: the web side publishes by name through this app's registry.
"""

from __future__ import annotations

import os

from celery import Celery, Task
from celery.signals import worker_init
from flask import Flask
from kombu import Queue

from .. import broker, dispatch

QUEUES = ("allocation", "mail", "periodic", "imports")
TASK_ROUTES = {
    dispatch.ALLOCATE_PROGRAM: {"queue": "allocation"},
    dispatch.SEND_EMAIL: {"queue": "mail"},
    dispatch.SEND_EMAILS: {"queue": "mail"},
    dispatch.REQUEST_SIGN_IN: {"queue": "mail"},
    dispatch.SWEEP: {"queue": "periodic"},
    # A large upload takes a minute: on its own queue, never ahead of a claim or a mail.
    dispatch.IMPORT_UPLOAD: {"queue": "imports"},
    # Owing a program's invitations is bulk work of the same kind (their mails go on ``mail``).
    dispatch.SEND_INVITATIONS: {"queue": "imports"},
}


def init_app(app: Flask) -> Celery:
    """The app's Celery app, in ``app.extensions["celery"]``, with every task registered."""
    from . import tasks  # noqa: F401  (defines the tasks: they join each Celery app made)

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

        def on_failure(self, exc, task_id, args, kwargs, einfo):
            # A task that failed for good (not one that will be retried) is counted where
            # every process adds to one total: /metrics' wellness_perks_task_failures.
            with app.app_context():
                broker.record_task_failure(self.name)

    broker_url = app.config["CELERY_BROKER_URL"]
    celery_app = Celery(app.import_name, task_cls=FlaskTask)
    celery_app.conf.update(
        broker_url=broker_url or "memory://localhost/",
        task_always_eager=not broker_url,
        # In eager mode a failing task must not fail the web request that queued it: the row it
        # works on stays in the database in its waiting state.
        task_eager_propagates=False,
        task_ignore_result=True,
        # Each queue bound by its own routing key, so a message reaches its queue only.
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],
        task_default_queue="allocation",
        task_routes=TASK_ROUTES,
        # A task is acknowledged after it ran, and given back if its worker dies mid-way.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # On a lost broker connection, let running tasks finish: their work lands in the
        # database, and the redelivered message is then a no-op. Cancelling them would cut a
        # mail batch off mid-message, leaving that message's outcome unknown (a resend).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # A worker never gives up on a lost broker: it reconnects for as long as it takes.
        broker_connection_max_retries=None,
        # A web request must not hang on a broker that is down.
        broker_transport_options={"socket_connect_timeout": 2, "socket_timeout": 5,
                                  "max_retries": 1},
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.1,
                                   "interval_step": 0.2, "interval_max": 0.5},
        worker_hijack_root_logger=False,
        beat_schedule={
            "sweep": {"task": dispatch.SWEEP,
                      "schedule": float(app.config["SWEEP_INTERVAL_SECONDS"])},
        },
    )
    celery_app.conf.wp_worker_niceness = app.config["WORKER_NICENESS"]
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


@worker_init.connect
def _lower_worker_priority(sender=None, **_kw) -> None:
    """``WORKER_NICENESS``: the worker (and the pool processes it forks) runs at this CPU
    niceness. Where web and workers share cores, a claim burst then gets the CPU first and
    allocation and mail catch up as it ebbs; the claims wait as ``pending`` rows meanwhile."""
    niceness = getattr(sender.app.conf, "wp_worker_niceness", 0) if sender else 0
    if niceness:
        os.nice(niceness)
        if os.getsid(0) == os.getpid():
            _lower_session_priority(niceness)


def _lower_session_priority(niceness: int) -> None:
    """Linux's autogroup scheduling (on by default) shares the CPU equally among sessions
    first, and a process's own niceness counts only within its session. A worker started as a
    service leads a session of its own, so its niceness alone would change nothing against the web
    server's session: the session's (autogroup's) niceness is set too. Only for a session
    leader: a worker started from a terminal would lower the whole terminal session."""
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(niceness))
    except OSError:  # no autogroup scheduling (or not Linux): the process niceness is it
        pass
