"""The harness's sign-in tokens are the product's: what ``harness.tokens`` mints, the product
redeems (the bench and the integration tests sign creators in with nothing else)."""

from __future__ import annotations

import pytest
from sqlmodel import select

from harness.tokens import mint_sign_in_token
from tests.helpers import use_sign_in_link
from wellness_perks.db import get_session
from wellness_perks.models import Creator
from wellness_perks.services.auth import redeem_sign_in_token


@pytest.fixture
def creator(factory, session) -> Creator:
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    return session.exec(select(Creator).where(Creator.email == "ayesha@example.com")).one()


def test_the_product_redeems_a_token_the_harness_minted(app, creator):
    token = mint_sign_in_token(app.config["SECRET_KEY"], creator.id, creator.login_nonce)
    with app.app_context():
        signed_in = redeem_sign_in_token(get_session(), token=token)
    assert signed_in.id == creator.id
    assert signed_in.login_nonce == creator.login_nonce + 1  # the link is spent


def test_the_sign_in_link_of_a_harness_token_signs_the_creator_in(app, client, creator):
    token = mint_sign_in_token(app.config["SECRET_KEY"], creator.id, creator.login_nonce)
    response = use_sign_in_link(client, f"/login/{token}")
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200
