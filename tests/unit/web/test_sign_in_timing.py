"""No enumeration by timing: ``POST /login`` does the same work whether or not the address is
on a list. With a broker (as deployed), the web request only hands the normalised address to
a task on the mail queue: the same SQL statements (none that reads a list), the same answer;
the worker decides, and mails a link only to a listed address."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.helpers import csrf_token
from wellness_perks import create_app
from wellness_perks.db import get_session
from wellness_perks.services import auth

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

LISTED = "ayesha@example.com"
UNLISTED = "nobody@example.com"


@pytest.fixture
def brokered(app_config, factory):
    """The app as deployed: tasks go to a broker (an in-memory one), not run in the request."""
    program = factory.program()
    factory.creators(program, [LISTED])
    app = create_app(app_config | {"CELERY_BROKER_URL": "memory://"})
    yield app
    app.extensions["db_engine"].dispose()


def _queued(app, queue: str) -> int:
    with app.extensions["celery"].connection_for_read() as connection:
        channel = connection.channel()
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        except Exception:  # noqa: BLE001 - not declared yet: nothing was ever published to it
            return 0


def _post_capturing_statements(app, client, address: str):
    token = csrf_token(client.get("/login").text)
    statements: list[str] = []

    def record(_conn, _cursor, statement, _parameters, _context, _many):
        statements.append(statement)

    engine = app.extensions["db_engine"]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.post("/login", data={"email": address, "csrf_token": token})
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return response, statements


def test_listed_and_unlisted_addresses_run_the_same_statements(brokered, smtp_server):
    queued_before = _queued(brokered, "mail")  # the in-memory broker is the process's
    listed, listed_sql = _post_capturing_statements(brokered, brokered.test_client(), LISTED)
    unlisted, unlisted_sql = _post_capturing_statements(brokered, brokered.test_client(),
                                                        UNLISTED)
    assert listed_sql == unlisted_sql
    assert not any("creator" in s.lower() or "eligibility" in s.lower() for s in listed_sql)
    assert (listed.status_code, listed.headers["Location"], listed.data) == (
        unlisted.status_code, unlisted.headers["Location"], unlisted.data)
    assert listed.status_code == 302 and listed.headers["Location"] == "/login/sent"
    # Both were handed to the mail queue; nothing was decided, nor mailed, in the request.
    assert _queued(brokered, "mail") == queued_before + 2
    assert smtp_server.messages == []


def test_the_worker_decides_and_mails_only_a_listed_address(app, factory, smtp_server):
    """What the task runs: a link for a listed address, nothing for any other."""
    program = factory.program()
    factory.creators(program, [LISTED])
    with app.app_context():
        assert auth.request_sign_in(get_session(), email=LISTED) is not None
        assert auth.request_sign_in(get_session(), email=UNLISTED) is None
    assert len(smtp_server.wait_for_mail(LISTED, "sign-in")) == 1
    assert smtp_server.to(UNLISTED) == []


def test_a_request_that_cannot_be_queued_says_so_for_every_address(app_config, factory,
                                                                   monkeypatch):
    program = factory.program()
    factory.creators(program, [LISTED])
    app = create_app(app_config | {"CELERY_BROKER_URL": "redis://127.0.0.1:9/0"})
    monkeypatch.setitem(app.config, "BROKER_RETRY_AFTER_SECONDS", 0)
    try:
        answers = []
        for address in (LISTED, UNLISTED):
            client = app.test_client()
            token = csrf_token(client.get("/login").text)
            answers.append(client.post("/login", data={"email": address, "csrf_token": token}))
        assert [a.status_code for a in answers] == [503, 503]
        assert answers[0].data == answers[1].data
        assert "can't be sent right now" in answers[0].text
    finally:
        from wellness_perks import dispatch

        dispatch.reset_circuit()
        app.extensions["db_engine"].dispose()
