"""The sign-in token (``services/tokens.py``): it names a creator and their sign-in counter,
signed with SECRET_KEY for sign-in only."""

from __future__ import annotations

import itsdangerous
import pytest

from tests.helpers import TEST_SECRET_KEY
from wellness_perks.models import Creator
from wellness_perks.services import tokens


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
