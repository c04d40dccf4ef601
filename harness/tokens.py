"""The product's sign-in token, minted as the product mints it (``wellness_perks.services.auth``),
so a harness signs many creators in through their links without mail (``GET /login/<token>``
shows a button, its POST with the page's CSRF token signs in).

``tests/harness/test_tokens.py`` holds this to the product: a token minted here is redeemed there.
"""

from __future__ import annotations

from itsdangerous import URLSafeTimedSerializer

SIGN_IN_SALT = "wellness-perks.sign-in"


def mint_sign_in_token(secret_key: str, creator_id: int, nonce: int) -> str:
    """The token of a sign-in link for the creator ``creator_id`` whose login nonce is ``nonce``
    (the product's ``SECRET_KEY`` signs it; using it spends the nonce)."""
    serializer = URLSafeTimedSerializer(secret_key, salt=SIGN_IN_SALT)
    return serializer.dumps({"c": creator_id, "n": nonce})
