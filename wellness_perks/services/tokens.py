"""The sign-in token: an itsdangerous token naming a creator and the number of their newest
sign-in link (``login_nonce``), signed with SECRET_KEY. Asking for a link and using one bump the
number, so only the newest link works, and once (``auth.redeem_sign_in_token``)."""

from __future__ import annotations

from flask import current_app
from itsdangerous import BadPayload, BadSignature, URLSafeTimedSerializer

from ..models import Creator

SIGN_IN_SALT = "wellness-perks.sign-in"
# A token minted here is about 80 characters of URL-safe base64 and dots; anything else (longer,
# or with another character) is not one, and is refused before any decoding.
MAX_TOKEN_LENGTH = 1000
_TOKEN_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
MAX_ID = 2**31 - 1  # the largest id and counter the INTEGER columns hold (PostgreSQL)


def serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SIGN_IN_SALT)


def mint_sign_in_token(creator: Creator) -> str:
    """A signed token naming the creator and their current nonce; minted at mail-send time."""
    return serializer().dumps({"c": creator.id, "n": creator.login_nonce})


def parse_sign_in_token(token: str, *, max_age: int) -> tuple[int, int]:
    """The (creator id, sign-in counter) a token minted here names.

    Raises itsdangerous' SignatureExpired for a genuine token older than ``max_age`` seconds,
    and another BadData for anything else: text that is not a token, a forged or damaged one,
    a signed one whose payload is not two integers in the databases' range.
    """
    if (not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH
            or not _TOKEN_CHARACTERS.issuperset(token)):
        raise BadSignature("not a sign-in token")
    payload = serializer().loads(token, max_age=max_age)
    if not isinstance(payload, dict) or set(payload) != {"c", "n"}:
        raise BadPayload("not a sign-in payload")
    creator_id, nonce = payload["c"], payload["n"]
    # type() and not isinstance(): JSON true is a bool, which Python counts as the int 1.
    if not (type(creator_id) is int and type(nonce) is int
            and 0 < creator_id <= MAX_ID and 0 <= nonce <= MAX_ID):
        raise BadPayload("not a sign-in payload")
    return creator_id, nonce
