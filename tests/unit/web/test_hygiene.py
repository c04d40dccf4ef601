"""Control characters in a URL or a form answer 404 or 400, never 500, and reach nothing."""

from __future__ import annotations

import pytest
from sqlmodel import select

from tests.helpers import csrf_token
from wellness_perks.models import Claim

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only


@pytest.mark.parametrize("path", ["/programs/headspace%00-6m", "/programs/a%01b",
                                  "/programs/a%7fb/claim", "/login/abc%00def", "/me%0a"])
def test_a_control_character_in_the_path_is_not_found(client, path):
    assert client.get(path).status_code == 404


def test_a_nul_in_a_claim_url_is_not_found_and_records_nothing(
        client, factory, session, signed_in):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    signed_in("ayesha@example.com")
    token = csrf_token(client.get("/programs/headspace-6m").text)
    response = client.post("/programs/headspace-6m%00/claim", data={"csrf_token": token})
    assert response.status_code == 404
    assert session.exec(select(Claim)).all() == []


@pytest.mark.parametrize("value", ["ayesha\x00@example.com", "ayesha@example.com\x1b",
                                   "\x85ayesha@example.com"])
def test_a_control_character_in_a_form_value_is_a_bad_request(client, value):
    token = csrf_token(client.get("/login").text)
    response = client.post("/login", data={"csrf_token": token, "email": value})
    assert response.status_code == 400


def test_a_control_character_in_the_query_is_a_bad_request(client):
    assert client.get("/login?next=%00").status_code == 400


def test_line_breaks_and_tabs_in_a_form_value_reach_the_form(client):
    """Allowed through the door (a text area may hold them); the field decides."""
    token = csrf_token(client.get("/login").text)
    response = client.post("/login", data={"csrf_token": token, "email": "not\tan\r\naddress"})
    assert response.status_code == 400
    assert "email" in response.text.lower()
