"""The sign-in token (``services/tokens.py``): it names a creator and their sign-in counter,
signed with SECRET_KEY for sign-in only."""

from __future__ import annotations

import itsdangerous
import pytest

from tests.helpers import TEST_SECRET_KEY
from wellness_perks.models import Creator
from wellness_perks.services import tokens

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only


def test_a_token_names_the_creator_and_their_sign_in_counter(app):
    creator = Creator(id=7, email="ayesha@example.com", handle="@ayesha", country="PK",
                      login_nonce=3)
    with app.app_context():
        token = tokens.mint_sign_in_token(creator)
        assert tokens.serializer().loads(token) == {"c": 7, "n": 3}
        creator.login_nonce = 4  # a link minted after a sign-in carries the new counter
        assert tokens.serializer().loads(tokens.mint_sign_in_token(creator)) == {"c": 7, "n": 4}


@pytest.mark.parametrize(("key", "salt"), [("another-key", tokens.SIGN_IN_SALT),
                                           (TEST_SECRET_KEY, "wellness-perks.other-purpose")])
def test_a_token_is_signed_with_the_secret_key_for_sign_in_only(app, key, salt):
    creator = Creator(id=7, email="ayesha@example.com", handle="@ayesha", country="PK")
    with app.app_context():
        token = tokens.mint_sign_in_token(creator)
    assert app.config["SECRET_KEY"] == TEST_SECRET_KEY
    assert itsdangerous.URLSafeTimedSerializer(
        TEST_SECRET_KEY, salt=tokens.SIGN_IN_SALT).loads(token) == {"c": 7, "n": 0}
    with pytest.raises(itsdangerous.BadSignature):
        itsdangerous.URLSafeTimedSerializer(key, salt=salt).loads(token)


# --------------------------------------------------------------------------- opt-out token


def test_an_opt_out_token_names_the_creator_and_the_program(app):
    with app.app_context():
        token = tokens.mint_opt_out_token(creator_id=7, program_id=3)
        assert tokens.parse_opt_out_token(token) == (7, 3)


def test_an_opt_out_token_is_signed_for_opting_out_only(app):
    creator = Creator(id=7, email="ayesha@example.com", handle="@ayesha", country="PK")
    with app.app_context():
        opt_out = tokens.mint_opt_out_token(creator_id=7, program_id=3)
        sign_in = tokens.mint_sign_in_token(creator)
        with pytest.raises(itsdangerous.BadData):  # a sign-in token is no opt-out token
            tokens.parse_opt_out_token(sign_in)
        with pytest.raises(itsdangerous.BadData):  # nor the other way round
            tokens.parse_sign_in_token(opt_out, max_age=60)
        forged = itsdangerous.URLSafeSerializer("another-key", salt=tokens.OPT_OUT_SALT).dumps(
            {"c": 7, "p": 3})
        with pytest.raises(itsdangerous.BadData):
            tokens.parse_opt_out_token(forged)


@pytest.mark.parametrize("payload", [{"c": 7}, {"c": "7", "p": 3}, {"c": True, "p": 3},
                                     {"c": 0, "p": 3}, {"c": 7, "p": 2**31}, [7, 3], None])
def test_a_signed_opt_out_token_with_another_payload_is_refused(app, payload):
    with app.app_context():
        token = itsdangerous.URLSafeSerializer(TEST_SECRET_KEY,
                                               salt=tokens.OPT_OUT_SALT).dumps(payload)
        with pytest.raises(itsdangerous.BadData):
            tokens.parse_opt_out_token(token)


@pytest.mark.parametrize("text", ["", "x" * 1001, "not a token!", "a.b", "é"])
def test_text_that_is_not_an_opt_out_token_is_refused(app, text):
    with app.app_context(), pytest.raises(itsdangerous.BadData):
        tokens.parse_opt_out_token(text)
