"""The sign-in token: an itsdangerous token naming a creator and the number of their newest
sign-in link (``login_nonce``), signed with SECRET_KEY. Asking for a link and using one bump the
number, so only the newest link works, and once (``auth.redeem_sign_in_token``)."""

from __future__ import annotations

from flask import current_app
from itsdangerous import URLSafeTimedSerializer

from ..models import Creator

SIGN_IN_SALT = "wellness-perks.sign-in"


def serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SIGN_IN_SALT)


def mint_sign_in_token(creator: Creator) -> str:
    """A signed token naming the creator and their current nonce; minted at mail-send time."""
    return serializer().dumps({"c": creator.id, "n": creator.login_nonce})
