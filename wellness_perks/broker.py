"""What the broker and the workers say about themselves, within a bound.

Every question here is asked with a short timeout, so a broker that hangs (accepts connections
and never answers) or workers that hang make the answer "no" after a fraction of a second, never
a wait: ``/healthz`` and ``wellness-perks health`` answer within a second.

- ``ping``: the broker answers a PING (a connection of our own, with timeouts of ``timeout``);
- ``queue_depths``: messages waiting in each Celery queue (on Redis, a queue is a list of that
  name, plus one list per priority level);
- ``consumers``: which worker consumes which queue, asked of the workers themselves with
  Celery's ``inspect().active_queues()``: a broadcast each live worker's main process answers
  at once, even when all its pool processes are busy. A worker that does not answer within
  ``timeout`` (dead, or hung) consumes nothing as far as health is concerned;
- ``record_task_failure`` / ``task_failures``: tasks that failed for good, counted by task name
  in one Redis hash that every worker process adds to (so ``/metrics`` shows the total of all
  processes without Prometheus' multiprocess mode). With no broker (tasks run in-process) the
  count is this process's own.

Without a broker URL (the embedded default) there is no broker and no worker: tasks run
in-process, and none of these questions is asked.
"""

from __future__ import annotations

import threading
from collections import Counter

from flask import current_app

FAILURES_KEY = "wellness-perks:task-failures"
# kombu's Redis transport keeps a queue's messages of priority N > 0 in "<queue>\x06\x16<N>".
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
PROBE_TIMEOUT = 0.25  # seconds, per question to Redis
INSPECT_TIMEOUT = 0.5  # seconds the workers have to answer ``active_queues``

_clients: dict[tuple[str, float], object] = {}
_clients_lock = threading.Lock()
_local_failures: Counter[str] = Counter()
_local_failures_lock = threading.Lock()


class BrokerUnavailable(Exception):
    """The broker did not answer in time (or refused)."""


def configured() -> bool:
    return bool(current_app.config["CELERY_BROKER_URL"])


def queue_names() -> tuple[str, ...]:
    """The Celery queues the app routes tasks to."""
    return tuple(q.name for q in current_app.extensions["celery"].conf.task_queues)


def _url() -> str:
    return current_app.config["CELERY_BROKER_URL"]


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def _redis(timeout: float):
    url = _url()
    key = (url, timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=timeout,
                                          socket_connect_timeout=timeout,
                                          retry_on_timeout=False)
            _clients[key] = client
    return client


def ping(timeout: float = PROBE_TIMEOUT) -> None:
    """BrokerUnavailable unless the broker answers within ``timeout``."""
    url = _url()
    try:
        if _is_redis(url):
            _redis(timeout).ping()
        else:
            with current_app.extensions["celery"].connection_for_write(
                    connect_timeout=timeout) as conn:
                conn.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - every failure means the same: no answer
        raise BrokerUnavailable(type(exc).__name__) from exc


def queue_depths(queues: tuple[str, ...], timeout: float = PROBE_TIMEOUT) -> dict[str, int]:
    """Messages waiting in each queue (not those a worker has taken); {} for a broker other
    than Redis. BrokerUnavailable if Redis does not answer in time."""
    if not _is_redis(_url()):
        return {}
    keys = [(queue, queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}")
            for queue in queues for step in PRIORITY_STEPS]
    try:
        with _redis(timeout).pipeline(transaction=False) as pipe:
            for _queue, key in keys:
                pipe.llen(key)
            lengths = pipe.execute()
    except Exception as exc:  # noqa: BLE001
        raise BrokerUnavailable(type(exc).__name__) from exc
    depths = dict.fromkeys(queues, 0)
    for (queue, _key), length in zip(keys, lengths, strict=True):
        depths[queue] += int(length)
    return depths


def consumers(timeout: float = INSPECT_TIMEOUT) -> dict[str, list[str]]:
    """Each queue some live worker consumes -> the names of the workers consuming it.

    Asked of the workers (``inspect().active_queues()``) over a connection of our own whose
    socket timeouts are ``timeout``; the answer comes after ``timeout`` (the workers that did
    not answer by then are taken for dead). BrokerUnavailable if the broker fails meanwhile.
    """
    celery = current_app.extensions["celery"]
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 0}
    try:
        with celery.connection_for_read(transport_options=options,
                                        connect_timeout=timeout) as conn:
            replies = celery.control.inspect(timeout=timeout, connection=conn).active_queues()
    except Exception as exc:  # noqa: BLE001
        raise BrokerUnavailable(type(exc).__name__) from exc
    found: dict[str, list[str]] = {}
    for worker, queues in (replies or {}).items():
        for queue in queues or ():
            found.setdefault(queue.get("name"), []).append(worker)
    return {queue: sorted(workers) for queue, workers in found.items()}


def record_task_failure(task_name: str) -> None:
    """Count a task that failed for good. Never raises: counting must not hide the failure."""
    url = _url()
    if not url or not _is_redis(url):
        with _local_failures_lock:
            _local_failures[task_name] += 1
        return
    try:
        _redis(PROBE_TIMEOUT).hincrby(FAILURES_KEY, task_name, 1)
    except Exception:  # noqa: BLE001, S110 - the broker is down: that is reported elsewhere
        pass


def task_failures(timeout: float = PROBE_TIMEOUT) -> dict[str, int]:
    """Task name -> tasks of that name that failed for good (since the broker's data began,
    or this process started when there is no broker)."""
    url = _url()
    if not url or not _is_redis(url):
        with _local_failures_lock:
            return dict(_local_failures)
    try:
        raw = _redis(timeout).hgetall(FAILURES_KEY)
    except Exception as exc:  # noqa: BLE001
        raise BrokerUnavailable(type(exc).__name__) from exc
    return {name.decode(): int(count) for name, count in raw.items()}
