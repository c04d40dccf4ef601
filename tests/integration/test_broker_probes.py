"""``broker``'s questions against a real Redis broker: the depth of each queue (priority
sub-queues included), task failures counted across processes in one hash, and the workers of
each queue when none runs."""

from __future__ import annotations

import pytest

from tests.integration.conftest import _claim_redis_database, _release_redis, require_stack_services
from wellness_perks import broker, create_app, dispatch

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_app(app_config):
    require_stack_services()
    url, client = _claim_redis_database()
    app_config["CELERY_BROKER_URL"] = url
    app = create_app(app_config)
    dispatch.reset_circuit()
    yield app, app_config
    dispatch.reset_circuit()
    app.extensions["db_engine"].dispose()
    _release_redis(client)


def test_queue_depths_count_every_message_waiting(redis_app):
    app, _config = redis_app
    with app.app_context():
        assert broker.queue_depths(broker.queue_names()) == {
            "allocation": 0, "mail": 0, "periodic": 0, "imports": 0}
        dispatch.send_emails([1, 2])
        dispatch.allocate_program(1)
        dispatch.allocate_program(2)
        app.extensions["celery"].tasks[dispatch.SWEEP].apply_async(priority=6)
        assert broker.queue_depths(broker.queue_names()) == {
            "allocation": 2, "mail": 1, "periodic": 1, "imports": 0}


def test_task_failures_of_every_process_add_up(redis_app):
    app, config = redis_app
    other = create_app(config)  # another process's app, on the same broker
    with app.app_context():
        assert broker.task_failures() == {}
        broker.record_task_failure(dispatch.SWEEP)
    with other.app_context():
        broker.record_task_failure(dispatch.SWEEP)
        broker.record_task_failure(dispatch.SEND_EMAILS)
    with app.app_context():
        assert broker.task_failures() == {dispatch.SWEEP: 2, dispatch.SEND_EMAILS: 1}
    other.extensions["db_engine"].dispose()


def test_no_worker_consumes_anything_when_none_runs(redis_app):
    app, _config = redis_app
    with app.app_context():
        assert broker.consumers() == {}
