"""Coalesced allocation triggers against a real Redis broker: a claim costs a Redis SET, not a
Celery message, while a queued allocation task has not started yet."""

from __future__ import annotations

import pytest
import redis

from tests.integration.conftest import _claim_redis_database, _release_redis, require_stack_services
from wellness_perks import create_app, dispatch

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(app_config):
    require_stack_services()
    url, client = _claim_redis_database()
    app_config["CELERY_BROKER_URL"] = url
    app = create_app(app_config)
    dispatch.reset_circuit()
    yield app, client
    dispatch.reset_circuit()
    app.extensions["db_engine"].dispose()
    _release_redis(client)


def _queued(client: redis.Redis) -> int:
    return client.llen("allocation")  # kombu's Redis transport keeps a queue as a list


def test_one_task_per_program_until_it_starts(broker):
    app, client = broker
    with app.app_context():
        for _ in range(5):
            dispatch.schedule_allocation(7)
        dispatch.schedule_allocation(8)
        assert _queued(client) == 2  # one for program 7, one for program 8
        assert client.ttl(dispatch.SCHEDULED_KEY.format(7)) > 0  # never stuck for good

        dispatch.allocation_starting(7)  # the task began: claims from now on need a new one
        dispatch.schedule_allocation(7)
        dispatch.schedule_allocation(7)
        assert _queued(client) == 3


def test_a_failed_publish_leaves_no_key_behind(broker, monkeypatch):
    app, client = broker

    def refuse(*args, **kwargs):
        raise ConnectionError("broker gone")

    task = app.extensions["celery"].tasks[dispatch.ALLOCATE_PROGRAM]
    monkeypatch.setattr(task, "apply_async", refuse)
    with app.app_context():
        dispatch.schedule_allocation(9)
        assert client.get(dispatch.SCHEDULED_KEY.format(9)) is None
        assert _queued(client) == 0
