"""Scenarios shared by the unit tests of the services and of the command line."""

from __future__ import annotations

import pytest

from wellness_perks.db import get_session
from wellness_perks.services import claims


@pytest.fixture
def allocated_three(app, factory, session):
    """Quota 10 with PK capped at 3: two PK creators and one IN creator hold codes."""
    program = factory.program(quota=10, country_quotas={"PK": 3})
    factory.creators(program, ["p1@example.com", "p2@example.com"], country="PK")
    factory.creators(program, ["i1@example.com"], country="IN")
    factory.codes(program, [f"HS-CODE-{i:04d}" for i in range(6)])
    with app.app_context():
        for creator_id in (1, 2, 3):
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
    return program
