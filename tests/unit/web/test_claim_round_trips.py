"""The launch-day request costs the database as few round trips as its rules allow: on
PostgreSQL a signed-in creator's claim POST is three statements (who the session names, the
claim's context, the claim with its audit event), each committing on its own, with no BEGIN
and no ROLLBACK around them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import csrf_token, use_sign_in_link
from wellness_perks import create_app
from wellness_perks.models import Claim, Creator
from wellness_perks.services.tokens import mint_sign_in_token


@pytest.fixture
def brokered(app_config, backend):
    """The app as deployed: tasks go to a broker (an in-memory one), not run in the request."""
    if backend != "postgresql":
        pytest.skip("SQLite runs the claim in one transaction of its own")
    app = create_app(app_config | {"CELERY_BROKER_URL": "memory://"})
    yield app
    app.extensions["db_engine"].dispose()


def test_a_claim_post_is_three_statements_outside_any_transaction(brokered, factory, session):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001"])
    client = brokered.test_client()
    with brokered.app_context():
        creator = session.exec(select(Creator)).one()
        token = mint_sign_in_token(creator)
    assert use_sign_in_link(client, f"/login/{token}").status_code == 302
    page = client.get(f"/programs/{program.slug}")
    engine = brokered.extensions["db_engine"]
    seen: list[tuple[str, bool]] = []

    def statement(conn, _cursor, sql, _parameters, _context, _many):
        # In autocommit the driver sends the statement alone: no BEGIN before it, and no
        # ROLLBACK or COMMIT after it.
        seen.append((sql.split()[0].upper(), conn.connection.dbapi_connection.autocommit))

    sa.event.listen(engine, "before_cursor_execute", statement)
    try:
        response = client.post(f"/programs/{program.slug}/claim",
                               data={"csrf_token": csrf_token(page.text)})
    finally:
        sa.event.remove(engine, "before_cursor_execute", statement)
    assert response.status_code == 302
    # who the session names; the claim's context; the claim with its audit event
    assert seen == [("SELECT", True), ("SELECT", True), ("WITH", True)]
    session.rollback()
    assert [c.state for c in session.exec(select(Claim))] == ["pending"]
